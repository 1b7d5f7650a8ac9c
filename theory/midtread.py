r"""Mid-tread quantizers with any integer number of bins per channel, and eq. 10's bin allocation.

The seed's ``-mtq`` path gives channel :math:`i` a number of bins :math:`\omega_i` that need not be a power of
two: eq. 10, :math:`\omega_i = B\,\sigma_i^{2/3} / \sum_j \sigma_j^{2/3}` with :math:`B = C\,2^{\bar M}` the
bins budget, rounded to integers (``IQ:128-135, 187``), then quantizes with step :math:`\Delta_i =
\text{range}_i/\omega_i`. Its clipping value comes from the paper's model with a real number of bins,
:math:`\min_\alpha\ \text{clip}(\alpha) + \alpha^2/(3\omega^2)` (``laplace_prior_mse``, ``IQ:34-51``).

The grid here (``bins`` :math:`\omega \ge 0`, clipping value :math:`\alpha`):

* symmetric: :math:`\omega + 1` levels :math:`-\alpha + k\Delta`, :math:`\Delta = 2\alpha/\omega`,
  :math:`k = 0..\omega`: :math:`\omega` bins of width :math:`\Delta` between the two window ends, both of
  which are levels; 0 is a level when :math:`\omega` is even. For :math:`\omega = 2^M` it is the ``midtread``
  grid of :mod:`aciq.theory.grids` (the seed's ``MSE.py`` simulation quantizer). For odd :math:`\omega` the
  seed clamps its zero-anchored codes to :math:`\pm\omega/2`, which are not integers (its bug (t)); here the
  levels stay evenly spaced and every code is an integer :math:`0..\omega`.
* half range (the input is :math:`\max(X, 0)`): levels :math:`k\Delta`, :math:`\Delta = \alpha/\omega`,
  :math:`k = 0..\omega`.
* :math:`\omega = 0`: the single level 0, the mean of the zero-mean prior (the seed reconstructs a 0-bin
  channel by its mean).

:func:`midtread_mse` is the exact error of this grid (closed-form cell integrals, as
:func:`aciq.theory.grids.exact_mse`); :func:`optimal_alpha_bins` its optimum, under the paper's model with real
:math:`\omega` (the seed's table) or exactly for integer :math:`\omega`; :func:`allocate_bins` the per-channel
bins: eq. 10 (continuous), the seed's rounding, and the integer optimum within the budget.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._common import ClippingResult, check_nonnegative, check_positive, check_prior, check_scale, scalar_or_array
from .allocation import allocate_bins_continuous
from .clipping import _log_c
from .clipping import _unit_optimum as _model_unit_optimum
from .grids import _scan_minimum
from .priors import _unit_cell_error, variance

__all__ = ["OBJECTIVES", "midtread_mse", "optimal_alpha_bins", "BinAllocation", "allocate_bins"]

OBJECTIVES = ("model", "exact")
"""Per-channel error that :func:`allocate_bins` minimises: the paper's model at its optimum alpha, or the exact
error of the mid-tread grid at its own optimum alpha."""

_MAX_BINS = 1 << 16
_DP_WORK = 1 << 31     # channels x budget x bins of the exact-error programme (about 25 s of numpy)
_CHUNK = 1 << 18


# --------------------------------------------------------------------------- validation
def _check_bins(bins, name: str = "bins", *, integer: bool = True) -> np.ndarray:
    arr = check_nonnegative(bins, name)
    if np.any(arr > _MAX_BINS):
        raise ValueError(f"{name} must be <= {_MAX_BINS}, got {bins!r}")
    if integer and np.any(arr != np.round(arr)):
        raise ValueError(f"{name} must be integers (the grid has bins + 1 levels), got {bins!r}")
    return arr


def _check_choice(value, name, allowed):
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value.lower()


# --------------------------------------------------------------------------- the grid and its exact error
def _unit_cells(w: int, half_range: bool):
    """(lo, hi, levels) of the cells for alpha = 1 and w bins; half range starts at 0 (max(X, 0) input)."""
    if w == 0:
        levels = np.zeros(1)
    elif half_range:
        levels = np.arange(w + 1) / w
    else:
        levels = -1.0 + 2.0 * np.arange(w + 1) / w
    thresholds = 0.5 * (levels[:-1] + levels[1:])
    lo = np.concatenate([[0.0 if half_range else -np.inf], thresholds])
    hi = np.concatenate([thresholds, [np.inf]])
    return lo, hi, levels


def _unit_mse(t, w: int, half_range: bool, prior: str) -> np.ndarray:
    """Exact error of the unit prior at clipping values t (1-D), one number of bins."""
    lo, hi, levels = _unit_cells(w, half_range)
    t = np.asarray(t, dtype=np.float64).ravel()
    out = np.empty(t.size)
    step = max(1, _CHUNK // levels.size)
    for start in range(0, t.size, step):
        tc = t[start:start + step, None]
        out[start:start + step] = _unit_cell_error(lo * tc, hi * tc, levels * tc, prior).sum(axis=1)
    return out


def _unit_variance(prior: str, half_range: bool) -> float:
    """E[X^2] of the unit prior, or E[max(X, 0)^2]: the error of the single level 0."""
    v = float(variance(prior=prior))
    return 0.5 * v if half_range else v


def midtread_mse(alpha, *, prior, bins, scale=1.0, half_range=False):
    r"""Exact mean squared error of the mid-tread grid with ``bins`` bins at clipping value ``alpha``.

    .. math::

        \mathrm{MSE} = \sum_{k=0}^{\omega} \int_{t_{k-1}}^{t_k} (x - l_k)^2 f(x)\,dx, \qquad
        l_k = -\alpha + k\frac{2\alpha}{\omega},\quad t_k = \frac{l_k + l_{k+1}}{2}

    (half range: the error of quantizing :math:`\max(X, 0)` on :math:`l_k = k\alpha/\omega`); 0 bins: the
    second moment. Broadcast over ``alpha``, ``bins`` and ``scale`` (one value per channel).

    Parameters
    ----------
    alpha : array_like
        Clipping value(s) > 0, absolute units.
    prior : {"laplace", "gauss"}
    bins : array_like
        Integer numbers of bins :math:`\omega \ge 0` (:math:`\omega + 1` levels).
    scale : array_like
        Laplace ``b`` or Gaussian ``sigma``, > 0.
    half_range : bool

    Examples
    --------
    >>> from aciq.theory import exact_mse
    >>> round(midtread_mse(3.0, prior="laplace", bins=4), 6) == round(exact_mse(3.0, prior="laplace", bits=2,
    ...                                                                          grid="midtread"), 6)
    True
    >>> np.round(midtread_mse(2.0, prior="gauss", bins=[0, 1, 5, 6]), 5)   # any number of bins
    array([1.     , 1.80846, 0.06265, 0.04699])
    """
    prior = check_prior(prior)
    half_range = bool(half_range)
    alpha = check_positive(alpha, "alpha")
    bins = _check_bins(bins).astype(np.int64)
    scale = check_scale(scale)
    alpha, bins, scale = np.broadcast_arrays(alpha, bins, scale)
    out = np.empty(alpha.shape)
    unit_t = alpha / scale
    for w in np.unique(bins):
        sel = bins == w
        out[sel] = _unit_mse(unit_t[sel], int(w), half_range, prior) * scale[sel] ** 2
    return scalar_or_array(out)


# --------------------------------------------------------------------------- optimal alpha for w bins
def _model_optimum(prior: str, bins: np.ndarray, half_range: bool):
    """The paper's model with a real number of bins w >= 1 (2^M = w): unit alpha and unit model error."""
    log_c = _log_c(np.log2(bins), half_range).ravel()
    t, unit, ok = _model_unit_optimum(prior, log_c)
    return t.reshape(bins.shape), (0.5 * unit if half_range else unit).reshape(bins.shape), ok


