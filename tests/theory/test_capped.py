"""aciq.theory.capped: clipping a capped (ReLU6) activation, checked by quadrature, seeded Monte Carlo of
the real gemmlowp grid, the uncapped optimum of clipping.py and grids.py, bounded minimisation and a dense
scan, and the moment fit's round trip."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.optimize import minimize_scalar
from scipy.special import ndtr, ndtri

from aciq.theory import grids
from aciq.theory.capped import (CappedClipping, CappedFit, capped_moments, capped_mse, fit_capped_scale,
                                optimal_alpha_capped)
from aciq.theory.clipping import optimal_alpha

PRIORS = ("laplace", "gauss")
DIST = {"laplace": stats.expon, "gauss": stats.halfnorm}   # the half-range densities on x > 0


def truncated_pdf(prior, cap, scale):
    if np.isinf(scale):
        return lambda x: 1.0 / cap
    d = DIST[prior](scale=scale)
    return lambda x: d.pdf(x) / d.cdf(cap)


def quad_model(alpha, prior, bits, cap, scale, p):
    g = truncated_pdf(prior, cap, scale)
    tail = integrate.quad(lambda x: (x - alpha) ** 2 * g(x), alpha, cap, epsabs=0, epsrel=1e-12)[0]
    return (1 - p) * tail + p * (cap - alpha) ** 2 + (1 - p) * alpha**2 / (12 * 4.0**bits)


def quad_exact(alpha, prior, bits, cap, scale, p):
    """The real grid by quadrature: (x - Q(x))^2 with Q = grids.quantize (gemmlowp, half range),
    integrated cell by cell over (0, cap), plus the atom p (cap - Q(cap))^2."""
    g = truncated_pdf(prior, cap, scale)
    step = alpha / (2**bits - 1)
    edges = np.concatenate([[0.0], (np.arange(2**bits - 1) + 0.5) * step, [cap]])

    def q(x):
        return float(grids.quantize(np.array([x]), alpha=alpha, bits=bits, grid="gemmlowp", half_range=True)[0])

    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        level = q(0.5 * (lo + hi))
        total += integrate.quad(lambda x: (x - level) ** 2 * g(x), lo, hi, epsabs=0, epsrel=1e-12)[0]
    return (1 - p) * total + p * (cap - q(cap)) ** 2


def sample_positive(prior, n, cap, scale, p, seed):
    """Seeded positives of a capped activation: the atom at the cap with probability p, else the prior
    truncated to (0, cap) by inverse transform."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    if np.isinf(scale):
        x = cap * u
    elif prior == "laplace":
        x = -scale * np.log1p(u * np.expm1(-cap / scale))
    else:
        x = scale * ndtri(0.5 + u * (ndtr(cap / scale) - 0.5))
    return np.where(rng.random(n) < p, cap, x)


# --------------------------------------------------------------------------- the error
@pytest.mark.parametrize("prior", PRIORS)
def test_model_equals_quadrature(prior):
    rng = np.random.default_rng(0)
    for _ in range(12):
        cap, scale = rng.uniform(1, 8), float(np.exp(rng.uniform(-2, 2)))
        alpha, bits, p = cap * rng.uniform(0.05, 1.0), rng.uniform(1, 8), rng.uniform(0, 0.5)
        got = capped_mse(alpha, prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p)
        assert got == pytest.approx(quad_model(alpha, prior, bits, cap, scale, p), rel=1e-10)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_exact_grid_equals_quadrature_with_the_real_quantizer(prior, bits):
    rng = np.random.default_rng(bits)
    for scale in (0.4, 2.0, np.inf):
        cap, p = 6.0, rng.uniform(0, 0.4)
        for alpha in (1.3, 4.7, 6.0):
            got = capped_mse(alpha, prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p, grid="gemmlowp")
            assert got == pytest.approx(quad_exact(alpha, prior, bits, cap, scale, p), rel=1e-9)


