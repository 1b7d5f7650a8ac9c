"""k-means per channel: the exact programme against brute force, Lloyd's conditions, and Lloyd-Max."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aciq.theory.kmeans as km
from aciq.theory import lloyd_max
from aciq.theory.kmeans import kmeans_1d, kmeans_quantize, lloyd_max_comparison
from aciq.theory.priors import sample


def _brute_force(x, k):
    """Smallest error over every cut of the sorted data into k contiguous non-empty cells."""
    s = np.sort(np.asarray(x, float))
    best = np.inf
    for cuts in itertools.combinations(range(1, s.size), k - 1):
        cells = np.split(s, cuts)
        best = min(best, sum(((c - c.mean()) ** 2).sum() for c in cells))
    return best / s.size


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_exact_equals_brute_force(k):
    rng = np.random.default_rng(k)
    x = rng.laplace(size=(5, 11))
    res = kmeans_1d(x, levels=k, axis=0, exact=True)
    assert res.exact
    for row, mse in zip(x, res.mse):
        assert mse == pytest.approx(_brute_force(row, k), rel=1e-12, abs=1e-15)


def test_result_satisfies_both_lloyd_conditions():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 300)) * [[1.0], [0.1], [5.0], [2.0]]
    res = kmeans_1d(x, levels=8, axis=0)
    for row, lv, code in zip(x, res.levels, res.codes):
        # nearest level
        dist = (row[:, None] - lv[None, :]) ** 2
        assert np.allclose(dist[np.arange(row.size), code], dist.min(axis=1))
        # each used level is the mean of its cell
        for j in np.unique(code):
            assert lv[j] == pytest.approx(row[code == j].mean(), rel=1e-12, abs=1e-12)


def test_restricted_programme_then_lloyd_is_close_to_the_exact_optimum(monkeypatch):
    rng = np.random.default_rng(7)
    x = rng.laplace(size=(6, 2000))
    exact = kmeans_1d(x, levels=16, axis=0, exact=True)
    monkeypatch.setattr(km, "_DP_WORK", 6 * 16 * 256 * 8)      # forces 128 groups of the 2000 values
    auto = kmeans_1d(x, levels=16, axis=0)
    assert not auto.exact and exact.exact
    assert np.all(auto.mse >= exact.mse * (1 - 1e-12))
    assert np.all(auto.mse <= exact.mse * 1.01)


def test_beats_lloyd_from_quantiles_where_lloyd_alone_gets_stuck():
    x = np.random.default_rng(0).laplace(size=(32, 144))
    s = np.sort(x, axis=1)
    start = s[:, ((np.arange(16) + 0.5) * 144 / 16).astype(int)]
    lv, _, _ = km._lloyd_rows(s, start, 300)
    codes = km._codes(x, lv)
    lloyd = ((x - np.take_along_axis(lv, codes, axis=1)) ** 2).mean(axis=1)
    res = kmeans_1d(x, levels=16, axis=0)
    assert res.exact and np.all(res.mse <= lloyd + 1e-15)
    assert np.mean(lloyd / res.mse) > 1.3          # what the dynamic programme buys


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_kmeans_on_samples_of_a_prior_finds_its_lloyd_max_quantizer(prior, bits):
    x = sample(prior, 200_000, scale=2.0, seed=bits)
    res = kmeans_1d(x, levels=1 << bits)
    lm = lloyd_max(prior=prior, bits=bits, scale=2.0)
    assert res.mse == pytest.approx(lm.mse, rel=0.02)
    if prior == "gauss":   # Laplace's kink at 0 leaves the error nearly flat as the levels shift together
        assert np.allclose(res.levels, lm.levels, atol=0.03 * 2.0 * (1 + np.abs(lm.levels)))


def test_lloyd_max_comparison_matches_the_right_prior():
    x = np.stack([sample("laplace", 100_000, seed=1), sample("gauss", 100_000, seed=2), np.full(100_000, 3.0)])
    cmp = lloyd_max_comparison(x, bits=2, axis=0)
    assert abs(cmp.gap_db["laplace"][0]) < 0.15 and abs(cmp.gap_db["gauss"][1]) < 0.15
    assert cmp.gap_db["gauss"][0] > 0.5              # Laplace data quantize worse than a Gauss fit predicts
    assert cmp.gap_db["laplace"][1] < -0.5           # and Gauss data better than a Laplace fit predicts
    assert cmp.gap_db["laplace"][2] == 0.0 and cmp.kmeans_mse[2] == 0.0  # no spread: no error, no gap
    assert np.allclose(cmp.kmeans_mse, cmp.kmeans.mse)


def test_axis_shapes_and_reconstruct():
    x = np.random.default_rng(1).standard_normal((3, 4, 5))
    res = kmeans_1d(x, levels=4, axis=1)
    assert res.levels.shape == (4, 4) and res.codes.shape == x.shape
    assert np.allclose(((res.reconstruct() - x) ** 2).mean(axis=(0, 2)), res.mse)
    for c in range(4):
        one = kmeans_1d(x[:, c, :], levels=4)
        assert one.mse == pytest.approx(res.mse[c], rel=1e-12)
    whole = kmeans_1d(x, levels=4)
    assert isinstance(whole.mse, float) and whole.reconstruct().shape == x.shape


def test_few_distinct_values_and_constant_channels():
    res = kmeans_1d([[1.0, 1.0, 2.0], [5.0, 5.0, 5.0]], levels=16, axis=0)
    assert res.exact and np.all(res.mse == 0.0)
    assert np.array_equal(res.reconstruct(), [[1.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    assert kmeans_quantize([1.0, 2.0, 6.0], bits=0).tolist() == [3.0, 3.0, 3.0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=40), st.integers(1, 6))
def test_properties(values, k):
    x = np.asarray(values)
    exact = kmeans_1d(x, levels=k, exact=True)
    auto = kmeans_1d(x, levels=k)
    assert auto.mse >= exact.mse - 1e-9 * (1 + exact.mse)
    assert 0 <= exact.codes.min() and exact.codes.max() < k
    assert np.all(np.diff(exact.levels) >= 0)
    # every level is the mean of its cell, so the reconstruction keeps the mean
    assert exact.reconstruct().mean() == pytest.approx(x.mean(), abs=1e-9 * (1 + np.abs(x).max()))


@pytest.mark.parametrize("kwargs, message", [
    ({"levels": 0}, "levels"),
    ({"levels": 2.5}, "levels"),
    ({"levels": 2, "max_iter": 0}, "max_iter"),
    ({"levels": 2, "axis": 3}, "axis"),
])
def test_bad_input_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kmeans_1d(np.ones((2, 3)), **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        kmeans_1d([1.0, np.nan], levels=2)