def _exact_optimum(prior: str, w: int, half_range: bool):
    ref = float(_model_optimum(prior, np.array([float(w)]), half_range)[0][0])
    return _scan_minimum(lambda ts: _unit_mse(ts, w, half_range, prior), ref)


def optimal_alpha_bins(*, prior, bins, scale=1.0, half_range=False, exact=False) -> ClippingResult:
    r"""The clipping value for ``bins`` bins: the paper's model with real :math:`\omega`, or the exact optimum.

    ``exact=False`` (the seed's ``get_alpha_mult`` table, solved rather than interpolated): the root of the
    model with :math:`\omega` in place of :math:`2^M`,

    .. math::

        \alpha^* = \arg\min_\alpha\ 2\int_\alpha^\infty (x-\alpha)^2 f(x)\,dx + \frac{\alpha^2}{3\omega^2}
        \qquad (\omega \ge 1 \text{ real; half range: } \tfrac12 \text{ of each term, } \omega \to 2\omega),

    and ``mse`` is the model's value there. ``exact=True``: the minimum of :func:`midtread_mse` over
    :math:`\alpha` for integer :math:`\omega \ge 1` (log scan, then bounded Brent, as
    :func:`aciq.theory.grids.optimal_alpha_exact`), and ``mse`` the exact error there.

    Examples
    --------
    >>> round(optimal_alpha_bins(prior="laplace", bins=16).alpha, 5)   # 2^4 bins: the paper's 5.03 b
    5.02864
    >>> np.round(optimal_alpha_bins(prior="laplace", bins=[1, 3, 5]).alpha, 3)   # the seed's real-bins table
    array([1.05 , 2.414, 3.165])
    >>> res = optimal_alpha_bins(prior="gauss", bins=6, exact=True)
    >>> round(res.alpha, 4), round(res.mse, 5), res.converged
    (1.9523, 0.04686, True)
    """
    prior = check_prior(prior)
    half_range = bool(half_range)
    bins = _check_bins(bins, integer=bool(exact))
    if np.any(bins < 1):
        raise ValueError(f"bins must be >= 1 for a clipping value (0 bins keep only the mean), got {bins!r}")
    scale = check_scale(scale)
    bins, scale = np.broadcast_arrays(bins, scale)
    if not exact:
        t, unit, ok = _model_optimum(prior, bins.astype(np.float64), half_range)
        grid = "model"
    else:
        sol = {int(w): _exact_optimum(prior, int(w), half_range) for w in np.unique(bins)}
        t = np.vectorize(lambda w: sol[int(w)][0], otypes=[float])(bins)
        unit = np.vectorize(lambda w: sol[int(w)][1], otypes=[float])(bins)
        ok = all(v[2] for v in sol.values())
        grid = "midtread"
    return ClippingResult(alpha=scalar_or_array(t * scale), mse=scalar_or_array(unit * scale ** 2),
                          converged=bool(ok), prior=prior, grid=grid, half_range=half_range)


