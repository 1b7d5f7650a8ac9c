"""aciq.theory.derivation: the sympy derivation, and the runtime numpy formulas checked against it."""
import mpmath as mp
import numpy as np
import pytest
import sympy as sp

from aciq.theory import clipping
from aciq.theory.derivation import Derivation, NumpyModel, derive, lambdified

CASES = [(p, h) for p in ("laplace", "gauss") for h in (False, True)]


def _is_zero(expr):
    return sp.simplify(sp.expand(expr.rewrite(sp.erf))) == 0


@pytest.mark.parametrize("prior, half_range", CASES)
def test_steps_are_exposed_and_consistent(prior, half_range):
    d = derive(prior, half_range=half_range)
    assert isinstance(d, Derivation) and (d.prior, d.half_range) == (prior, half_range)
    assert d.total_probability == 1 and d.positive_probability == sp.Rational(1, 2)
    assert isinstance(d.tail_integral, sp.Integral)
    assert _is_zero(d.tail_evaluated - d.tail)
    assert _is_zero(d.tail_integral.doit() - d.tail)
    assert _is_zero(d.clipping_error - (1 if half_range else 2) * d.tail)
    assert _is_zero(d.mse - d.clipping_error - d.quantization_noise)
    assert _is_zero(d.derivative - sp.diff(d.mse, d.alpha))
    assert d.stationarity == sp.Eq(d.derivative, 0)
    assert derive(prior, half_range=half_range) is d  # derived once


def test_laplace_symmetric_is_the_papers_eq_5_and_6():
    d = derive("laplace")
    a, b, m = d.alpha, d.scale, d.bits
    assert _is_zero(d.clipping_error - 2 * b**2 * sp.exp(-a / b))
    assert _is_zero(d.quantization_noise - a**2 / (3 * 4**m))
    assert _is_zero(d.step - 2 * a / 2**m)
    assert _is_zero(d.derivative - (2 * a / (3 * 2 ** (2 * m)) - 2 * b * sp.exp(-a / b)))  # eq. 6
    assert _is_zero(d.solution - b * sp.LambertW(3 * 4**m))
    w = sp.LambertW(3 * 4**m)
    assert _is_zero(d.derivative.subs(a, d.solution).subs(sp.exp(-w), w / (3 * 4**m)))  # e^{-W(z)} = W(z)/z


def test_laplace_half_range():
    d = derive("laplace", half_range=True)
    a, b, m = d.alpha, d.scale, d.bits
    assert _is_zero(d.mse - (b**2 * sp.exp(-a / b) + a**2 / (24 * 4**m)))
    assert _is_zero(d.solution - b * sp.LambertW(12 * 4**m))
    assert _is_zero(d.solution - derive("laplace").solution.subs(m, m + 1))  # symmetric at M + 1


def test_gauss_clipping_error_matches_the_seed_formula():
    d = derive("gauss")
    a, s, m = d.alpha, d.scale, d.bits
    seed = ((a**2 + s**2) * (1 - sp.erf(a / (sp.sqrt(2) * s)))
            - sp.sqrt(2 / sp.pi) * a * s * sp.exp(-a**2 / (2 * s**2)))
    assert _is_zero(d.clipping_error - seed)
    assert d.solution is None
    # half the unit-sigma derivative is the equation the solver uses
    t = sp.Symbol("t", positive=True)
    unit = (d.derivative / 2).subs({s: 1, a: t})
    expected = t * sp.erfc(t / sp.sqrt(2)) - sp.sqrt(2 / sp.pi) * sp.exp(-t**2 / 2) + t / (3 * 4**m)
    assert _is_zero(unit - expected)


@pytest.mark.parametrize("prior", ["laplace", "gauss"])
def test_half_range_model_is_half_the_symmetric_one_at_one_more_bit(prior):
    sym, half = derive(prior), derive(prior, half_range=True)
    assert _is_zero(half.mse - sym.mse.subs(sym.bits, sym.bits + 1) / 2)


@pytest.mark.parametrize("prior, half_range", CASES)
def test_runtime_formulas_equal_the_lambdified_derivation(prior, half_range):
    model = lambdified(prior, half_range)
    assert isinstance(model, NumpyModel)
    rng = np.random.default_rng(11)
    # Up to alpha/scale = 4 both agree to 1e-12. Beyond, the two terms of the Gaussian closed form cancel
    # (by about (alpha/sigma)^4/2, and exp(-alpha^2/2 sigma^2) carries eps*alpha^2/sigma^2): 1e-9 there.
    for lo, hi, rtol in ((0.01, 4.0, 1e-12), (4.0, 12.0, 1e-12 if prior == "laplace" else 1e-9)):
        scale = np.exp(rng.uniform(-4, 4, 400))
        alpha = scale * rng.uniform(lo, hi, 400)
        bits = rng.uniform(1.0, 16.0, 400)
        kw = dict(prior=prior, half_range=half_range)
        np.testing.assert_allclose(clipping.clipping_error(alpha, scale=scale, **kw),
                                   model.clipping_error(alpha, scale), rtol=rtol)
        np.testing.assert_allclose(clipping.quantization_noise(alpha, bits=bits, half_range=half_range),
                                   model.quantization_noise(alpha, bits), rtol=1e-12)
        np.testing.assert_allclose(clipping.model_mse(alpha, bits=bits, scale=scale, **kw),
                                   model.mse(alpha, scale, bits), rtol=rtol)


@pytest.mark.parametrize("prior, half_range", CASES)
def test_derivative_root_agrees_with_the_solver(prior, half_range):
    d, model = derive(prior, half_range=half_range), lambdified(prior, half_range)
    rng = np.random.default_rng(5)
    bits, scale = rng.uniform(1.0, 12.0, 6), np.exp(rng.uniform(-2, 2, 6))
    res = clipping.optimal_alpha(prior=prior, bits=bits, scale=scale, half_range=half_range)
    if model.solution is not None:
        np.testing.assert_allclose(res.alpha, model.solution(scale, bits), rtol=1e-14)
    # the sympy derivative, solved by mpmath in 40 digits on a bracket of +-5% around the solver's alpha
    f = sp.lambdify((d.alpha, d.scale, d.bits), d.derivative, modules="mpmath")
    with mp.workdps(40):
        for a, s, m in zip(res.alpha, scale, bits):
            bracket = (mp.mpf(a) * mp.mpf("0.95"), mp.mpf(a) * mp.mpf("1.05"))
            root = mp.findroot(lambda x: f(x, mp.mpf(s), mp.mpf(m)), bracket, solver="anderson")
            assert a == pytest.approx(float(root), rel=1e-14)