@pytest.mark.parametrize("prior, bits, alpha, scale, p", [
    ("laplace", 2, 4.0, 1.0, 0.1), ("laplace", 4, 5.9, 1.5, 0.2), ("laplace", 8, 6.0, 2.0, 0.05),
    ("gauss", 3, 5.0, 2.5, 0.2), ("gauss", 8, 5.7, 1.0, 0.01), ("gauss", 4, 6.0, np.inf, 0.3),
])
def test_monte_carlo_of_the_real_grid(prior, bits, alpha, scale, p):
    """10^6 seeded positives quantized by grids.quantize (the numpy reference of the integer grid): the
    exact error is within 4 standard errors. The model's cells are alpha/2^M wide where the grid's are
    alpha/(2^M - 1): it is never below (1 - 2^-M)^2 of the exact error, and at 8 bits within 1%."""
    cap, n = 6.0, 1_000_000
    x = sample_positive(prior, n, cap, scale, p, seed=bits)
    err = (x - grids.quantize(x, alpha=alpha, bits=bits, grid="gemmlowp", half_range=True)) ** 2
    mean, se = err.mean(), err.std(ddof=1) / np.sqrt(n)
    exact = capped_mse(alpha, prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p, grid="gemmlowp")
    model = capped_mse(alpha, prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p)
    assert abs(mean - exact) < 4 * se
    assert model >= 0.99 * (1 - 2.0**-bits) ** 2 * exact
    if bits == 8:
        assert abs(model / mean - 1) < 0.01


# --------------------------------------------------------------------------- the limits
@pytest.mark.parametrize("prior", PRIORS)
def test_uncapped_limit_is_the_half_range_optimum_of_clipping(prior):
    """c -> inf, p_c -> 0: the optimum of clipping.optimal_alpha(half_range=True), and twice its MSE (that
    one is per element, half of them exact zeros; this one per positive value)."""
    bits = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0])
    ref = optimal_alpha(prior=prior, bits=bits, scale=0.7, half_range=True)
    res = optimal_alpha_capped(prior=prior, bits=bits, cap=200.0, scale=0.7, cap_mass=0.0)
    assert res.converged and not np.any(res.at_cap)
    np.testing.assert_allclose(res.alpha, ref.alpha, rtol=1e-10)
    np.testing.assert_allclose(res.mse, 2 * ref.mse, rtol=1e-10)
    # the MSE itself, at any alpha
    alpha = np.linspace(0.1, 8.0, 17)
    from aciq.theory.clipping import model_mse
    np.testing.assert_allclose(capped_mse(alpha, prior=prior, bits=3, cap=500.0, scale=0.7, cap_mass=0.0),
                               2 * model_mse(alpha, prior=prior, bits=3, scale=0.7, half_range=True), rtol=1e-10)


@pytest.mark.parametrize("prior", PRIORS)
def test_uncapped_limit_of_the_exact_grid_is_the_grids_own_optimum(prior):
    for bits in (1, 2, 4):
        ref = grids.optimal_alpha_exact(prior=prior, bits=bits, grid="gemmlowp", half_range=True)
        res = optimal_alpha_capped(prior=prior, bits=bits, cap=100.0, scale=1.0, cap_mass=0.0, grid="gemmlowp")
        assert res.converged and res.alpha == pytest.approx(ref.alpha, rel=1e-6)
        assert res.mse == pytest.approx(2 * ref.mse, rel=1e-10)
        alpha = np.array([0.5, 2.0, 4.0])
        np.testing.assert_allclose(
            capped_mse(alpha, prior=prior, bits=bits, cap=100.0, scale=1.0, cap_mass=0.0, grid="gemmlowp"),
            2 * grids.exact_mse(alpha, prior=prior, bits=bits, grid="gemmlowp", half_range=True), rtol=1e-10)


