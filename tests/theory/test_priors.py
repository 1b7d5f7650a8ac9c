"""Priors: density, CDF, sampling, closed-form partial moments and cell errors, each checked by
numerical quadrature (scipy.integrate.quad, or mpmath at 40 digits where double precision quadrature
cannot resolve a narrow cell), by scipy.stats, and by invariants."""
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from aciq.theory import priors

PRIORS = ("laplace", "gauss")
DIST = {"laplace": stats.laplace, "gauss": stats.norm}


def quad_moments(a, b, prior, scale):
    f = DIST[prior](scale=scale).pdf
    pts = [0.0] if a < 0 < b and np.isfinite(a) and np.isfinite(b) else None
    out = []
    for k in range(3):
        if np.isfinite(a) and np.isfinite(b):
            val = integrate.quad(lambda x: x**k * f(x), a, b, points=pts, epsabs=1e-14, epsrel=1e-12)[0]
        else:  # split at 0 so quad sees the peak
            val = sum(integrate.quad(lambda x: x**k * f(x), lo, hi, epsabs=1e-14, epsrel=1e-12)[0]
                      for lo, hi in ((a, min(b, 0.0)), (max(a, 0.0), b)) if lo < hi)
        out.append(val)
    return out


INTERVALS = [(-np.inf, np.inf), (0.0, np.inf), (-np.inf, -1.3), (-0.7, 2.1), (0.3, 0.9), (-5.0, -4.0),
             (2.0, np.inf), (-np.inf, 0.5), (6.0, 9.0), (-1e-3, 2e-3)]


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("a, b", INTERVALS)
def test_partial_moments_match_quadrature(prior, scale, a, b):
    got = priors.partial_moments(a * scale, b * scale, prior=prior, scale=scale)
    want = quad_moments(a * scale, b * scale, prior, scale)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=1e-9, abs=1e-13 * scale**k), f"M{k}"


@pytest.mark.parametrize("prior", PRIORS)
def test_whole_line_moments_are_mass_mean_variance(prior):
    m0, m1, m2 = priors.partial_moments(-np.inf, np.inf, prior=prior, scale=3.0)
    assert (m0, m1) == (pytest.approx(1.0, abs=1e-15), pytest.approx(0.0, abs=1e-15))
    assert m2 == pytest.approx(priors.variance(prior=prior, scale=3.0), rel=1e-14)


@pytest.mark.parametrize("prior", PRIORS)
def test_partial_moments_broadcast(prior):
    a = np.array([[-1.0], [0.5]])
    b = np.array([0.6, 1.0, np.inf])
    m0, m1, m2 = priors.partial_moments(a, b, prior=prior)
    assert m0.shape == m1.shape == m2.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            one = priors.partial_moments(a[i, 0], b[j], prior=prior)
            assert (m0[i, j], m1[i, j], m2[i, j]) == pytest.approx(one, rel=1e-15, abs=1e-300)


@pytest.mark.parametrize("prior", PRIORS)
def test_pdf_and_cdf_against_scipy_stats(prior):
    x = np.array([-30.0, -7.5, -1.0, -1e-9, 0.0, 0.2, 3.0, 12.0])
    dist = DIST[prior](scale=1.7)
    np.testing.assert_allclose(priors.pdf(x, prior=prior, scale=1.7), dist.pdf(x), rtol=1e-13, atol=0)
    np.testing.assert_allclose(priors.cdf(x, prior=prior, scale=1.7), dist.cdf(x), rtol=1e-12, atol=0)


@pytest.mark.parametrize("prior", PRIORS)
def test_cdf_is_the_integral_of_the_pdf(prior):
    for x in (-2.0, 0.3, 4.0):
        want = integrate.quad(lambda t: priors.pdf(t, prior=prior), -np.inf, x, points=None)[0] if x < 0 else \
            0.5 + integrate.quad(lambda t: priors.pdf(t, prior=prior), 0.0, x)[0]
        assert priors.cdf(x, prior=prior) == pytest.approx(want, rel=1e-10)


# --------------------------------------------------------------------------- cell errors
def mp_cell(a, b, q, prior):
    mp.mp.dps = 40
    f = (lambda x: mp.e ** (-abs(x)) / 2) if prior == "laplace" else mp.npdf
    a, b, q = (mp.mpf(float(v)) if np.isfinite(v) else (mp.inf if v > 0 else -mp.inf) for v in (a, b, q))
    pts = [a, 0, b] if a < 0 < b else [a, b]
    return float(mp.quad(lambda x: (x - q) ** 2 * f(x), pts))


@pytest.mark.parametrize("prior", PRIORS)
def test_cell_error_is_the_combination_of_moments_for_wide_cells(prior):
    for a, b, q in [(-np.inf, -1.0, -1.5), (-0.5, 2.0, 0.7), (1.0, np.inf, 1.4), (-np.inf, np.inf, 0.3)]:
        m0, m1, m2 = priors.partial_moments(a, b, prior=prior)
        assert priors.cell_error(a, b, q, prior=prior) == pytest.approx(m2 - 2 * q * m1 + q * q * m0, rel=1e-12)


