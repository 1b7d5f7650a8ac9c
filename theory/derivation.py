r"""The ACIQ mean-squared-error model derived symbolically with sympy, step by step.

Nothing of the result is typed in: sympy integrates the prior's density to get the clipping error,
differentiates the model to get the stationarity condition (the paper's eq. 6 for Laplace) and, where it
can, solves it (Lambert W for Laplace). :mod:`aciq.theory.clipping` carries the same formulas as plain
numpy; the test suite checks the two against each other.

This module imports sympy, so nothing in :mod:`aciq.theory` imports it at module level.

The model, for a prior with density :math:`f` symmetric about 0 and :math:`M` bits:

.. math::

    \mathrm{MSE}(\alpha) = \underbrace{2\int_\alpha^\infty (x-\alpha)^2 f(x)\,dx}_{\text{clipping}}
        + \underbrace{\frac{\Delta^2}{12}}_{\text{noise}},\qquad \Delta = \frac{2\alpha}{2^M}
        \qquad\text{(eq. 5)}

and its half-range form (a post-ReLU tensor: the positive part of the same prior quantized on
:math:`[0, \alpha]`, the non-positive part exactly 0) keeps one tail and weights the noise of the
:math:`2^M` cells of width :math:`\Delta = \alpha/2^M` by :math:`P(X>0) = 1/2`.

Examples
--------
>>> d = derive("laplace")
>>> d.clipping_error
2*b**2*exp(-alpha/b)
>>> d.solution
b*LambertW(3*4**M)
>>> model = lambdified("laplace")
>>> round(float(model.mse(2.830683, 1.0, 2)), 5)
0.28488
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import sympy as sp

from ._common import check_prior

__all__ = ["Derivation", "NumpyModel", "derive", "lambdified"]


@dataclass(frozen=True)
class Derivation:
    r"""Every step of the derivation of the model for one prior and one range form.

    Attributes
    ----------
    prior, half_range
        What was derived.
    x, alpha, scale, bits
        The sympy symbols: the variable of the density, the clipping value, the prior's scale
        (``b`` for Laplace, ``sigma`` for Gauss) and the bit-width ``M``. All but ``x`` are positive.
    density
        The prior's density :math:`f(x)`.
    total_probability, positive_probability
        :math:`\int_{-\infty}^{\infty} f` (1) and :math:`P(X>0)` (1/2), both integrated by sympy.
    tail_integral
        The unevaluated tail :math:`\int_\alpha^\infty (x-\alpha)^2 f(x)\,dx` (on the tail ``x`` is positive).
    tail_evaluated
        What ``tail_integral.doit()`` returns, before simplification.
    tail
        ``tail_evaluated`` simplified, written with ``erfc`` instead of ``1 - erf``.
    clipping_error
        Both tails (``2*tail``) or, for half range, one tail.
    step
        The cell width :math:`\Delta`: :math:`2\alpha/2^M`, or :math:`\alpha/2^M` for half range.
    quantization_noise
        :math:`\Delta^2/12`, weighted by ``positive_probability`` for half range.
    mse
        ``clipping_error + quantization_noise`` (eq. 5 for Laplace).
    derivative
        :math:`\partial\,\mathrm{MSE}/\partial\alpha`, clipping and noise parts each simplified.
    stationarity
        ``Eq(derivative, 0)`` (eq. 6 for Laplace).
    solution
        The root of ``stationarity`` in closed form (Laplace: ``b*LambertW(3*4**M)``, half range
        ``b*LambertW(12*4**M)``), or ``None`` where sympy finds none (Gauss).
    """

    prior: str
    half_range: bool
    x: sp.Symbol
    alpha: sp.Symbol
    scale: sp.Symbol
    bits: sp.Symbol
    density: sp.Expr
    total_probability: sp.Expr
    positive_probability: sp.Expr
    tail_integral: sp.Integral
    tail_evaluated: sp.Expr
    tail: sp.Expr
    clipping_error: sp.Expr
    step: sp.Expr
    quantization_noise: sp.Expr
    mse: sp.Expr
    derivative: sp.Expr
    stationarity: sp.Eq
    solution: sp.Expr | None


@dataclass(frozen=True)
class NumpyModel:
    """The derived expressions as numpy callables (scipy's ``erfc`` and real-branch ``lambertw``).

    ``clipping_error(alpha, scale)``, ``quantization_noise(alpha, bits)``, ``mse(alpha, scale, bits)``,
    ``derivative(alpha, scale, bits)`` and ``solution(scale, bits)`` (``None`` without a closed form).
    They broadcast and do not validate their input: they are the independent route the tests compare
    :mod:`aciq.theory.clipping` against, not an API for users.
    """

    prior: str
    half_range: bool
    clipping_error: Callable
    quantization_noise: Callable
    mse: Callable
    derivative: Callable
    solution: Callable | None


def derive(prior: str, *, half_range: bool = False) -> Derivation:
    r"""Derive the ACIQ model of ``prior`` with sympy and return every intermediate step.

    .. math::

        \text{Laplace:}\quad 2b^2 e^{-\alpha/b} + \frac{\alpha^2}{3\cdot 4^M},\qquad
        \frac{2\alpha}{3\cdot 4^M} - 2b\,e^{-\alpha/b} = 0 \;\Rightarrow\; \alpha^* = b\,W(3\cdot 4^M)
        \qquad\text{(eqs. 5, 6)}

    .. math::

        \text{Gauss:}\quad (\alpha^2+\sigma^2)\operatorname{erfc}\frac{\alpha}{\sqrt2\sigma}
        - \sqrt{\frac{2}{\pi}}\,\alpha\sigma e^{-\alpha^2/(2\sigma^2)} + \frac{\alpha^2}{3\cdot 4^M}

    Half range halves the clipping error and replaces :math:`3\cdot 4^M` by :math:`24\cdot 4^M` in the
    noise, so its optimum is the symmetric one at :math:`M+1` bits (Laplace: :math:`b\,W(12\cdot 4^M)`).

    Parameters
    ----------
    prior : {"laplace", "gauss"}
    half_range : bool
        The one-sided (post-ReLU) form.

    Returns
    -------
    Derivation
        Frozen; derived once per (prior, half_range) and reused.

    Examples
    --------
    >>> d = derive("gauss", half_range=True)
    >>> d.positive_probability, d.quantization_noise
    (1/2, alpha**2/(24*4**M))
    >>> d.solution is None
    True
    >>> derive("laplace", half_range=True).solution
    b*LambertW(12*4**M)
    """
    return _derive(check_prior(prior), bool(half_range))


@lru_cache(maxsize=None)
def _derive(prior: str, half_range: bool) -> Derivation:
    # A memo of a pure function of two hashable arguments: every call returns the same frozen result.
    x = sp.Symbol("x", real=True)
    x_tail = sp.Symbol("x", positive=True)  # on the tail x > alpha > 0, so |x| = x
    alpha = sp.Symbol("alpha", positive=True)
    bits = sp.Symbol("M", positive=True)
    if prior == "laplace":
        scale = sp.Symbol("b", positive=True)
        density = sp.exp(-sp.Abs(x) / scale) / (2 * scale)
    else:
        scale = sp.Symbol("sigma", positive=True)
        density = sp.exp(-x**2 / (2 * scale**2)) / (sp.sqrt(2 * sp.pi) * scale)

    total_probability = sp.simplify(sp.integrate(density, (x, -sp.oo, sp.oo)))
    positive_probability = sp.simplify(sp.integrate(density, (x, 0, sp.oo)))

    tail_integral = sp.Integral((x_tail - alpha)**2 * density.subs(x, x_tail), (x_tail, alpha, sp.oo))
    tail_evaluated = tail_integral.doit()
    tail = sp.simplify(sp.simplify(tail_evaluated).rewrite(sp.erfc))
    tail = sp.collect(tail, list(tail.atoms(sp.erfc)))  # (alpha**2 + sigma**2)*erfc(...) for Gauss

    if half_range:
        clipping_error = tail
        step = alpha / 2**bits
        quantization_noise = sp.simplify(positive_probability * step**2 / 12)
    else:
        clipping_error = sp.collect(sp.expand(2 * tail), list(tail.atoms(sp.erfc)))
        step = 2 * alpha / 2**bits
        quantization_noise = sp.simplify(step**2 / 12)
    quantization_noise = _powers_of_four(quantization_noise, bits)
    mse = clipping_error + quantization_noise

    derivative = _powers_of_four(
        sp.simplify(sp.diff(clipping_error, alpha)) + sp.simplify(sp.diff(quantization_noise, alpha)), bits)
    stationarity = sp.Eq(derivative, 0)
    solution = None
    if prior == "laplace":
        roots = sp.solve(stationarity, alpha)
        if len(roots) == 1:
            solution = _powers_of_four(roots[0], bits)

    return Derivation(prior=prior, half_range=half_range, x=x, alpha=alpha, scale=scale, bits=bits,
                      density=density, total_probability=total_probability,
                      positive_probability=positive_probability, tail_integral=tail_integral,
                      tail_evaluated=tail_evaluated, tail=tail, clipping_error=clipping_error, step=step,
                      quantization_noise=quantization_noise, mse=mse, derivative=derivative,
                      stationarity=stationarity, solution=solution)


def _powers_of_four(expr, bits):
    """Write ``2**(2*k*M + c)`` as ``2**c * 4**(k*M)``, the paper's ``4^M`` (display only)."""

    def is_even_power_of_two(e):
        return e.is_Pow and e.base == 2 and e.exp.has(bits) and sp.Poly(e.exp, bits).degree() == 1 \
            and (e.exp.coeff(bits) / 2).is_integer

    def rewrite(e):
        k = e.exp.coeff(bits)
        return 2**sp.expand(e.exp - k * bits) * sp.Integer(4)**(k / 2 * bits)

    return expr.replace(is_even_power_of_two, rewrite)


def lambdified(prior: str, half_range: bool = False) -> NumpyModel:
    """The derived model as numpy callables, for checking the runtime formulas against.

    Parameters
    ----------
    prior : {"laplace", "gauss"}
    half_range : bool

    Returns
    -------
    NumpyModel
        ``mse(alpha, scale, bits)`` and the other parts of :func:`derive`'s result as functions.

    Examples
    --------
    >>> model = lambdified("laplace", half_range=True)
    >>> round(float(model.solution(1.0, 3)), 5)  # the symmetric optimum at 4 bits
    5.02864
    >>> abs(float(model.derivative(model.solution(1.0, 3), 1.0, 3))) < 1e-15
    True
    """
    d = derive(prior, half_range=half_range)
    a, s, m = d.alpha, d.scale, d.bits
    modules = ["scipy", "numpy"]

    def make(args, expr):
        return sp.lambdify(args, expr, modules=modules)

    solution = None
    if d.solution is not None:
        raw = make((s, m), d.solution)

        def solution(scale, bits, _raw=raw):
            scale, bits = np.broadcast_arrays(np.asarray(scale, float), np.asarray(bits, float))
            return np.real(_raw(scale, bits))

    return NumpyModel(prior=d.prior, half_range=d.half_range,
                      clipping_error=make((a, s), d.clipping_error),
                      quantization_noise=make((a, m), d.quantization_noise),
                      mse=make((a, s, m), d.mse),
                      derivative=make((a, s, m), d.derivative),
                      solution=solution)