@pytest.mark.parametrize("grid", ["model", "gemmlowp"])
def test_uniform_limit(grid):
    """scale = inf is the limit of both priors: continuous in the scale, and the same for either prior."""
    alpha = np.array([1.0, 3.0, 5.5, 6.0])
    uniform = capped_mse(alpha, prior="gauss", bits=3, cap=6.0, scale=np.inf, cap_mass=0.2, grid=grid)
    np.testing.assert_allclose(
        capped_mse(alpha, prior="laplace", bits=3, cap=6.0, scale=np.inf, cap_mass=0.2, grid=grid), uniform)
    for prior in PRIORS:
        near = capped_mse(alpha, prior=prior, bits=3, cap=6.0, scale=6e7, cap_mass=0.2, grid=grid)
        np.testing.assert_allclose(near, uniform, rtol=1e-6)
    if grid == "model":  # 36 (1 - u)^3 / 3 on the continuous part, u = alpha / 6
        u = alpha / 6
        np.testing.assert_allclose(uniform, 0.8 * (12 * (1 - u) ** 3 + alpha**2 / (12 * 64)) + 0.2 * (6 - alpha) ** 2)


# --------------------------------------------------------------------------- the optimum
@pytest.mark.parametrize("prior", PRIORS)
def test_model_optimum_against_bounded_minimisation_of_the_quadrature(prior):
    rng = np.random.default_rng(1)
    for _ in range(8):
        cap, scale = rng.uniform(2, 8), float(np.exp(rng.uniform(-1.5, 1.5)))
        bits, p = int(rng.integers(1, 7)), rng.uniform(0, 0.4)
        res = optimal_alpha_capped(prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p)
        ref = minimize_scalar(lambda a: quad_model(a, prior, bits, cap, scale, p), bounds=(1e-6, cap),
                              method="bounded", options={"xatol": 1e-10})
        assert isinstance(res, CappedClipping) and res.converged and res.grid == "model"
        assert res.alpha == pytest.approx(ref.x, rel=1e-5)
        assert res.mse <= ref.fun * (1 + 1e-12) and res.mse == pytest.approx(ref.fun, rel=1e-10)
        assert res.alpha < cap and not res.at_cap and res.mse < res.mse_at_cap
        assert res.mse_at_cap == pytest.approx(quad_model(cap, prior, bits, cap, scale, p), rel=1e-10)


def test_the_model_optimum_is_below_the_cap_unless_everything_saturates():
    """MSE'(c) = 2 (1 - p) c / (12 4^M) > 0: below the cap, by about (1 - p) c / (12 4^M p) for a heavy atom."""
    p = np.array([0.01, 0.1, 0.5, 0.9, 0.999, 1.0])
    res = optimal_alpha_capped(prior="laplace", bits=4, cap=6.0, scale=1.0, cap_mass=p)
    np.testing.assert_array_equal(res.at_cap, p == 1.0)
    assert np.all(res.alpha[:-1] < 6.0) and res.alpha[-1] == 6.0 and res.mse[-1] == 0.0
    gap = 6.0 - res.alpha[1:-1]
    np.testing.assert_allclose(gap, (1 - p[1:-1]) * 6.0 / (12 * 4**4 * p[1:-1]), rtol=0.02)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_exact_optimum_against_a_dense_scan(prior, bits):
    for scale, p in ((0.5, 0.0), (1.5, 0.05), (3.0, 0.3), (np.inf, 0.1)):
        res = optimal_alpha_capped(prior=prior, bits=bits, cap=6.0, scale=scale, cap_mass=p, grid="gemmlowp")
        alpha = np.linspace(0.01, 6.0, 3000)
        scan = capped_mse(alpha, prior=prior, bits=bits, cap=6.0, scale=scale, cap_mass=p, grid="gemmlowp")
        assert res.converged and res.grid == "gemmlowp"
        assert res.mse <= scan.min() * (1 + 1e-12)
        assert res.mse == pytest.approx(capped_mse(res.alpha, prior=prior, bits=bits, cap=6.0, scale=scale,
                                                   cap_mass=p, grid="gemmlowp"), rel=1e-14)
        assert res.mse_at_cap == pytest.approx(scan[-1], rel=1e-14)
        assert not res.at_cap and res.alpha < 6.0