@pytest.mark.parametrize("prior", PRIORS)
def test_cell_error_of_narrow_cells_keeps_full_precision(prior):
    """f h^3/12 for a cell of width h: the moment combination would lose ~ log10(12/h^2) digits."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        h = 10 ** rng.uniform(-6, 0)
        c = rng.uniform(-6, 6)
        q = c + rng.uniform(-0.5, 0.5) * h
        a, b = c - h / 2, c + h / 2
        assert priors.cell_error(a, b, q, prior=prior) == pytest.approx(mp_cell(a, b, q, prior), rel=1e-11)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("a, b, q", [(-np.inf, -3.9, -4.2), (5.5, np.inf, 5.8), (-np.inf, 0.0, -0.8),
                                     (-0.25, 0.25, 0.0), (8.0, np.inf, 8.1), (-1.5, 1.5, 0.0)])
def test_cell_error_matches_high_precision_quadrature(prior, a, b, q):
    assert priors.cell_error(a, b, q, prior=prior) == pytest.approx(mp_cell(a, b, q, prior), rel=1e-11)


finite = st.floats(-8, 8, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(a=finite, w1=st.floats(0, 3), w2=st.floats(0, 3), q=finite, prior=st.sampled_from(PRIORS),
       k=st.floats(0.1, 10))
def test_cell_error_invariants(a, w1, w2, q, prior, k):
    b, c = a + w1, a + w1 + w2
    e_ab = priors.cell_error(a, b, q, prior=prior)
    e_bc = priors.cell_error(b, c, q, prior=prior)
    assert e_ab >= 0 and e_bc >= 0
    assert priors.cell_error(a, c, q, prior=prior) == pytest.approx(e_ab + e_bc, rel=1e-9, abs=1e-300)
    # scale law: f_k(x) = f(x/k)/k  =>  error scales with k^2
    assert priors.cell_error(k * a, k * c, k * q, prior=prior, scale=k) == \
        pytest.approx(k * k * (e_ab + e_bc), rel=1e-9, abs=1e-300)


@settings(max_examples=30, deadline=None)
@given(a=finite, w=st.floats(0, 4), prior=st.sampled_from(PRIORS))
def test_moments_are_consistent(a, w, prior):
    """M0 >= 0, M2 >= 0 and Cauchy-Schwarz M1^2 <= M0 M2; M1 has the sign of the interval's side."""
    m0, m1, m2 = priors.partial_moments(a, a + w, prior=prior)
    assert m0 >= 0 and m2 >= 0
    assert m1 * m1 <= m0 * m2 * (1 + 1e-12) + 1e-300
    if a >= 0:
        assert m1 >= 0
    if a + w <= 0:
        assert m1 <= 0


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("prior", PRIORS)
def test_sample_is_seeded_and_has_the_right_moments(prior):
    x = priors.sample(prior, 200_000, scale=2.0, seed=3)
    np.testing.assert_array_equal(x, priors.sample(prior, 200_000, scale=2.0, seed=3))
    assert not np.array_equal(x[:10], priors.sample(prior, 10, scale=2.0, seed=4))
    var = priors.variance(prior=prior, scale=2.0)
    assert abs(x.mean()) < 4 * np.sqrt(var / x.size)
    assert x.var() == pytest.approx(var, rel=0.02)
    assert stats.kstest(x, DIST[prior](scale=2.0).cdf).pvalue > 1e-3


@pytest.mark.parametrize("prior", PRIORS)
def test_half_range_sample_is_relu_of_the_full_sample(prior):
    full = priors.sample(prior, 1000, seed=5)
    half = priors.sample(prior, 1000, seed=5, half_range=True)
    np.testing.assert_array_equal(half, np.maximum(full, 0.0))
    assert np.mean(half == 0.0) == pytest.approx(0.5, abs=0.06)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, name", [
    (lambda: priors.pdf(1.0, prior="cauchy"), "prior"),
    (lambda: priors.pdf(1.0, prior="gauss", scale=0.0), "scale"),
    (lambda: priors.cdf(np.nan, prior="gauss"), "x"),
    (lambda: priors.partial_moments(1.0, 0.0, prior="gauss"), "b"),
    (lambda: priors.partial_moments(np.nan, 1.0, prior="gauss"), "a"),
    (lambda: priors.partial_moments(np.inf, np.inf, prior="gauss"), "a"),
    (lambda: priors.partial_moments(0.0, 1.0, prior="laplace", scale=-1.0), "scale"),
    (lambda: priors.cell_error(0.0, 1.0, np.nan, prior="laplace"), "q"),
    (lambda: priors.cell_error(0.0, 1.0, 0.5, prior="laplace", scale=np.inf), "scale"),
    (lambda: priors.sample("gauss", 0), "n"),
    (lambda: priors.sample("gauss", 2.5), "n"),
    (lambda: priors.sample("normal", 3), "prior"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
