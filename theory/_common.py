"""Argument checks and result types shared by every module of :mod:`aciq.theory`.

Every public function validates its inputs here, so that bad input raises a
``ValueError`` that names the offending argument instead of returning NaN.
"""
from __future__ import annotations

import operator

from dataclasses import dataclass

import numpy as np

PRIORS = ("laplace", "gauss")
"""Priors the closed forms know: Laplace(0, b) and Gaussian(0, sigma)."""

QUANTIZER_GRIDS = ("midrise", "gemmlowp", "symmetric", "midtread")
"""Quantizers that really run, whose error :mod:`aciq.theory.grids` computes exactly (``midtread`` is
the seed's simulation quantizer round(x/Q)*Q, Q = 2 alpha/2^M, with 2^M + 1 levels)."""

CODED_GRIDS = ("midrise", "gemmlowp", "symmetric")
"""The quantizers whose levels fit M-bit codes (``midtread`` needs one level more): the tables' and
figures' grids."""

GRIDS = ("model", *QUANTIZER_GRIDS)
"""``model`` is the paper's approximate objective (clipping + alpha^2/(3*4^M),
:mod:`aciq.theory.clipping`); the others are :data:`QUANTIZER_GRIDS`."""


def check_prior(prior, name: str = "prior") -> str:
    """Return ``prior`` lower-cased, or raise ValueError naming ``name``."""
    if not isinstance(prior, str) or prior.lower() not in PRIORS:
        raise ValueError(f"{name} must be one of {PRIORS}, got {prior!r}")
    return prior.lower()


def check_grid(grid, name: str = "grid", allowed=GRIDS) -> str:
    if not isinstance(grid, str) or grid.lower() not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {grid!r}")
    return grid.lower()


def _as_float_array(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {value!r}") from exc
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    return arr


def check_positive(value, name: str) -> np.ndarray:
    """Finite and strictly positive (a scale b or sigma, a clipping value alpha)."""
    arr = _as_float_array(value, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return arr


def check_scale(scale, name: str = "scale") -> np.ndarray:
    return check_positive(scale, name)


def check_nonnegative(value, name: str) -> np.ndarray:
    arr = _as_float_array(value, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return arr


def check_bits(bits, name: str = "bits", *, low: float = 1.0, high: float | None = None,
               integer: bool = False) -> np.ndarray:
    """Bit-widths: finite, >= ``low`` (default 1), optionally <= ``high`` and integral."""
    arr = _as_float_array(bits, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {bits!r}")
    if np.any(arr < low):
        raise ValueError(f"{name} must be >= {low:g}, got {bits!r}")
    if high is not None and np.any(arr > high):
        raise ValueError(f"{name} must be <= {high:g}, got {bits!r}")
    if integer and np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be integers for this grid, got {bits!r}")
    return arr


def check_data(x, name: str = "x") -> np.ndarray:
    """A real array to measure: non-empty and finite."""
    arr = _as_float_array(x, name)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def scalar_or_array(arr: np.ndarray):
    """Return a Python float for 0-d input, else the array (numpy broadcasting style)."""
    return float(arr) if np.ndim(arr) == 0 else arr


@dataclass(frozen=True)
class ClippingResult:
    """An optimal clipping value and its error.

    ``alpha`` is in the same units as ``scale`` (i.e. alpha*scale for unit-scale tables),
    ``mse`` in units of scale squared times scale**2 (i.e. absolute), ``converged`` is True when
    every solve met its tolerance.
    """

    alpha: float | np.ndarray
    mse: float | np.ndarray
    converged: bool
    prior: str
    grid: str
    half_range: bool


def check_axis(axis, ndim: int, *, what: str = "the array") -> int:
    """``axis`` as a non-negative index into ``ndim`` dimensions; ValueError naming ``axis`` otherwise."""
    try:
        axis = operator.index(axis)
    except TypeError as exc:
        raise ValueError(f"axis must be an integer, got {axis!r}") from exc
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {what} with {ndim} dimensions")
    return axis % ndim
