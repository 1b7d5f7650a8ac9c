"""aciq.theory.capped_derivation: the sympy derivation of the capped-activation model, and the runtime
numpy formulas of aciq.theory.capped checked against it."""
import mpmath as mp
import numpy as np
import pytest
import sympy as sp

from aciq.theory import capped
from aciq.theory.capped_derivation import CappedDerivation, NumpyCapped, derive_capped, lambdified_capped
from aciq.theory.derivation import derive

PRIORS = ("laplace", "gauss")


def _is_zero(expr):
    return sp.simplify(sp.expand(expr.rewrite(sp.erf))) == 0


@pytest.mark.parametrize("prior", PRIORS)
def test_steps_are_exposed_and_consistent(prior):
    d = derive_capped(prior)
    assert isinstance(d, CappedDerivation) and d.prior == prior
    x, a, c, p, m = d.x, d.alpha, d.cap, d.cap_mass, d.bits
    assert sp.limit(d.normaliser, c, sp.oo) == 1                       # f is a density on (0, inf)
    assert _is_zero(sp.diff(d.normaliser, c) - d.density.subs(x, c))  # F' = f
    assert _is_zero(d.atom - p * (c - a) ** 2)
    assert _is_zero(d.noise - (1 - p) * a**2 / (12 * 4**m))
    assert _is_zero(d.mse - ((1 - p) * d.tail + d.atom + d.noise))
    assert _is_zero(d.derivative - sp.diff(d.mse, a))
    assert _is_zero(d.tail.subs(a, c))                                  # nothing is clipped at the cap
    assert derive_capped(prior) is d


@pytest.mark.parametrize("prior", PRIORS)
def test_strictly_convex_and_rising_at_the_cap(prior):
    """MSE'' = 2(1-p)(F(c) - F(alpha))/F(c) + 2p + 2(1-p)/(12 4^M) > 0 and MSE'(c) = 2(1-p)c/(12 4^M):
    the reasons the optimum is one root, strictly below the cap unless p = 1."""
    d = derive_capped(prior)
    a, c, p, m = d.alpha, d.cap, d.cap_mass, d.bits
    convex = 2 * (1 - p) * (d.normaliser - d.normaliser.subs(c, a)) / d.normaliser + 2 * p \
        + 2 * (1 - p) / (12 * 4**m)
    assert _is_zero(d.second_derivative - convex)
    assert _is_zero(d.slope_at_cap - 2 * (1 - p) * a / (12 * 4**m))


def test_laplace_closed_forms():
    d = derive_capped("laplace")
    c, b = d.cap, d.scale
    assert _is_zero(d.normaliser - (1 - sp.exp(-c / b)))
    assert _is_zero(d.mean - (b - c / (sp.exp(c / b) - 1)))
    assert _is_zero(d.uncapped_limit - 2 * derive("laplace", half_range=True).mse.subs(
        sp.Symbol("alpha", positive=True), d.alpha))


@pytest.mark.parametrize("prior", PRIORS)
def test_uncapped_limit_is_twice_the_half_range_model(prior):
    """Per positive value vs per element (half of them exact zeros): a factor of 2, checked numerically."""
    d, half = derive_capped(prior), derive(prior, half_range=True)
    limit = sp.lambdify((d.alpha, d.scale, d.bits), d.uncapped_limit, modules=["scipy", "numpy"])
    model = sp.lambdify((half.alpha, half.scale, half.bits), half.mse, modules=["scipy", "numpy"])
    rng = np.random.default_rng(0)
    a, s, m = rng.uniform(0.1, 6, 50), rng.uniform(0.3, 3, 50), rng.uniform(1, 8, 50)
    np.testing.assert_allclose(limit(a, s, m), 2 * model(a, s, m), rtol=1e-10)


@pytest.mark.parametrize("prior", PRIORS)
def test_runtime_formulas_equal_the_lambdified_derivation(prior):
    model = lambdified_capped(prior)
    assert isinstance(model, NumpyCapped)
    rng = np.random.default_rng(1)
    n = 400
    cap = rng.uniform(0.5, 10, n)
    scale = cap / np.exp(rng.uniform(-2.5, 2.5, n))    # c / scale within [e^-2.5, e^2.5]: no cancellation
    alpha = cap * rng.uniform(0.02, 1.0, n)
    p, bits = rng.uniform(0, 1, n), rng.uniform(1, 8, n)
    # the lambdified closed form cancels near the cap and for small c/scale (terms ~ c^2 (scale/c)^2):
    # absolute tolerance eps-sized relative to c^2 there; test_near_the_cap_against_mpmath shows which is right
    got = capped.capped_mse(alpha, prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p)
    want = model.mse(alpha, cap, scale, p, bits)
    assert np.all(np.abs(got - want) <= 1e-10 * want + 1e-12 * cap**2)
    mean, mean_square = capped.capped_moments(prior=prior, cap=cap, scale=scale)
    np.testing.assert_allclose(mean, model.mean(cap, scale), rtol=1e-11)
    np.testing.assert_allclose(mean_square, model.mean_square(cap, scale), rtol=1e-11)
    # the root-finder's optimum is where the derived derivative vanishes (relative to its two parts)
    res = capped.optimal_alpha_capped(prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p)
    slope = model.derivative(res.alpha, cap, scale, p, bits)
    parts = np.abs(model.derivative(1e-300 + 0 * cap, cap, scale, p, bits)) + 2 * (1 - p) * cap / (12 * 4.0**bits)
    assert np.all(np.abs(slope) <= 1e-9 * parts)


@pytest.mark.parametrize("prior", PRIORS)
def test_near_the_cap_against_mpmath(prior):
    """Where the closed form cancels (alpha near c, c/scale small) the runtime formula keeps ~1e-13:
    40-digit quadrature of the definition."""
    mp.mp.dps = 40
    for u, lam in ((0.9994, 0.137), (0.98, 0.09), (0.999999, 2.0), (0.3, 1e-6)):
        cap, p, bits = 6.0, 0.2, 4.0
        scale, alpha = cap / lam, cap * u
        a, c, s = mp.mpf(alpha), mp.mpf(cap), mp.mpf(scale)
        if prior == "laplace":
            f = lambda x: mp.exp(-x / s) / s  # noqa: E731
        else:
            f = lambda x: mp.sqrt(2 / mp.pi) / s * mp.exp(-x**2 / (2 * s**2))  # noqa: E731
        tail = mp.quad(lambda x: (x - a) ** 2 * f(x), [a, c]) / mp.quad(f, [0, c])
        want = float((1 - p) * tail + p * (c - a) ** 2 + (1 - p) * a**2 / (12 * 4**bits))
        got = capped.capped_mse(alpha, prior=prior, bits=bits, cap=cap, scale=scale, cap_mass=p)
        assert got == pytest.approx(want, rel=1e-13)
