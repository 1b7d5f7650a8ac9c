"""Mid-tread grids with any number of bins (-mtq): exact error, optimal alpha, integer bin allocation."""
import itertools

import numpy as np
import pytest
from scipy.integrate import quad

import aciq.theory.midtread as mt
from aciq.theory import clipping_error, exact_mse, optimal_alpha, optimal_alpha_exact
from aciq.theory.empirical import empirical_mse
from aciq.theory.midtread import allocate_bins, midtread_mse, optimal_alpha_bins
from aciq.theory.priors import pdf, sample


def _quantize(x, alpha, w, half):
    """Numpy reference: nearest of the w + 1 evenly spaced levels of the window (0 alone for w = 0)."""
    x = np.maximum(x, 0.0) if half else x
    if w == 0:
        return np.zeros_like(x)
    lo, step = (0.0, alpha / w) if half else (-alpha, 2 * alpha / w)
    return lo + np.clip(np.rint((x - lo) / step), 0, w) * step


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("m", [1, 2, 4])
def test_power_of_two_bins_are_the_midtread_grid(prior, half, m):
    alpha = np.array([0.7, 2.0, 6.0])
    assert np.allclose(midtread_mse(alpha, prior=prior, bins=2 ** m, half_range=half, scale=1.5),
                       exact_mse(alpha, prior=prior, bits=m, grid="midtread", half_range=half, scale=1.5),
                       rtol=1e-12)


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("w", [0, 1, 3, 5, 6, 11])
def test_exact_error_agrees_with_monte_carlo(prior, half, w):
    x = sample(prior, 400_000, scale=2.0, seed=w)
    x = np.maximum(x, 0.0) if half else x        # half range: the error of quantizing max(X, 0)
    alpha = 5.0
    mc = empirical_mse(x, lambda v: _quantize(v, alpha, w, half))
    exact = midtread_mse(alpha, prior=prior, bins=w, scale=2.0, half_range=half)
    assert abs(mc.mse - exact) < 4 * mc.stderr + 1e-12


@pytest.mark.parametrize("w", [1, 5])
def test_exact_error_agrees_with_quadrature(w):
    alpha = 2.5
    f = lambda x: (x - _quantize(np.array([x]), alpha, w, False)[0]) ** 2 * pdf(x, prior="gauss")  # noqa: E731
    edges = np.concatenate([[-np.inf], -alpha + (np.arange(w) + 0.5) * 2 * alpha / w, [np.inf]])
    total = sum(quad(f, a, b)[0] for a, b in zip(edges[:-1], edges[1:]))
    assert midtread_mse(alpha, prior="gauss", bins=w) == pytest.approx(total, rel=1e-9)


def test_zero_bins_keep_the_mean():
    assert midtread_mse(1.0, prior="laplace", bins=0, scale=3.0) == pytest.approx(2 * 9.0)
    assert midtread_mse(1.0, prior="laplace", bins=0, scale=3.0, half_range=True) == pytest.approx(9.0)
    assert midtread_mse(1.0, prior="gauss", bins=0, half_range=True) == pytest.approx(0.5)


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
def test_model_alpha_for_real_bins(prior):
    # 2^M bins: the paper's constants (2.83, 3.89, 5.03 b for Laplace)
    assert np.allclose(optimal_alpha_bins(prior=prior, bins=[4, 8, 16]).alpha,
                       optimal_alpha(prior=prior, bits=[2, 3, 4]).alpha, rtol=1e-12)
    # any real w >= 1: the model's derivative vanishes at alpha*
    for w in (1.0, 2.7, 5.0, 100.0):
        res = optimal_alpha_bins(prior=prior, bins=w, scale=2.0)
        model = lambda a: clipping_error(a, prior=prior, scale=2.0) + a * a / (3 * w * w)  # noqa: E731
        h = 1e-5 * res.alpha
        assert abs(model(res.alpha + h) - model(res.alpha - h)) / (2 * h) < 1e-6
        assert model(res.alpha) == pytest.approx(res.mse, rel=1e-10)


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
def test_exact_alpha_is_the_grids_own_optimum(prior):
    ref = optimal_alpha_exact(prior=prior, bits=3, grid="midtread")
    res = optimal_alpha_bins(prior=prior, bins=8, exact=True)
    assert res.alpha == pytest.approx(ref.alpha, rel=1e-6) and res.mse == pytest.approx(ref.mse, rel=1e-9)
    for w in (3, 7, 12):
        r = optimal_alpha_bins(prior=prior, bins=w, exact=True, scale=0.5)
        assert r.converged
        for a in (r.alpha * 0.98, r.alpha * 1.02, optimal_alpha_bins(prior=prior, bins=w, scale=0.5).alpha):
            assert midtread_mse(a, prior=prior, bins=w, scale=0.5) >= r.mse * (1 - 1e-12)