# --------------------------------------------------------------------------- bin allocation
def _unit_table(prior: str, top: int, half_range: bool, objective: str):
    """Unit-scale optimal error f(w) and its alpha for w = 0..top under ``objective`` (f(0): the variance)."""
    f, t = np.empty(top + 1), np.zeros(top + 1)
    f[0] = _unit_variance(prior, half_range)
    if top == 0:
        return f, t
    w = np.arange(1, top + 1, dtype=np.float64)
    if objective == "model":
        t[1:], f[1:], _ = _model_optimum(prior, w, half_range)
    else:
        for i in range(1, top + 1):
            t[i], f[i], _ = _exact_optimum(prior, i, half_range)
    return f, t


@dataclass(frozen=True)
class BinAllocation:
    """Bins per channel by eq. 10 (continuous), the seed's rounding, and the integer optimum, with their errors.

    Attributes
    ----------
    scales : numpy.ndarray
        Per-channel prior scale (Laplace b or Gauss sigma) the allocation was made for.
    total_bins : float
        The budget :math:`B = C\\,2^{\\bar M}`.
    bins_continuous : numpy.ndarray
        Eq. 10 with :math:`\\alpha_i \\propto` scale (capped at ``max_bins``, water-filled).
    bins_paper : numpy.ndarray
        The seed's integers: eq. 10 rounded to nearest (ties to even), clamped to ``0..max_bins``; may exceed
        the budget.
    bins : numpy.ndarray
        The integer optimum of ``objective`` with :math:`\\sum_i \\omega_i \\le B`.
    alpha : numpy.ndarray
        The clipping value of each channel for ``bins`` (absolute units; 0 for a 0-bin channel).
    mse_model, mse_exact : dict
        Total error of ``bins_paper`` and ``bins``: the paper's model at its optimum alpha for each channel's
        bins, and the exact error of the grid at the alpha of ``objective``.
    bins_used : dict
        :math:`\\sum_i \\omega_i` of each allocation.
    """

    scales: np.ndarray
    total_bins: float
    max_bins: int
    prior: str
    half_range: bool
    objective: str
    bins_continuous: np.ndarray
    bins_paper: np.ndarray
    bins: np.ndarray
    alpha: np.ndarray
    mse_model: dict = field(default_factory=dict)
    mse_exact: dict = field(default_factory=dict)
    bins_used: dict = field(default_factory=dict)