def test_exact_optimum_at_the_cap_when_everything_saturates():
    res = optimal_alpha_capped(prior="gauss", bits=[2, 4], cap=6.0, scale=1.0, cap_mass=1.0, grid="gemmlowp")
    np.testing.assert_array_equal(res.at_cap, [True, True])
    np.testing.assert_array_equal(res.alpha, [6.0, 6.0])
    np.testing.assert_array_equal(res.mse, [0.0, 0.0])


@pytest.mark.parametrize("grid", ["model", "gemmlowp"])
def test_vectorised_over_scale_cap_mass_and_bits(grid):
    rng = np.random.default_rng(2)
    bits = rng.integers(1, 9, (3, 1))
    cap = rng.uniform(1, 8, (1, 4))
    scale = np.where(rng.random((3, 4)) < 0.2, np.inf, rng.uniform(0.2, 4, (3, 4)))
    p = rng.uniform(0, 0.5, (3, 4))
    res = optimal_alpha_capped(prior="gauss", bits=bits, cap=cap, scale=scale, cap_mass=p, grid=grid)
    assert res.alpha.shape == (3, 4) and res.at_cap.shape == (3, 4) and res.converged
    for i in range(3):
        for j in range(4):
            one = optimal_alpha_capped(prior="gauss", bits=int(bits[i, 0]), cap=cap[0, j], scale=scale[i, j],
                                       cap_mass=p[i, j], grid=grid)
            assert isinstance(one.alpha, float) and isinstance(one.at_cap, bool)
            assert one.alpha == pytest.approx(res.alpha[i, j], rel=1e-7)
            assert one.mse == pytest.approx(res.mse[i, j], rel=1e-12)


