"""KL (entropy) calibration: a hand-computed histogram, a literal loop reference, ordering facts, bad input."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import entropy

from aciq.theory import optimal_alpha
from aciq.theory.kl import KLResult, _divergences, abs_histogram, kl_threshold

EPS = 1e-4


def reference_divergences(hist, n_q, eps=EPS, mxnet_smoothing=False, literal=False):
    """The algorithm written out literally, one candidate at a time, with scipy.stats.entropy.

    ``mxnet_smoothing``: MXNet's ``_smooth_distribution`` (eps counts on every zero bin of p and q,
    the same mass taken from the non-zero bins) instead of eps on q's empty last bin only.
    ``literal``: the GTC slides, MXNet's loop: groups of i // n_q bins, the remainder in the last,
    and no smoothing at all."""
    h = np.asarray(hist, dtype=float)
    out = []
    for i in range(n_q, h.size + 1):
        if h[:i].sum() == 0:  # nothing kept: no candidate distribution
            out.append(np.inf)
            continue
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        if literal:
            size = i // n_q
            group = np.minimum(np.arange(i) // size, n_q - 1)
        else:
            group = np.arange(i) * n_q // i
        mass = np.bincount(group, weights=h[:i], minlength=n_q)
        nonzero = np.bincount(group, weights=p > 0, minlength=n_q)
        q = np.where(p > 0, mass[group] / np.maximum(nonzero[group], 1), 0.0)
        if literal:
            pass  # scipy's entropy is +inf where q = 0 < p
        elif mxnet_smoothing:
            def smooth(a):
                zero = a == 0
                return a + eps * zero - eps * zero.sum() / (~zero).sum() * ~zero
            p, q = smooth(p), smooth(q)
        else:
            q[(p > 0) & (q == 0)] = eps
        out.append(entropy(p, q))
    return np.array(out)


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(2017)
    return {"laplace": rng.laplace(size=200_000), "gauss": rng.normal(size=200_000)}


# --------------------------------------------------------------------------- by hand
def test_handcrafted_histogram():
    # bins of width 1 on [0, 4]; bits=2 -> n_q = 2 groups; candidates keep i = 2, 3, 4 bins
    hist, edges = np.array([6, 2, 0, 1]), np.arange(5.0)
    # i=2: p = (6, 3), q = (6, 2)                         -> 2/3 ln(8/9) + 1/3 ln(4/3)
    # i=3: p = (6, 2, 1), groups {0,1} {2}: q = (4, 4, 0 -> eps)
    # i=4: p = q's source = (6, 2, 0, 1), groups {0,1} {2,3}: q = (4, 4, 0, 1)
    d2 = 2 / 3 * np.log(8 / 9) + 1 / 3 * np.log(4 / 3)
    z = 8 + EPS
    d3 = 6 / 9 * np.log(6 / 9 * z / 4) + 2 / 9 * np.log(2 / 9 * z / 4) + 1 / 9 * np.log(1 / 9 * z / EPS)
    d4 = 6 / 9 * np.log(6 / 4) + 2 / 9 * np.log(2 / 4)
    assert np.allclose(_divergences(hist.astype(float), 2, EPS), [d2, d3, d4], rtol=1e-12)
    r = kl_threshold(hist, edges, bits=2)
    assert isinstance(r, KLResult)
    assert (r.alpha, r.index) == (2.0, 2) and r.kl == pytest.approx(d2, rel=1e-12)


def test_data_that_fits_the_quantized_bins_is_not_clipped_further():
    # everything in the first n_q bins, one count per bin: q == p at i = n_q, so KL = 0 there
    hist = np.concatenate([np.ones(4), np.zeros(12)])
    r = kl_threshold(hist, np.arange(17.0), bits=3)
    assert (r.index, r.alpha, r.kl) == (4, 4.0, 0.0)


def test_a_candidate_that_keeps_no_counts_is_never_chosen():
    hist = np.array([0, 0, 0, 5, 0, 2])
    d = _divergences(hist.astype(float), 2, EPS)
    assert np.all(np.isinf(d[:2])) and np.all(np.isfinite(d[2:]))
    assert kl_threshold(hist, np.arange(7.0), bits=2).index >= 4


def test_without_clipping_or_rounding_loss_the_smallest_lossless_threshold_wins():
    # one count every 4th bin: from i = 13 on nothing is clipped and every group holds at most one
    # non-zero bin, so q == p and KL = 0; every smaller i folds a count into an empty group
    hist = np.zeros(16)
    hist[::4] = 1
    d = _divergences(hist, 4, EPS)
    assert np.all(d[13 - 4:] == 0) and np.all(d[:13 - 4] > 0)
    r = kl_threshold(hist, np.linspace(0, 2, 17), bits=3)  # n_q = 4
    assert (r.index, r.alpha, r.kl) == (13, 1.625, 0.0)


# --------------------------------------------------------------------------- independent route
@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=16, max_size=80).filter(lambda h: sum(h) > 0),
       st.sampled_from([2, 3, 4, 5]), st.booleans())
def test_vectorised_equals_the_literal_loop(hist, bits, half_range):
    n_q = 2**bits if half_range else 2 ** (bits - 1)
    assume(len(hist) >= n_q)
    d = _divergences(np.array(hist, dtype=float), n_q, EPS)
    ref = reference_divergences(hist, n_q)
    assert np.allclose(d, ref, rtol=1e-10, atol=1e-12)
    r = kl_threshold(hist, np.arange(len(hist) + 1.0), bits=bits, half_range=half_range)
    assert r.kl == pytest.approx(ref.min(), rel=1e-10, abs=1e-12)
    assert ref[r.index - n_q] <= ref.min() + 1e-12 and r.alpha == r.index


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=16, max_size=80).filter(lambda h: sum(h) > 0),
       st.sampled_from([2, 3, 4, 5]))
def test_literal_convention_equals_its_loop(hist, bits):
    n_q = 2 ** (bits - 1)
    d = _divergences(np.array(hist, dtype=float), n_q, EPS, "literal")
    ref = reference_divergences(hist, n_q, literal=True)
    assert np.array_equal(np.isinf(d), np.isinf(ref))
    assert np.allclose(d[np.isfinite(d)], ref[np.isfinite(ref)], rtol=1e-10, atol=1e-12)
    edges = np.arange(len(hist) + 1.0) * 0.5
    r = kl_threshold(hist, edges, bits=bits, convention="literal")
    assert ref[r.index - n_q] == ref.min() and r.alpha == edges[r.index] + 0.25  # (m + 1/2) w


def test_literal_convention_by_hand():
    # i = 3 bins into n_q = 2 groups: literal groups {0}, {1, 2}; NVIDIA's {0, 1}, {2}
    hist, edges = np.array([6, 2, 0, 1]), np.arange(5.0)
    d = _divergences(hist.astype(float), 2, EPS, "literal")
    # i=2: as before; i=3: p = (6, 2, 1), q = (6, 2/2, 2/2) (group {1, 2} spread over both non-zero bins)
    d2 = 2 / 3 * np.log(8 / 9) + 1 / 3 * np.log(4 / 3)
    d3 = 6 / 9 * np.log(8 / 9) + 2 / 9 * np.log(16 / 9) + 1 / 9 * np.log(8 / 9)
    d4 = 6 / 9 * np.log(6 / 4) + 2 / 9 * np.log(2 / 4)  # groups {0, 1}, {2, 3}: as NVIDIA's
    assert np.allclose(d, [d2, d3, d4], rtol=1e-12)
    r = kl_threshold(hist, edges, bits=2, convention="literal")
    assert (r.index, r.alpha) == (2, 2.5)
    # a candidate whose last group is empty while outliers sit in p's last bin is invalid, unsmoothed
    d = _divergences(np.array([5.0, 0.0, 0.0, 3.0]), 2, EPS, "literal")
    assert np.isinf(d[:2]).all() and np.isfinite(d[2])  # i = 2, 3: the last group keeps no count
    assert np.isfinite(_divergences(np.array([5.0, 0.0, 0.0, 3.0]), 2, EPS)).all()  # smoothed instead


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
def test_conventions_disagree_by_percents_at_8_bits(samples, prior):
    """The issue's measurement, in either direction: the flat divergence makes the grouping and the
    smoothing move the threshold by up to ~8 % (seeded samples; the half bin is 0.03 %)."""
    rng = np.random.default_rng(1)
    moves = []
    for _ in range(4):
        x = rng.laplace(size=200_000) if prior == "laplace" else rng.normal(size=200_000)
        hist, edges = abs_histogram(x)
        a = kl_threshold(hist, edges, bits=8).alpha
        b = kl_threshold(hist, edges, bits=8, convention="literal").alpha
        moves.append(abs(b / a - 1))
    assert max(moves) > 0.01
    assert max(moves) < 0.15


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_same_threshold_as_the_loop_and_as_mxnet_smoothing(samples, prior, bits):
    hist, edges = abs_histogram(samples[prior], bins=512)
    n_q = 2 ** (bits - 1)
    r = kl_threshold(hist, edges, bits=bits)
    ref = reference_divergences(hist, n_q)
    mx = reference_divergences(hist, n_q, mxnet_smoothing=True)
    assert r.index == n_q + np.argmin(ref) == n_q + np.argmin(mx)
    assert r.kl == pytest.approx(ref.min(), rel=1e-9)
    assert np.allclose(ref, mx, rtol=1e-5)  # the smoothing's mass shift is O(eps / count)


# --------------------------------------------------------------------------- properties of the answer
@pytest.mark.parametrize("prior", ["laplace", "gauss"])
def test_threshold_clips_only_the_extreme_tail_at_8_bits(samples, prior):
    x = np.abs(samples[prior])
    r = kl_threshold(*abs_histogram(x), bits=8)
    # by construction: a histogram edge in [edges[n_q], max|x|]
    assert r.alpha <= x.max() and r.index >= 128 and r.kl >= 0
    # 128 magnitudes make rounding cheap, so the divergence is dominated by folding outliers into the
    # last bin: the threshold keeps more than 99.9 % of the mass and still clips the sparse extreme tail
    assert np.quantile(x, 0.999) < r.alpha < x.max()


def test_threshold_increases_with_bits_on_laplace():
    # more quantized bins make rounding cheaper, so the optimum trades it for less clipping. From 7 to
    # 8 bits both thresholds sit in the sparse tail (a few counts per bin), where the order is decided
    # by sampling noise: with 10^6 samples it flipped for 2 seeds of 20, with 4 * 10^6 for none of 20
    x = np.random.default_rng(7).laplace(size=4_000_000)
    hist, edges = abs_histogram(x)
    alphas = [kl_threshold(hist, edges, bits=m).alpha for m in range(2, 9)]
    assert np.all(np.diff(alphas) > 0), alphas
    # the population histogram (expected counts of Laplace(0, 1) on [0, 16], no sampling noise)
    edges = np.linspace(0.0, 16.0, 2049)
    hist = np.diff(-np.exp(-edges))
    hist[-1] += np.exp(-16.0)
    alphas = [kl_threshold(hist * 1e6, edges, bits=m).alpha for m in range(2, 9)]
    assert np.all(np.diff(alphas) > 0), alphas
    # ... and every one is above ACIQ's alpha for the same bits (2.83, 3.90, ..., 9.90 b)
    assert np.all(np.array(alphas) > [optimal_alpha(prior="laplace", bits=m).alpha for m in range(2, 9)])


def test_half_range_has_twice_the_quantized_bins(samples):
    hist, edges = abs_histogram(np.maximum(samples["laplace"], 0.0))
    for m in (2, 4, 7):
        assert kl_threshold(hist, edges, bits=m, half_range=True) == kl_threshold(hist, edges, bits=m + 1)


def test_threshold_scales_with_the_edges(samples):
    hist, edges = abs_histogram(samples["gauss"], bins=1024)
    r = kl_threshold(hist, edges, bits=4)
    s = kl_threshold(hist, edges * 3.0, bits=4)
    assert s.index == r.index and s.alpha == pytest.approx(3 * r.alpha, rel=1e-14) and s.kl == r.kl


def test_post_relu_zeros_must_be_left_out(samples):
    x = np.maximum(samples["laplace"], 0.0)
    with_zeros = kl_threshold(*abs_histogram(x), bits=8, half_range=True)
    without = kl_threshold(*abs_histogram(x, exclude_zeros=True), bits=8, half_range=True)
    # the zero spike spread over the first quantized bin drags the threshold into the bulk ...
    assert with_zeros.alpha < np.quantile(x[x > 0], 0.9)
    # ... without it, the half-range answer behaves like the signed one on |x| (the same 256 bins)
    assert np.quantile(x[x > 0], 0.999) < without.alpha < x.max()


# --------------------------------------------------------------------------- abs_histogram
def test_abs_histogram():
    x = np.random.default_rng(3).normal(size=(10, 100))
    hist, edges = abs_histogram(x, bins=64)
    assert hist.dtype == np.int64 and hist.shape == (64,) and edges.shape == (65,)
    assert edges[0] == 0.0 and edges[-1] == np.abs(x).max() and hist.sum() == x.size
    ref, _ = np.histogram(np.abs(x), bins=64, range=(0, np.abs(x).max()))
    assert np.array_equal(hist, ref)
    hist, edges = abs_histogram(x, bins=8, max_value=1.0)  # values beyond the range: last bin
    assert hist.sum() == x.size and hist[-1] == np.sum(np.abs(x) >= 1 - 1 / 8)
    assert edges[-1] == 1.0
    y = np.array([0.0, -0.0, 0.0, 0.25, -1.0])
    assert abs_histogram(y, bins=4)[0].tolist() == [3, 1, 0, 1]
    assert abs_histogram(y, bins=4, exclude_zeros=True)[0].tolist() == [0, 1, 0, 1]


# --------------------------------------------------------------------------- bad input
GOOD_EDGES = np.arange(9.0)


@pytest.mark.parametrize("hist, edges, match", [
    ([], [0.0], "hist"),
    (np.ones((2, 4)), GOOD_EDGES, "hist"),
    ([1, -1, 1, 1, 1, 1, 1, 1], GOOD_EDGES, "hist"),
    (np.zeros(8), GOOD_EDGES, "hist"),
    ([1, np.nan, 1, 1, 1, 1, 1, 1], GOOD_EDGES, "hist"),
    (np.ones(8), np.arange(8.0), "edges"),
    (np.ones(8), GOOD_EDGES + 1, "edges"),
    (np.ones(8), GOOD_EDGES ** 2, "edges"),
    (np.ones(8), GOOD_EDGES[::-1], "edges"),
    (np.ones(2), np.arange(3.0), "hist"),  # fewer bins than the 4 quantized bins of 3 bits
])
def test_bad_histogram(hist, edges, match):
    with pytest.raises(ValueError, match=match):
        kl_threshold(hist, edges, bits=3)


@pytest.mark.parametrize("bits", [0, 1, 2.5, np.nan, [2, 3], "eight"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        kl_threshold(np.ones(8), GOOD_EDGES, bits=bits)


def test_bad_eps_convention_and_half_range_one_bit():
    with pytest.raises(ValueError, match="eps"):
        kl_threshold(np.ones(8), GOOD_EDGES, bits=2, eps=0.0)
    with pytest.raises(ValueError, match="convention"):
        kl_threshold(np.ones(8), GOOD_EDGES, bits=2, convention="mxnet")
    assert kl_threshold(np.ones(8), GOOD_EDGES, bits=1, half_range=True).index >= 2  # n_q = 2: allowed


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=[]), "x"), (dict(x=[1.0, np.inf]), "x"), (dict(x=np.zeros(5)), "x"),
    (dict(x=[1.0], bins=0), "bins"), (dict(x=[1.0], bins=2.5), "bins"),
    (dict(x=[0.0, 0.0], exclude_zeros=True), "x"),
    (dict(x=[1.0], max_value=-1.0), "max_value"), (dict(x=[1.0], max_value=[1.0, 2.0]), "max_value"),
])
def test_bad_abs_histogram(kwargs, match):
    with pytest.raises(ValueError, match=match):
        abs_histogram(**kwargs)
