r"""The uniform quantizers that really run, and their exact mean squared error.

The paper's objective (eq. 5) models the rounding noise of :math:`2^M` equal cells as
:math:`\Delta^2/12`; that is exact only for a flat density. Here each grid is written out as a scalar
quantizer, i.e. increasing ``thresholds`` :math:`t_0 < \dots < t_{L-2}` and ``levels``
:math:`l_0 < \dots < l_{L-1}`: every :math:`x \in (t_{i-1}, t_i]` (with :math:`t_{-1} = -\infty`,
:math:`t_{L-1} = +\infty`) is reconstructed as :math:`l_i`, and the error is summed exactly, cell by
cell, from the closed-form cell integrals of :mod:`aciq.theory.priors`:

.. math::

    \mathrm{MSE}(\alpha) = \sum_{i=0}^{L-1} \int_{t_{i-1}}^{t_i} (x - l_i)^2 f(x)\,dx .

Grids (``alpha`` is the clipping value, absolute units; ``M = bits``; every grid scales linearly with
alpha):

``midrise``
    The paper's model grid: :math:`2^M` cells of width :math:`\Delta = 2\alpha/2^M` on
    :math:`[-\alpha, \alpha]`, reconstruction at the cell centres :math:`(k + \tfrac12)\Delta`, the outer
    cells extended to :math:`\pm\infty` (clipping). 0 is a threshold, not a level.
``gemmlowp``
    The seed's asymmetric integer grid: :math:`q_{max} = 2^M - 1`, :math:`s = (hi - lo)/q_{max}`,
    zero point :math:`z = \operatorname{round}(-lo/s)` (half to even, not clamped), codes
    :math:`q = \operatorname{clamp}(\operatorname{round}(x/s + z), 0, q_{max})`,
    :math:`\hat x = (q - z)s`. For the symmetric window :math:`[-\alpha, \alpha]`,
    :math:`-lo/s = q_{max}/2` is a half-integer and :math:`z = 2^{M-1}` for :math:`M \ge 2` (0 for
    :math:`M = 1`): the levels are :math:`k s`, :math:`k = -2^{M-1} .. 2^{M-1}-1`, the window shifted by
    :math:`s/2` so that 0 is a level. :math:`z` is computed from the exact ratio :math:`q_{max}/2`, not
    from the floating-point :math:`-lo/s` (which can land on either side of the tie); which way the tie
    goes does not change the error of a symmetric prior (the two grids are mirror images).
``symmetric``
    The signed restricted grid: :math:`2^M - 1` levels :math:`k s`, :math:`|k| \le K = 2^{M-1} - 1`,
    :math:`s = \alpha / K`, clamped codes, round half to even. Needs :math:`M \ge 2`.
``midtread``
    The seed's ``MSE.py`` simulation quantizer: :math:`\hat x = \operatorname{round}(
    \operatorname{clip}(x, -\alpha, \alpha)/Q)\,Q`, :math:`Q = 2\alpha/2^M`: :math:`2^M + 1` levels
    including :math:`\pm\alpha` (one more than M bits can code).

Half range (``half_range=True``) quantizes the post-ReLU tensor :math:`\max(X, 0)`, :math:`X` from the
prior; everything with :math:`X \le 0` is exactly 0 on input:

* ``gemmlowp``: window :math:`[0, \alpha]`, :math:`z = 0`, levels :math:`q\,\alpha/(2^M-1)`,
  :math:`q = 0..2^M-1`. ``symmetric`` half range is the unsigned grid with the same
  :math:`2^M` levels: the two are identical.
* ``midtread``: :math:`Q = \alpha/2^M`, levels :math:`kQ`, :math:`k = 0..2^M` (:math:`2^M + 1` levels).
* ``midrise``: :math:`2^M` cells of width :math:`\Delta = \alpha/2^M` on :math:`(0, \alpha]` with
  centre reconstruction, **and an exact 0 for the input 0**. A plain mid-rise grid would put 0 at the
  centre of its first cell and reconstruct every post-ReLU zero (half the tensor) as :math:`\Delta/2`,
  an error of :math:`\Delta^2/8` that dwarfs the rest; the paper's half-range model
  (:math:`\alpha^2/(24\cdot 4^M)` noise, :mod:`aciq.theory.clipping`) assumes the zeros stay exact, and
  so does this grid. It is the model's idealisation (it needs a :math:`2^M + 1`-th code for zero); the
  half-range grid with zero as one of :math:`2^M` levels is ``gemmlowp``.

Grid ``"model"`` is the paper's approximate objective, not a quantizer: see
:func:`aciq.theory.clipping.model_mse`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from ._common import (QUANTIZER_GRIDS, ClippingResult, check_bits, check_data, check_positive, check_prior,
                      check_scale, scalar_or_array)
from .clipping import optimal_alpha
from .priors import _unit_cell_error, _unit_cell_first

__all__ = ["QUANTIZER_GRIDS", "GridCells", "AnalyticGap", "grid_cells", "quantize", "exact_mse",
           "optimal_alpha_exact", "analytic_gap"]

_MAX_BITS = 16
_CHUNK = 1 << 18      # cells x alphas evaluated at once (bounds memory at 16 bits)
_SCAN = np.geomspace(0.125, 4.0, 49)  # coarse scan, in units of the model's alpha
_XATOL = 1e-10       # bounded Brent's tolerance for errors given only as values (mid-tread grids), units of ref
_XTOL = 1e-15        # Brent's tolerance on the root of d MSE / d alpha: absolute, in units of the model's alpha,
_RTOL = 4 * np.finfo(float).eps  # and relative; the root is then limited by the rounding of the derivative


# --------------------------------------------------------------------------- validation
def _check_grid(grid) -> str:
    if isinstance(grid, str) and grid.lower() == "model":
        raise ValueError("grid='model' is the paper's approximate objective, not a quantizer: "
                         "use aciq.theory.clipping.model_mse / optimal_alpha for it")
    if not isinstance(grid, str) or grid.lower() not in QUANTIZER_GRIDS:
        raise ValueError(f"grid must be one of {QUANTIZER_GRIDS}, got {grid!r}")
    return grid.lower()


def _check_int_bits(bits, grid, half_range) -> np.ndarray:
    bits = check_bits(bits, integer=True, high=_MAX_BITS)
    if grid == "symmetric" and not half_range and np.any(bits < 2):
        raise ValueError(f"bits must be >= 2 for the signed symmetric grid (2^M - 1 levels), got {bits!r}")
    return bits.astype(np.int64)


def _scalar_bits(bits, grid, half_range) -> int:
    arr = _check_int_bits(bits, grid, half_range)
    if arr.ndim != 0:
        raise ValueError(f"bits must be a scalar here, got {bits!r}")
    return int(arr)


# --------------------------------------------------------------------------- the grids
def _unit_grid(m: int, grid: str, half_range: bool):
    """(thresholds, levels) for alpha = 1 (every grid scales linearly with alpha)."""
    n = 1 << m
    if half_range:
        if grid == "midrise":
            delta = 1.0 / n
            levels = np.concatenate([[0.0], (np.arange(n) + 0.5) * delta])
            thresholds = np.arange(n) * delta  # (-inf, 0] -> 0 exactly, (k D, (k+1) D] -> (k + 1/2) D
            return thresholds, levels
        if grid == "midtread":
            step, kmax = 1.0 / n, n
        else:  # gemmlowp (z = 0) and the unsigned symmetric grid: the same 2^M levels
            step, kmax = 1.0 / (n - 1), n - 1
        k = np.arange(kmax + 1)
        return (k[:-1] + 0.5) * step, k * step
    if grid == "midrise":
        delta = 2.0 / n
        k = np.arange(-(n // 2), n // 2)
        return k[1:] * delta, (k + 0.5) * delta
    if grid == "gemmlowp":
        qmax = n - 1
        z = int(np.rint(qmax / 2.0))  # exact half-integer, rounded half to even
        step = 2.0 / qmax
        k = np.arange(qmax + 1) - z
    elif grid == "symmetric":
        kmax = n // 2 - 1
        step = 1.0 / kmax
        k = np.arange(-kmax, kmax + 1)
    else:  # midtread
        step = 2.0 / n
        k = np.arange(-(n // 2), n // 2 + 1)
    return (k[:-1] + 0.5) * step, k * step


@dataclass(frozen=True)
class GridCells:
    """A scalar quantizer as cells: ``x`` in ``(thresholds[i-1], thresholds[i]]`` maps to ``levels[i]``.

    ``len(levels) == len(thresholds) + 1``; the first and last cells extend to -inf and +inf. For
    ``half_range`` the quantizer's input is ``max(x, 0)``, so everything at or below 0 maps to
    ``levels[0] == 0``. A value exactly on a threshold goes where :func:`quantize`'s rounding sends
    it (a null set for a continuous prior, so it does not change :func:`exact_mse`).
    """

    thresholds: np.ndarray
    levels: np.ndarray
    grid: str
    bits: int
    alpha: float
    half_range: bool


def grid_cells(alpha, *, bits, grid, half_range=False) -> GridCells:
    """Thresholds and levels of a grid for one clipping value ``alpha`` (absolute units).

    Examples
    --------
    >>> g = grid_cells(1.0, bits=2, grid="gemmlowp")
    >>> g.levels * 3 / 2, g.thresholds * 3 / 2  # steps of s = 2/3: zero is a level
    (array([-2., -1.,  0.,  1.]), array([-1.5, -0.5,  0.5]))
    >>> grid_cells(1.0, bits=2, grid="midrise").levels
    array([-0.75, -0.25,  0.25,  0.75])
    >>> grid_cells(3.0, bits=2, grid="symmetric").levels
    array([-3.,  0.,  3.])
    """
    grid = _check_grid(grid)
    alpha = check_positive(alpha, "alpha")
    if alpha.ndim != 0:
        raise ValueError(f"alpha must be a scalar here, got {alpha!r}")
    half_range = bool(half_range)
    m = _scalar_bits(bits, grid, half_range)
    thresholds, levels = _unit_grid(m, grid, half_range)
    a = float(alpha)
    return GridCells(thresholds=thresholds * a, levels=levels * a, grid=grid, bits=m, alpha=a,
                     half_range=half_range)


def quantize(x, *, alpha, bits, grid, half_range=False):
    """Map ``x`` to its reconstruction exactly as the integer quantizer does (numpy reference).

    Clip, scale, round half to even (``np.rint``, like ``torch.round``), clamp the code, dequantize:

    * ``midrise``: :math:`(\\operatorname{clamp}(\\lfloor x/\\Delta \\rfloor, -2^{M-1}, 2^{M-1}-1)
      + \\tfrac12)\\Delta`, :math:`\\Delta = 2\\alpha/2^M`; half range: 0 for ``x <= 0``, else the
      same with :math:`\\Delta = \\alpha/2^M` and codes :math:`0..2^M-1`.
    * ``gemmlowp``: :math:`(\\operatorname{clamp}(\\operatorname{round}(x/s) + z, 0, 2^M-1) - z)\\,s`.
    * ``symmetric``: :math:`\\operatorname{clamp}(\\operatorname{round}(x/s), -K, K)\\,s`.
    * ``midtread``: :math:`\\operatorname{round}(\\operatorname{clip}(x, -\\alpha, \\alpha)/Q)\\,Q`.

    With ``half_range`` the input is first replaced by ``max(x, 0)``. See the module docstring for
    the grids' constants; :func:`exact_mse` is the expectation of ``(x - quantize(x))**2``.

    Examples
    --------
    >>> quantize(np.array([-2.0, -0.1, 0.0, 0.3, 0.9]), alpha=1.0, bits=2, grid="gemmlowp")  # s = 2/3
    array([-1.33333333,  0.        ,  0.        ,  0.        ,  0.66666667])
    >>> quantize(np.array([-0.2, 0.0, 0.1]), alpha=1.0, bits=1, grid="midrise", half_range=True)
    array([0.  , 0.  , 0.25])
    """
    grid = _check_grid(grid)
    x = check_data(x, "x")
    alpha = check_positive(alpha, "alpha")
    half_range = bool(half_range)
    m = _scalar_bits(bits, grid, half_range)
    n = 1 << m
    if half_range:
        x = np.maximum(x, 0.0)
        if grid == "midrise":
            delta = alpha / n
            k = np.clip(np.floor(x / delta), 0, n - 1)
            return np.where(x > 0, (k + 0.5) * delta, 0.0)
        if grid == "midtread":
            step = alpha / n
            return np.rint(np.clip(x, 0.0, alpha) / step) * step
        step = alpha / (n - 1)  # gemmlowp with lo = 0 (z = 0) == unsigned symmetric
        return np.clip(np.rint(x / step), 0, n - 1) * step
    if grid == "midrise":
        delta = 2.0 * alpha / n
        k = np.clip(np.floor(x / delta), -(n // 2), n // 2 - 1)
        return (k + 0.5) * delta
    if grid == "gemmlowp":
        qmax = n - 1
        step = 2.0 * alpha / qmax
        z = np.rint(qmax / 2.0)  # -lo/s, exactly
        return (np.clip(np.rint(x / step + z), 0, qmax) - z) * step
    if grid == "symmetric":
        kmax = n // 2 - 1
        step = alpha / kmax
        return np.clip(np.rint(x / step), -kmax, kmax) * step
    step = 2.0 * alpha / n  # midtread
    return np.rint(np.clip(x, -alpha, alpha) / step) * step


# --------------------------------------------------------------------------- exact error
def _unit_mse(t, m, grid, half_range, prior):
    """Exact MSE of the unit prior at clipping values t (1-D array), one bit-width."""
    thresholds, levels = _unit_grid(m, grid, half_range)
    lo = np.concatenate([[0.0 if half_range else -np.inf], thresholds])
    hi = np.concatenate([thresholds, [np.inf]])
    # half range: the input max(X, 0) of every X <= 0 is 0 and levels[0] == 0, so the cell below 0
    # contributes nothing and the first cell starts at 0
    t = np.asarray(t, dtype=np.float64).ravel()
    out = np.empty(t.size)
    step = max(1, _CHUNK // levels.size)
    for start in range(0, t.size, step):
        tc = t[start:start + step, None]
        cells = _unit_cell_error(lo * tc, hi * tc, levels * tc, prior)
        out[start:start + step] = cells.sum(axis=1)
    return out


def exact_mse(alpha, *, prior, bits, grid, scale=1.0, half_range=False):
    """Exact mean squared error :math:`E[(X - Q(X))^2]` of a grid at clipping value ``alpha``.

    .. math::

        \\mathrm{MSE}(\\alpha) = \\sum_i \\int_{t_{i-1}}^{t_i} (x - l_i)^2 f(x)\\,dx

    summed over every cell of :func:`grid_cells` with the stable closed-form cell integrals of
    :func:`aciq.theory.priors.cell_error`; half range: the error of quantizing :math:`\\max(X, 0)`.
    Compare the paper's model, eq. 5, :math:`2\\int_\\alpha^\\infty(x-\\alpha)^2f + \\alpha^2/(3\\cdot4^M)`
    (:func:`aciq.theory.clipping.model_mse`), which is exact only for a flat density inside the cells.

    Parameters
    ----------
    alpha : array_like
        Clipping value(s) > 0, absolute units; any shape.
    prior : {"laplace", "gauss"}
    bits : array_like
        Integer bit-width(s), 1..16 (2..16 for the signed ``symmetric`` grid).
    grid : {"midrise", "gemmlowp", "symmetric", "midtread"}
    scale : array_like
        Laplace ``b`` or Gaussian ``sigma``, > 0.
    half_range : bool

    Returns
    -------
    float or ndarray
        Broadcast over ``alpha``, ``bits`` and ``scale``, in absolute units (scale squared).

    Examples
    --------
    >>> round(exact_mse(2.830683, prior="laplace", bits=2, grid="midrise"), 5)  # the model says 0.28488
    0.39805
    >>> np.round(exact_mse([2.0, 3.0], prior="gauss", bits=3, grid="symmetric"), 5)
    array([0.04699, 0.08357])
    """
    prior = check_prior(prior)
    grid = _check_grid(grid)
    half_range = bool(half_range)
    alpha = check_positive(alpha, "alpha")
    bits = _check_int_bits(bits, grid, half_range)
    scale = check_scale(scale)
    alpha, bits, scale = np.broadcast_arrays(alpha, bits, scale)
    unit_t = alpha / scale
    out = np.empty(alpha.shape)
    for m in np.unique(bits):
        sel = bits == m
        out[sel] = _unit_mse(unit_t[sel], int(m), grid, half_range, prior) * scale[sel] ** 2
    return scalar_or_array(out)


# --------------------------------------------------------------------------- the grid's own optimum
def _unit_dmse(t, m, grid, half_range, prior):
    """d MSE / d alpha of the unit prior at one clipping value t (see :func:`optimal_alpha_exact`)."""
    thresholds, levels = _unit_grid(m, grid, half_range)
    lo = np.concatenate([[0.0 if half_range else -np.inf], thresholds])
    hi = np.concatenate([thresholds, [np.inf]])
    return float(-2.0 * np.sum(levels * _unit_cell_first(lo * t, hi * t, levels * t, prior)))


def _scan(fun, ref):
    """A log-spaced scan of ``fun(ts) -> values`` around ``ref``, widened while the best point is on its edge.
    Returns ``(ts, values, index of the best)``."""
    ts = ref * _SCAN
    vals = fun(ts)
    for _ in range(8):
        i = int(np.argmin(vals))
        if 0 < i < ts.size - 1:
            break
        new = ts[0] * _SCAN[:-1] / 32.0 if i == 0 else ts[-1] * _SCAN[1:] * 8.0
        ts = np.sort(np.concatenate([ts, new]))
        vals = fun(ts)
    return ts, vals, int(np.argmin(vals))


def _scan_minimum(fun, ref):
    """Global minimum of a unit-scale error ``fun(ts) -> values`` (vectorised over alphas ``ts``): the scan of
    :func:`_scan`, then bounded Brent between the best point's neighbours. Returns ``(alpha, error,
    converged)``."""
    ts, vals, i = _scan(fun, ref)
    edge = i in (0, ts.size - 1)
    lo, hi = ts[max(i - 1, 0)], ts[min(i + 1, ts.size - 1)]
    res = minimize_scalar(lambda t: float(fun(np.array([t]))[0]), bounds=(lo, hi), method="bounded",
                          options={"xatol": _XATOL * ref, "maxiter": 200})
    if res.fun <= vals[i]:
        return float(res.x), float(res.fun), bool(res.success) and not edge
    return float(ts[i]), float(vals[i]), False


def _unit_optimum(prior, m, grid, half_range):
    """Global minimum of the unit-scale exact MSE: the scan of :func:`_scan` around the model's alpha, then
    Brent's root-finder on d MSE / d alpha between the best point's neighbours. Returns (t, mse, converged)."""
    ref = float(optimal_alpha(prior=prior, bits=m, half_range=half_range).alpha)
    ts, vals, i = _scan(lambda t: _unit_mse(t, m, grid, half_range, prior), ref)
    if i in (0, ts.size - 1):  # no interior minimum found: report the best point, not converged
        return float(ts[i]), float(vals[i]), False
    lo, hi = ts[i - 1], ts[i + 1]
    g_lo, g_hi = _unit_dmse(lo, m, grid, half_range, prior), _unit_dmse(hi, m, grid, half_range, prior)
    if not g_lo < 0.0 < g_hi:  # the derivative does not change sign between the neighbours
        return float(ts[i]), float(vals[i]), False
    t, info = brentq(_unit_dmse, lo, hi, args=(m, grid, half_range, prior), xtol=_XTOL * ref, rtol=_RTOL,
                     maxiter=200, full_output=True, disp=False)
    mse = float(_unit_mse([t], m, grid, half_range, prior)[0])
    if mse > vals[i]:  # a root that is not the scan's minimum (cannot happen for a smooth MSE)
        return float(ts[i]), float(vals[i]), False
    return float(t), mse, bool(info.converged)


def optimal_alpha_exact(*, prior, bits, grid, scale=1.0, half_range=False) -> ClippingResult:
    """The clipping value that minimises a real grid's exact MSE (:func:`exact_mse`), and that MSE.

    .. math::

        \\alpha^*_\\text{grid} = \\arg\\min_\\alpha \\sum_i \\int_{t_{i-1}(\\alpha)}^{t_i(\\alpha)}
        (x - l_i(\\alpha))^2 f(x)\\,dx

    Solved on the unit-scale problem (:math:`\\alpha^*(kb) = k\\,\\alpha^*(b)`): a log-spaced scan of
    49 points over :math:`[\\alpha_\\text{model}/8, 4\\alpha_\\text{model}]` (widened if the best
    point is on its edge) finds the basin of the global minimum, then Brent's root-finder solves
    :math:`d\\mathrm{MSE}/d\\alpha = 0` between the best point's neighbours. With thresholds
    :math:`t_i = \\alpha\\tau_i` and levels :math:`l_i = \\alpha\\lambda_i`, the terms of Leibniz's rule
    at every threshold cancel (each threshold is the midpoint of its two levels, or 0), leaving

    .. math::

        \\frac{d\\,\\mathrm{MSE}}{d\\alpha} = -2\\sum_i \\lambda_i \\int_{t_{i-1}}^{t_i} (x - l_i) f(x)\\,dx ,

    evaluated with the stable cell integrals of :mod:`aciq.theory.priors`. Minimising the MSE itself
    stalls at about :math:`\\sqrt{\\epsilon} \\approx 10^{-8}` relative (the MSE is flat at its minimum);
    the root of the derivative is accurate to about 1e-14 relative for 1..8 bits (checked against
    40-digit quadrature). ``converged`` is False if the minimum is on the edge of the scan, the
    derivative does not change sign around it, or Brent did not converge.

    Parameters
    ----------
    prior : {"laplace", "gauss"}
    bits : array_like
        Integer bit-width(s), 1..16 (2..16 for the signed ``symmetric`` grid).
    grid : {"midrise", "gemmlowp", "symmetric", "midtread"}
    scale : array_like
        Laplace ``b`` or Gaussian ``sigma``, > 0; broadcast against ``bits``.
    half_range : bool

    Returns
    -------
    ClippingResult
        ``alpha`` and ``mse`` (exact, absolute units) as floats, or arrays of the broadcast shape.

    Examples
    --------
    >>> res = optimal_alpha_exact(prior="laplace", bits=2, grid="midrise")
    >>> round(res.alpha, 3), round(res.mse, 5), res.converged  # the model's alpha is 2.831
    (3.076, 0.3926, True)
    >>> round(optimal_alpha_exact(prior="gauss", bits=4, grid="gemmlowp", scale=2.0).alpha, 3)
    5.079
    """
    prior = check_prior(prior)
    grid = _check_grid(grid)
    half_range = bool(half_range)
    bits = _check_int_bits(bits, grid, half_range)
    scale = check_scale(scale)
    bits, scale = np.broadcast_arrays(bits, scale)
    unit = {int(m): _unit_optimum(prior, int(m), grid, half_range) for m in np.unique(bits)}
    t = np.vectorize(lambda m: unit[int(m)][0], otypes=[float])(bits)
    mse = np.vectorize(lambda m: unit[int(m)][1], otypes=[float])(bits)
    converged = all(v[2] for v in unit.values())
    return ClippingResult(alpha=scalar_or_array(t * scale), mse=scalar_or_array(mse * scale**2),
                          converged=converged, prior=prior, grid=grid, half_range=half_range)


# --------------------------------------------------------------------------- analytic vs exact
@dataclass(frozen=True)
class AnalyticGap:
    """The paper's analytic alpha on a real grid vs that grid's own optimum (unit-scale prior).

    ``analytic_alpha``: the model's optimum (:func:`aciq.theory.clipping.optimal_alpha`);
    ``model_mse``: what the model predicts there; ``analytic_mse``: the grid's exact MSE there;
    ``optimal_alpha``, ``optimal_mse``: the grid's own exact optimum; ``alpha_gap_rel`` =
    analytic/optimal - 1 (alpha); ``mse_gap_rel`` = analytic_mse/optimal_mse - 1 (>= 0);
    ``mse_gap_db`` = 10 log10(analytic_mse/optimal_mse), the SQNR lost by using the analytic alpha.
    """

    prior: str
    grid: str
    bits: int
    half_range: bool
    analytic_alpha: float
    model_mse: float
    analytic_mse: float
    optimal_alpha: float
    optimal_mse: float
    alpha_gap_rel: float
    mse_gap_rel: float
    mse_gap_db: float


def analytic_gap(*, prior, bits, grid, half_range=False) -> AnalyticGap:
    """How much the analytic (model) alpha loses on a real grid, unit-scale prior.

    .. math::

        \\frac{\\mathrm{MSE}_\\text{grid}(\\alpha_\\text{model})}{\\min_\\alpha \\mathrm{MSE}_\\text{grid}(\\alpha)} - 1

    Examples
    --------
    >>> gap = analytic_gap(prior="laplace", bits=2, grid="midrise")
    >>> round(gap.analytic_alpha, 3), round(gap.optimal_alpha, 3), round(100 * gap.mse_gap_rel, 2)
    (2.831, 3.076, 1.39)
    """
    prior = check_prior(prior)
    grid = _check_grid(grid)
    half_range = bool(half_range)
    m = _scalar_bits(bits, grid, half_range)
    model = optimal_alpha(prior=prior, bits=m, half_range=half_range)
    a = float(model.alpha)
    exact_at_a = float(_unit_mse([a], m, grid, half_range, prior)[0])
    t, best, _ = _unit_optimum(prior, m, grid, half_range)
    ratio = exact_at_a / best
    return AnalyticGap(prior=prior, grid=grid, bits=m, half_range=half_range, analytic_alpha=a,
                       model_mse=float(model.mse), analytic_mse=exact_at_a, optimal_alpha=t, optimal_mse=best,
                       alpha_gap_rel=a / t - 1.0, mse_gap_rel=max(ratio - 1.0, 0.0),
                       mse_gap_db=10.0 * np.log10(max(ratio, 1.0)))