def test_scale_equivariance():
    """alpha*, scale and cap scale together; the MSE with their square."""
    base = optimal_alpha_capped(prior="laplace", bits=3, cap=6.0, scale=1.3, cap_mass=0.1, grid="gemmlowp")
    big = optimal_alpha_capped(prior="laplace", bits=3, cap=60.0, scale=13.0, cap_mass=0.1, grid="gemmlowp")
    assert big.alpha == pytest.approx(10 * base.alpha, rel=1e-7)
    assert big.mse == pytest.approx(100 * base.mse, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(prior=st.sampled_from(PRIORS), bits=st.floats(1, 8), scale=st.floats(0.05, 50),
       p=st.floats(0, 0.99), u=st.floats(1e-3, 1.0))
def test_the_model_optimum_is_a_global_minimum_and_falls_with_bits(prior, bits, scale, p, u):
    res = optimal_alpha_capped(prior=prior, bits=bits, cap=6.0, scale=scale, cap_mass=p)
    other = capped_mse(6.0 * u, prior=prior, bits=bits, cap=6.0, scale=scale, cap_mass=p)
    assert res.converged and res.mse <= other * (1 + 1e-12) + 1e-300
    more = optimal_alpha_capped(prior=prior, bits=bits + 0.5, cap=6.0, scale=scale, cap_mass=p)
    assert more.mse <= res.mse


# --------------------------------------------------------------------------- the moment fit
@pytest.mark.parametrize("prior", PRIORS)
def test_moments_equal_quadrature(prior):
    for cap, scale in ((6.0, 0.3), (6.0, 2.0), (1.0, 50.0), (6.0, np.inf)):
        g = truncated_pdf(prior, cap, scale)
        m1 = integrate.quad(lambda x: x * g(x), 0, cap, epsabs=0, epsrel=1e-12)[0]
        m2 = integrate.quad(lambda x: x * x * g(x), 0, cap, epsabs=0, epsrel=1e-12)[0]
        mean, mean_square = capped_moments(prior=prior, cap=cap, scale=scale)
        assert mean == pytest.approx(m1, rel=1e-11) and mean_square == pytest.approx(m2, rel=1e-11)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("moment", ["mean", "mean_square"])
def test_fit_recovers_the_scale(prior, moment):
    scale = 6.0 * np.geomspace(1e-3, 1e3, 25)
    mean, mean_square = capped_moments(prior=prior, cap=6.0, scale=scale)
    fit = fit_capped_scale(prior=prior, cap=6.0, **{moment: mean if moment == "mean" else mean_square})
    assert isinstance(fit, CappedFit) and fit.converged and fit.moment == moment and not np.any(fit.uniform)
    np.testing.assert_allclose(fit.scale, scale, rtol=1e-8 if moment == "mean" else 1e-7)


def test_fit_far_below_the_cap_is_the_untruncated_fit():
    """With the cap far above the data the mean is b (exponential) or sigma sqrt(2/pi) (half-normal)."""
    assert fit_capped_scale(prior="laplace", cap=1e3, mean=0.8).scale == pytest.approx(0.8, rel=1e-12)
    assert fit_capped_scale(prior="gauss", cap=1e3, mean=0.8).scale == pytest.approx(0.8 * np.sqrt(np.pi / 2),
                                                                                     rel=1e-12)
    assert fit_capped_scale(prior="gauss", cap=1e3, mean_square=0.8).scale == pytest.approx(np.sqrt(0.8), rel=1e-12)


def test_fit_beyond_the_uniform_limit_is_uniform():
    fit = fit_capped_scale(prior="laplace", cap=6.0, mean=[2.9, 3.0, 4.5])
    np.testing.assert_array_equal(fit.uniform, [False, True, True])
    assert np.isfinite(fit.scale[0]) and np.all(np.isinf(fit.scale[1:]))
    res = optimal_alpha_capped(prior="laplace", bits=4, cap=6.0, scale=fit.scale, cap_mass=0.1)
    assert res.converged and np.all(res.alpha < 6.0)
    one = fit_capped_scale(prior="gauss", cap=6.0, mean_square=12.0)
    assert one.uniform is True and one.scale == np.inf


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha=7.0), "alpha must be <= cap"),
    (dict(alpha=0.0), "alpha must be > 0"),
    (dict(cap_mass=1.5), r"cap_mass must lie in \[0, 1\]"),
    (dict(cap_mass=np.nan), r"cap_mass must lie in \[0, 1\]"),
    (dict(scale=0.0), "scale must be > 0"),
    (dict(scale=np.nan), "scale must be > 0"),
    (dict(cap=-1.0), "cap must be > 0"),
    (dict(bits=0.5), "bits must be >= 1"),
    (dict(bits=2.5, grid="gemmlowp"), "bits must be integers"),
    (dict(grid="midrise"), "grid must be one of"),
    (dict(prior="cauchy"), "prior must be one of"),
])
def test_bad_input(kwargs, message):
    args = {**dict(alpha=3.0, prior="laplace", bits=4, cap=6.0, scale=1.0, cap_mass=0.1), **kwargs}
    with pytest.raises(ValueError, match=message):
        capped_mse(args.pop("alpha"), **args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of mean and mean_square"),
    (dict(mean=1.0, mean_square=2.0), "exactly one of mean and mean_square"),
    (dict(mean=6.0), r"mean must lie in \(0, cap\)"),
    (dict(mean=0.0), r"mean must lie in \(0, cap\)"),
    (dict(mean_square=40.0), r"mean_square must lie in \(0, cap\*\*2\)"),
    (dict(mean=np.nan), r"mean must lie in \(0, cap\)"),
])
def test_fit_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_capped_scale(prior="gauss", cap=6.0, **kwargs)