def _brute(scales, f, capacity):
    best, arg = np.inf, None
    for w in itertools.product(range(f.size), repeat=len(scales)):
        if sum(w) <= capacity:
            v = sum(s * s * f[k] for s, k in zip(scales, w))
            if v < best - 1e-15:
                best, arg = v, w
    return best, arg


@pytest.mark.parametrize("objective", ["model", "exact"])
@pytest.mark.parametrize("prior", ["laplace", "gauss"])
def test_integer_allocation_is_the_brute_force_optimum(objective, prior):
    rng = np.random.default_rng(1)
    f, _ = mt._unit_table(prior, 7, False, objective)
    for _ in range(5):
        scales = rng.lognormal(size=3)
        cap = int(rng.integers(2, 15))
        best, _ = _brute(scales, f, cap)
        for solver in (mt._programme,) + ((mt._greedy,) if objective == "model" else ()):
            w = solver(scales ** 2, f, cap)
            assert w.sum() <= cap
            assert np.sum(scales ** 2 * f[w]) == pytest.approx(best, rel=1e-12)


def test_a_programme_too_large_is_refused(monkeypatch):
    monkeypatch.setattr(mt, "_DP_WORK", 1000)
    with pytest.raises(ValueError, match="objective='model'"):
        allocate_bins([1.0, 2.0, 3.0], avg_bits=4, prior="laplace", objective="exact")
    assert allocate_bins([1.0, 2.0, 3.0], avg_bits=4, prior="laplace").bins.sum() == 48   # greedy: no limit


def test_the_exact_error_is_not_convex_in_the_bins():
    f, _ = mt._unit_table("laplace", 12, False, "exact")
    assert np.any(np.diff(f, 2) < 0)                       # odd bins have no level at 0: greedy would be wrong
    g, _ = mt._unit_table("laplace", 12, False, "model")
    assert np.all(np.diff(g, 2) >= 0)


@pytest.mark.parametrize("objective", ["model", "exact"])
def test_allocation_within_budget_beats_the_seed_rounding(objective):
    scales = np.random.default_rng(3).lognormal(size=24)
    res = allocate_bins(np.append(scales, 0.0), avg_bits=3.3, prior="laplace", objective=objective)
    assert res.bins[-1] == 0 and res.alpha[-1] == 0.0            # no spread: no bins
    assert res.bins.sum() <= res.total_bins == pytest.approx(25 * 2 ** 3.3)
    key = "mse_model" if objective == "model" else "mse_exact"
    assert getattr(res, key)["bins"] <= getattr(res, key)["bins_paper"] * (1 + 1e-12)
    assert res.bins_used["bins_continuous"] == pytest.approx(res.total_bins)
    assert np.allclose(res.bins_continuous[:-1] / res.bins_continuous[:-1].sum(),
                       scales ** (2 / 3) / np.sum(scales ** (2 / 3)))      # eq. 10
    live = res.bins > 0
    expect = [optimal_alpha_bins(prior="laplace", bins=w, scale=s, exact=objective == "exact").alpha
              for w, s in zip(res.bins[live], scales[live[:-1]])]
    assert np.allclose(res.alpha[live], expect, rtol=1e-6)


def test_seed_rounding_can_overshoot_the_budget():
    res = allocate_bins([1.0, 1.0, 1.0], avg_bits=np.log2(2.5), prior="gauss")   # 7.5 bins: 2.5 each
    assert res.bins_paper.tolist() == [2, 2, 2] and res.bins.sum() == 7         # ties to even; optimum uses 7
    res = allocate_bins([1.0, 1.0, 1.0, 1.0], avg_bits=np.log2(2.6), prior="gauss")
    assert res.bins_used["bins_paper"] == 12 > res.total_bins and res.bins.sum() <= 10


@pytest.mark.parametrize("kwargs, message", [
    ({"scales": [-1.0, 1.0]}, "scales"),
    ({"scales": [[1.0]]}, "1-D"),
    ({"avg_bits": 9}, "avg_bits"),
    ({"max_bins": 0}, "max_bins"),
    ({"objective": "lloyd"}, "objective"),
    ({"prior": "cauchy"}, "prior"),
])
def test_bad_input_names_the_argument(kwargs, message):
    args = {"scales": [1.0, 2.0], "avg_bits": 3, "prior": "laplace", **kwargs}
    with pytest.raises(ValueError, match=message):
        allocate_bins(args.pop("scales"), **args)
    with pytest.raises(ValueError, match="integers"):
        midtread_mse(1.0, prior="laplace", bins=2.5)
    with pytest.raises(ValueError, match="bins"):
        optimal_alpha_bins(prior="laplace", bins=0)