def _greedy(scales2: np.ndarray, f: np.ndarray, capacity: int) -> np.ndarray:
    """Integer w_i in 0..len(f)-1 minimising sum_i s_i^2 f(w_i) with sum w_i <= capacity, for f convex and
    decreasing: the capacity largest steps s_i^2 (f(w) - f(w+1)) (non-increasing in w along each channel, so
    the largest ones form a prefix per channel). Ties go to the lower channel, then the lower step."""
    gains = scales2[:, None] * (f[:-1] - f[1:])[None, :]
    c, steps = gains.shape
    k = min(max(capacity, 0), gains.size)
    bins = np.zeros(c, np.int64)
    if k:
        chan, step = np.divmod(np.arange(gains.size), steps)
        order = np.lexsort((step, chan, -gains.ravel()))[:k]
        order = order[gains.ravel()[order] > 0]      # a step that gains nothing is not taken
        np.add.at(bins, chan[order], 1)
    return bins


def _programme(scales2: np.ndarray, f: np.ndarray, capacity: int) -> np.ndarray:
    r"""The same problem for any f (the exact error of a mid-tread grid is not convex: an even number of bins
    has a level at 0, an odd one does not): dynamic programming over channels and bins spent,
    :math:`D_i(b) = \min_w D_{i-1}(b - w) + s_i^2 f(w)`, :math:`O(C\,B\,W)`. Ties go to fewer bins."""
    c, top = scales2.size, f.size - 1
    cap = max(int(capacity), 0)
    if c * (cap + 1) * (top + 1) > _DP_WORK:
        raise ValueError(f"the exact-error allocation of {c} channels and {cap} bins (up to {top} each) is too "
                         "large for the dynamic programme: use objective='model', or fewer bins per channel")
    spent = np.arange(cap + 1)[:, None] - np.arange(top + 1)[None, :]     # b - w
    valid = spent >= 0
    spent = np.maximum(spent, 0)
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((c, cap + 1), np.int32)
    rows = np.arange(cap + 1)
    for i in range(c):
        cand = np.where(valid, best[spent], np.inf) + scales2[i] * f[None, :]
        choice[i] = np.argmin(cand, axis=1)
        best = cand[rows, choice[i]]
    b = int(np.argmin(best))
    bins = np.zeros(c, np.int64)
    for i in range(c - 1, -1, -1):
        bins[i] = choice[i, b]
        b -= bins[i]
    return bins


