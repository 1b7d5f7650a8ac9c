"""Measured quantization error: of any quantizer on any array, and seeded Monte Carlo of the grids.

The closed forms of :mod:`aciq.theory.grids` are checked against these estimates, and the same
function measures the error of a quantizer on a real tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import check_data, check_positive, check_prior
from .grids import grid_cells, quantize
from .priors import sample

__all__ = ["EmpiricalResult", "empirical_mse", "monte_carlo_mse"]


@dataclass(frozen=True)
class EmpiricalResult:
    """A mean squared error measured on ``n`` values, with its standard error.

    ``stderr`` is the standard error of the mean, ``std(err**2, ddof=1) / sqrt(n)``; NaN for n = 1.
    """

    mse: float
    stderr: float
    n: int


def empirical_mse(x, quantizer) -> EmpiricalResult:
    """Mean squared error of ``quantizer`` on ``x``, and its standard error.

    .. math::

        \\widehat{\\mathrm{MSE}} = \\frac1n \\sum_i (x_i - Q(x_i))^2, \\qquad
        \\mathrm{se} = \\frac{s}{\\sqrt n},\\quad s^2 = \\frac{1}{n-1}\\sum_i
        \\left((x_i - Q(x_i))^2 - \\widehat{\\mathrm{MSE}}\\right)^2

    Parameters
    ----------
    x : array_like
        Real, finite, non-empty values (any shape).
    quantizer : callable
        ``x -> x_hat``, returning an array of the shape of ``x``.

    Examples
    --------
    >>> res = empirical_mse([0.1, 0.4, -0.3], lambda v: np.round(v))
    >>> round(res.mse, 4), res.n
    (0.0867, 3)
    """
    x = check_data(x, "x")
    if not callable(quantizer):
        raise ValueError(f"quantizer must be callable (x -> x_hat), got {quantizer!r}")
    x_hat = np.asarray(quantizer(x), dtype=np.float64)
    if x_hat.shape != x.shape:
        raise ValueError(f"quantizer must return an array of the shape of x {x.shape}, got {x_hat.shape}")
    err = np.ravel((x - x_hat) ** 2)
    n = err.size
    stderr = float(np.std(err, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return EmpiricalResult(mse=float(np.mean(err)), stderr=stderr, n=n)


def monte_carlo_mse(*, prior, alpha, bits, grid, scale=1.0, n=10**6, seed=0, half_range=False) -> EmpiricalResult:
    """Seeded Monte Carlo estimate of a grid's MSE: ``n`` draws of the prior through
    :func:`aciq.theory.grids.quantize`.

    The sample is :func:`aciq.theory.priors.sample` (``default_rng(seed)``; with ``half_range`` it
    is :math:`\\max(X, 0)`); the estimate agrees with :func:`aciq.theory.grids.exact_mse` within a
    few standard errors. ``grid`` is one of the quantizers, including ``"midtread"`` (the seed's
    ``MSE.py`` simulation, :math:`\\operatorname{round}(\\operatorname{clip}(x)/Q)\\,Q`); ``"model"``
    is not a quantizer.

    Examples
    --------
    >>> res = monte_carlo_mse(prior="laplace", alpha=5.03, bits=4, grid="midrise", n=10_000)
    >>> res.n, 0.03 < res.mse < 0.07
    (10000, True)
    """
    prior = check_prior(prior)
    alpha = check_positive(alpha, "alpha")
    if alpha.ndim != 0:
        raise ValueError(f"alpha must be a scalar, got {alpha!r}")
    grid_cells(1.0, bits=bits, grid=grid, half_range=half_range)  # validates grid and bits before sampling
    x = sample(prior, n, scale=scale, seed=seed, half_range=half_range)
    return empirical_mse(x, lambda v: quantize(v, alpha=alpha, bits=bits, grid=grid, half_range=half_range))
