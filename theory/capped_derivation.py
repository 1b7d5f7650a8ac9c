r"""The error model of a capped activation (:mod:`aciq.theory.capped`) derived with sympy.

As :mod:`aciq.theory.derivation` does for the paper's model, nothing of the result is typed in: sympy
normalises the half-range prior on :math:`(0, c)`, integrates the clipped tail and the moments,
differentiates the error twice and takes the uncapped limit. The tests check
:mod:`aciq.theory.capped` against these expressions.

This module imports sympy; nothing in :mod:`aciq.theory` imports it at module level.

.. math::

    \mathrm{MSE}(\alpha) = (1-p)\int_\alpha^c (x-\alpha)^2\,\frac{f(x)}{F(c)}\,dx + p\,(c-\alpha)^2
        + (1-p)\,\frac{1}{12}\Big(\frac{\alpha}{2^M}\Big)^2,\qquad 0 < \alpha \le c

with :math:`f` the half-range density (:math:`e^{-x/b}/b`, or :math:`\sqrt{2/\pi}\,e^{-x^2/2\sigma^2}/\sigma`),
:math:`F(c) = \int_0^c f` and :math:`p` the fraction of the positive values at the cap.

Examples
--------
>>> d = derive_capped("laplace")
>>> d.normaliser
1 - exp(-c/b)
>>> d.slope_at_cap
alpha*(1 - p)/(6*4**M)
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import sympy as sp

from ._common import check_prior
from .derivation import _powers_of_four

__all__ = ["CappedDerivation", "NumpyCapped", "derive_capped", "lambdified_capped"]


@dataclass(frozen=True)
class CappedDerivation:
    r"""Every step of the derivation for one prior.

    Attributes
    ----------
    prior
        ``"laplace"`` (exponential continuous part) or ``"gauss"`` (half-normal).
    x, alpha, cap, scale, bits, cap_mass
        Symbols (all positive but ``cap_mass``, nonnegative): :math:`x, \alpha, c`, ``b`` or ``sigma``,
        ``M``, ``p``.
    density
        The half-range density :math:`f(x)` on :math:`x > 0`.
    normaliser
        :math:`F(c) = \int_0^c f`.
    tail
        :math:`\int_\alpha^c (x-\alpha)^2 f(x)\,dx / F(c)`, the continuous part's clipping error.
    atom
        :math:`p(c-\alpha)^2`.
    noise
        :math:`(1-p)\,(\alpha/2^M)^2/12`.
    mse
        ``(1 - p)*tail + atom + noise``.
    derivative, second_derivative
        :math:`\partial_\alpha` and :math:`\partial^2_\alpha` of ``mse``, simplified.
    slope_at_cap
        ``derivative`` at :math:`\alpha = c`, written with ``alpha`` for ``c``: positive unless p = 1.
    mean, mean_square
        :math:`\int_0^c x f / F(c)` and :math:`\int_0^c x^2 f / F(c)`.
    uncapped_limit
        :math:`\lim_{c\to\infty}` of ``mse`` at :math:`p = 0`.
    """

    prior: str
    x: sp.Symbol
    alpha: sp.Symbol
    cap: sp.Symbol
    scale: sp.Symbol
    bits: sp.Symbol
    cap_mass: sp.Symbol
    density: sp.Expr
    normaliser: sp.Expr
    tail: sp.Expr
    atom: sp.Expr
    noise: sp.Expr
    mse: sp.Expr
    derivative: sp.Expr
    second_derivative: sp.Expr
    slope_at_cap: sp.Expr
    mean: sp.Expr
    mean_square: sp.Expr
    uncapped_limit: sp.Expr


@dataclass(frozen=True)
class NumpyCapped:
    """The derived expressions as numpy callables: ``mse(alpha, cap, scale, cap_mass, bits)``,
    ``derivative`` (same arguments), ``mean(cap, scale)``, ``mean_square(cap, scale)``. They broadcast
    and do not validate: they are what the tests compare :mod:`aciq.theory.capped` against."""

    prior: str
    mse: Callable
    derivative: Callable
    mean: Callable
    mean_square: Callable


def derive_capped(prior: str) -> CappedDerivation:
    r"""Derive the capped-activation error model of ``prior`` with sympy.

    .. math::

        \text{Laplace: } F(c) = 1 - e^{-c/b},\qquad
        \text{Gauss: } F(c) = \operatorname{erf}\frac{c}{\sqrt2\,\sigma}

    .. math::

        \mathrm{MSE}'' = 2(1-p)\,\frac{F(c) - F(\alpha)}{F(c)} + 2p + \frac{2(1-p)}{12\cdot4^M} > 0,
        \qquad \mathrm{MSE}'(c) = \frac{2(1-p)\,c}{12\cdot 4^M}

    Parameters
    ----------
    prior : {"laplace", "gauss"}

    Returns
    -------
    CappedDerivation
        Derived once per prior and reused.

    Examples
    --------
    >>> d = derive_capped("gauss")
    >>> d.normaliser
    erf(sqrt(2)*c/(2*sigma))
    >>> a, c, p, m = d.alpha, d.cap, d.cap_mass, d.bits
    >>> convex = 2*(1 - p)*(1 - d.normaliser.subs(c, a)/d.normaliser) + 2*p + (1 - p)/(6*4**m)
    >>> sp.simplify(d.second_derivative - convex)
    0
    """
    return _derive(check_prior(prior))


@lru_cache(maxsize=None)
def _derive(prior: str) -> CappedDerivation:
    # A memo of a pure function of one hashable argument: every call returns the same frozen result.
    x = sp.Symbol("x", positive=True)
    alpha = sp.Symbol("alpha", positive=True)
    cap = sp.Symbol("c", positive=True)
    bits = sp.Symbol("M", positive=True)
    p = sp.Symbol("p", nonnegative=True)
    if prior == "laplace":
        scale = sp.Symbol("b", positive=True)
        density = sp.exp(-x / scale) / scale
    else:
        scale = sp.Symbol("sigma", positive=True)
        density = sp.sqrt(2 / sp.pi) * sp.exp(-x**2 / (2 * scale**2)) / scale

    normaliser = sp.simplify(sp.integrate(density, (x, 0, cap)))
    tail = sp.simplify(sp.integrate((x - alpha)**2 * density, (x, alpha, cap))) / normaliser
    atom = p * (cap - alpha)**2
    noise = _powers_of_four(sp.simplify((1 - p) * (alpha / 2**bits)**2 / 12), bits)
    mse = (1 - p) * tail + atom + noise
    derivative = sp.simplify(sp.diff(mse, alpha))
    second_derivative = _powers_of_four(sp.simplify(sp.diff(mse, alpha, 2)), bits)
    slope_at_cap = _powers_of_four(sp.simplify(derivative.subs(cap, alpha)), bits)
    mean = sp.simplify(sp.integrate(x * density, (x, 0, cap)) / normaliser)
    mean_square = sp.simplify(sp.integrate(x**2 * density, (x, 0, cap)) / normaliser)
    uncapped_limit = sp.limit(mse.subs(p, 0), cap, sp.oo)
    return CappedDerivation(prior=prior, x=x, alpha=alpha, cap=cap, scale=scale, bits=bits, cap_mass=p,
                            density=density, normaliser=normaliser, tail=tail, atom=atom, noise=noise,
                            mse=mse, derivative=derivative, second_derivative=second_derivative,
                            slope_at_cap=slope_at_cap, mean=mean, mean_square=mean_square,
                            uncapped_limit=uncapped_limit)


def lambdified_capped(prior: str) -> NumpyCapped:
    """The derived expressions as numpy callables (scipy's ``erf``).

    Examples
    --------
    >>> model = lambdified_capped("laplace")
    >>> round(float(model.mse(6.0, 6.0, 1.0, 0.1, 4)), 6)  # at the cap: the noise of the continuous part
    0.010547
    """
    d = derive_capped(prior)
    args = (d.alpha, d.cap, d.scale, d.cap_mass, d.bits)

    def make(a, expr):
        return sp.lambdify(a, expr, modules=["scipy", "numpy"])

    return NumpyCapped(prior=d.prior, mse=make(args, d.mse), derivative=make(args, d.derivative),
                       mean=make((d.cap, d.scale), d.mean), mean_square=make((d.cap, d.scale), d.mean_square))