def allocate_bins(scales, *, avg_bits, prior, half_range=False, max_bins=255, objective="model") -> BinAllocation:
    r"""Per-channel numbers of bins under the bins budget :math:`\sum_i \omega_i \le B = C\,2^{\bar M}`.

    Channel :math:`i` with scale :math:`s_i` and :math:`\omega_i` bins, clipped at the optimum for
    :math:`\omega_i`, has error :math:`s_i^2 f(\omega_i)` (scale invariance), :math:`f` the unit-scale optimum
    of ``objective`` (``model``: the paper's model with :math:`\omega` bins; ``exact``: the exact error of the
    mid-tread grid) and :math:`f(0)` the second moment. The integer optimum of
    :math:`\sum_i s_i^2 f(\omega_i)` is separable with unit costs. Where :math:`f` is convex (the model), the
    :math:`\lfloor B\rfloor` largest marginal gains :math:`s_i^2(f(\omega) - f(\omega + 1))` give it exactly;
    the exact error is not convex (an even :math:`\omega` has a level at 0, an odd one does not), and a dynamic
    programme over channels and bins spent solves it exactly (:math:`O(C\,B\,\omega_{max})`). Eq. 10 (:math:`\omega_i \propto \alpha_i^{2/3}`, with
    :math:`\alpha_i \propto s_i`) is the continuous optimum of the noise term alone; the seed rounds it.

    Parameters
    ----------
    scales : array_like
        Per-channel Laplace b or Gauss sigma, >= 0 (0: a constant channel, 0 bins, no error).
    avg_bits : float
        :math:`\bar M`: the budget is :math:`C\,2^{\bar M}` bins (fractional allowed, as the seed's ``-bata``).
    prior : {"laplace", "gauss"}
    half_range : bool
    max_bins : int
        Largest :math:`\omega` of one channel (255: codes 0..255, one byte).
    objective : {"model", "exact"}

    Examples
    --------
    >>> res = allocate_bins([1.0, 2.0, 4.0, 8.0], avg_bits=3, prior="laplace")   # 32 bins
    >>> res.bins_paper.tolist(), res.bins.tolist(), res.bins_used["bins"]
    ([4, 6, 9, 14], [2, 5, 9, 16], 32.0)
    >>> res.mse_model["bins"] <= res.mse_model["bins_paper"]
    True
    """
    prior = check_prior(prior)
    objective = _check_choice(objective, "objective", OBJECTIVES)
    half_range = bool(half_range)
    s = check_nonnegative(scales, "scales")
    if s.ndim != 1:
        raise ValueError(f"scales must be one value per channel (1-D), got shape {s.shape}")
    if isinstance(max_bins, bool) or not isinstance(max_bins, (int, np.integer)) or not 1 <= max_bins <= 4096:
        raise ValueError(f"max_bins must be an integer in 1..4096, got {max_bins!r}")
    avg = float(check_nonnegative(avg_bits, "avg_bits"))
    if avg > np.log2(max_bins):
        raise ValueError(f"avg_bits must be <= log2(max_bins) = {np.log2(max_bins):.3g}, got {avg_bits!r}")
    total = s.size * 2.0 ** avg
    active = s > 0
    cont = allocate_bins_continuous(s, total_bins=total, max_bins=max_bins) if active.any() else np.zeros_like(s)
    paper = np.clip(np.round(allocate_bins_continuous(s, total_bins=total) if active.any() else cont),
                    0, max_bins).astype(np.int64)
    f, t = _unit_table(prior, max_bins, half_range, objective)
    capacity = int(np.floor(total + 1e-9))
    convex = bool(np.all(np.diff(f, 2) >= -1e-12 * f[0]))
    bins = _greedy(s ** 2, f, capacity) if convex else _programme(s ** 2, f, capacity)
    f_model, t_model = (f, t) if objective == "model" else _unit_table(prior, max_bins, half_range, "model")

    def exact_total(w):
        err = np.where(active, s ** 2, 0.0) * f[0]
        live = active & (w > 0)
        if live.any():
            err[live] = midtread_mse(t[w[live]] * s[live], prior=prior, bins=w[live], scale=s[live],
                                     half_range=half_range)
        return float(err.sum())

    mse_model = {"bins_paper": float(np.sum(s ** 2 * f_model[paper])),
                 "bins": float(np.sum(s ** 2 * f_model[bins]))}
    return BinAllocation(
        scales=s, total_bins=total, max_bins=int(max_bins), prior=prior, half_range=half_range, objective=objective,
        bins_continuous=cont, bins_paper=paper, bins=bins, alpha=np.where(bins > 0, t[bins] * s, 0.0),
        mse_model=mse_model, mse_exact={"bins_paper": exact_total(paper), "bins": exact_total(bins)},
        bins_used={"bins_continuous": float(cont.sum()), "bins_paper": float(paper.sum()),
                   "bins": float(bins.sum())},
    )
