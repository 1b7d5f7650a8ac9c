r"""Per-channel bin and bit allocation under a budget (the paper's eq. 10 and 11).

Channels :math:`i = 1..C` have ranges :math:`\alpha_i \ge 0`. Quantizing channel :math:`i` with
:math:`B_i = 2^{M_i}` equal bins over :math:`[-\alpha_i, \alpha_i]` adds the noise of eq. 5,

.. math::

    \mathrm{MSE}_i = \frac{\Delta_i^2}{12} = \frac{\alpha_i^2}{3 B_i^2} = \frac{\alpha_i^2}{3\cdot 4^{M_i}},

and the allocations below minimise :math:`\sum_i \mathrm{MSE}_i` under one of two budgets:

* ``"bins"``: the total number of bins is fixed, :math:`\sum_i B_i \le B = C\,2^{\bar M}` (eq. 10);
* ``"bits"``: the total number of bits is fixed, :math:`\sum_i M_i \le C\,\bar M`.

A channel with :math:`\alpha_i = 0` is legal everywhere: it needs no bin and no bit (it is
reconstructed by its mean), contributes no error, uses none of the budget, and the budget is shared
by the other channels. ``avg_bits`` :math:`\bar M` may be fractional and may be below one.

:func:`allocate` runs every rule on one set of ranges and returns an :class:`Allocation`; the
per-rule functions are public too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ._common import check_bits, check_nonnegative, check_positive

BUDGETS = ("bins", "bits")
"""``bins``: :math:`\\sum 2^{M_i} \\le C 2^{\\bar M}`; ``bits``: :math:`\\sum M_i \\le C \\bar M`."""

PAPER_MODES = ("round", "ceil")
"""How eq. 11 turns :math:`\\log_2 B_i` into an integer (the seed's ``-bam``)."""

_SLACK = 1e-9  # integer budgets are floor(budget + _SLACK): forgives float rounding of C * avg_bits


# --------------------------------------------------------------------------- validation
def _check_alphas(alphas) -> np.ndarray:
    arr = check_nonnegative(alphas, "alphas")
    if arr.ndim > 1:
        raise ValueError(f"alphas must be one value per channel (1-D), got shape {arr.shape}")
    return np.atleast_1d(arr)


def _log2_ratio(a: np.ndarray) -> np.ndarray:
    """log2(alpha_i / max alpha) of the positive ranges, without the underflow of the ratio itself."""
    return np.log2(a) - np.log2(a.max())


def _check_max_bits(max_bits) -> int:
    return int(check_bits(max_bits, "max_bits", low=1, high=32, integer=True))


def _check_avg_bits(avg_bits, max_bits: int) -> float:
    arr = check_bits(avg_bits, "avg_bits", low=0.0, high=float(max_bits))
    if arr.ndim != 0:
        raise ValueError(f"avg_bits must be a scalar, got {avg_bits!r}")
    return float(arr)


def _check_budget(budget) -> str:
    if not isinstance(budget, str) or budget.lower() not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    return budget.lower()


def _check_mode(mode) -> str:
    if not isinstance(mode, str) or mode.lower() not in PAPER_MODES:
        raise ValueError(f"mode must be one of {PAPER_MODES}, got {mode!r}")
    return mode.lower()


# --------------------------------------------------------------------------- error model
def allocation_mse(alphas, *, bins):
    r"""Model error of a per-channel allocation: the quantization-noise term of eq. 5, summed.

    .. math::

        \sum_i \frac{\alpha_i^2}{3 B_i^2}, \qquad B_i = 2^{M_i},

    where a channel with :math:`\alpha_i = 0` contributes 0 whatever its :math:`B_i` (even 0).

    Parameters
    ----------
    alphas : array_like
        Per-channel ranges :math:`\alpha_i \ge 0`.
    bins : array_like
        Per-channel bin counts :math:`B_i` (real-valued for eq. 10; ``2**bits`` for integer bits).

    Returns
    -------
    float

    Examples
    --------
    >>> round(allocation_mse([1.0, 2.0], bins=[2, 4]), 6)  # 1/12 + 4/48
    0.166667
    """
    a = _check_alphas(alphas)
    b = check_nonnegative(bins, "bins")
    a, b = np.broadcast_arrays(a, b)
    active = a > 0
    if np.any(b[active] == 0):
        raise ValueError("bins must be > 0 for every channel with alpha > 0")
    out = np.zeros_like(a)
    with np.errstate(over="ignore"):
        out[active] = (a[active] / b[active]) ** 2 / 3.0
        total = float(out.sum())
    if not np.isfinite(total):
        raise ValueError(f"alphas: the model error sum alpha_i^2/(3 B_i^2) overflows float64 (largest alpha "
                         f"{a.max():g}); rescale the ranges (the allocation does not depend on their unit)")
    return total


def _bits_mse(a: np.ndarray, bits: np.ndarray) -> float:
    return allocation_mse(a, bins=np.exp2(bits))


# --------------------------------------------------------------------------- eq. 10
def allocate_bins_continuous(alphas, *, total_bins, max_bins=None) -> np.ndarray:
    r"""Real-valued bins per channel minimising the model error for a fixed total (eq. 10).

    Minimise :math:`\sum_i \alpha_i^2/(3B_i^2)` subject to :math:`\sum_i B_i = B`. The Lagrangian
    :math:`\sum_i \alpha_i^2/(3B_i^2) + \lambda(\sum_i B_i - B)` is stationary where
    :math:`-2\alpha_i^2/(3B_i^3) + \lambda = 0`, i.e. :math:`B_i \propto \alpha_i^{2/3}`; the budget
    fixes the constant (the objective is convex in :math:`B_i > 0`, so this is the minimum):

    .. math::

        B_i^\star = \frac{\alpha_i^{2/3}}{\sum_j \alpha_j^{2/3}}\, B \qquad (10)

    With a cap :math:`B_i \le B_{\max}` (``max_bins``, e.g. :math:`2^8`) the KKT conditions give
    water-filling, :math:`B_i = \min(B_{\max}, \lambda\,\alpha_i^{2/3})` with :math:`\lambda` set by
    the budget; if even the cap cannot spend it (``total_bins > n * max_bins`` for the ``n``
    channels with :math:`\alpha_i > 0`) every such channel gets ``max_bins``. Channels with
    :math:`\alpha_i = 0` get 0 bins (all zero when every range is zero).

    Parameters
    ----------
    alphas : array_like
        Per-channel ranges, 1-D, :math:`\alpha_i \ge 0`.
    total_bins : float
        The budget :math:`B > 0`, e.g. :math:`C\,2^{\bar M}`.
    max_bins : float, optional
        Upper bound on every :math:`B_i` (None: unbounded, eq. 10 as written).

    Returns
    -------
    numpy.ndarray
        :math:`B_i`, same length as ``alphas``.

    Examples
    --------
    >>> allocate_bins_continuous([1.0, 8.0], total_bins=10).round(6)  # 8^(2/3) = 4 = 4 * 1^(2/3)
    array([2., 8.])
    >>> allocate_bins_continuous([1.0, 8.0], total_bins=10, max_bins=6).round(6)
    array([4., 6.])
    """
    a = _check_alphas(alphas)
    total = float(check_positive(total_bins, "total_bins"))
    cap = math.inf if max_bins is None else float(check_positive(max_bins, "max_bins"))
    out = np.zeros_like(a)
    active = np.flatnonzero(a > 0)
    if active.size == 0:
        return out
    weights = np.zeros_like(a)
    weights[active] = np.exp2(_log2_ratio(a[active]) * (2.0 / 3.0))  # alpha^(2/3), scaled to max 1
    _check_representable(a, weights, total)
    if total >= active.size * cap:
        out[active] = cap
        return out
    if weights[active].max() / weights[active].sum() * total <= cap:  # the cap does not bind
        out[active] = weights[active] / weights[active].sum() * total
        return out
    # Water-filling: the k largest weights are capped, the rest get lambda * weight.
    order = active[np.argsort(-weights[active], kind="stable")]
    w_sorted = weights[order]
    tail = np.cumsum(w_sorted[::-1])[::-1]  # sum of w_sorted[k:]
    for k in range(active.size):
        lam = (total - k * cap) / tail[k]
        if lam * w_sorted[k] <= cap:
            out[order[:k]] = cap
            out[order[k:]] = lam * w_sorted[k:]
            return out
    raise AssertionError("unreachable: total < n * cap guarantees a feasible split")  # pragma: no cover


def _check_representable(a, weights, total):
    """Eq. 10 gives every channel with alpha > 0 a normal float64 number of bins, or ValueError."""
    active = a > 0
    smallest = weights[active].min() / weights[active].sum() * total
    if not smallest >= np.finfo(float).tiny:
        i = int(np.flatnonzero(active)[np.argmin(weights[active])])
        raise ValueError(f"alphas: the ranges span too wide a ratio (alpha[{i}] = {a[i]:g} vs max {a.max():g}): "
                         f"eq. 10 gives channel {i} fewer bins than float64 can represent; set its alpha to 0 "
                         f"(no bins) or narrow the spread")


# --------------------------------------------------------------------------- bits budget, continuous
def allocate_bits_continuous(alphas, *, avg_bits, max_bits=None) -> np.ndarray:
    r"""Real-valued bits per channel minimising the model error for a fixed total of bits.

    Minimise :math:`\sum_i \alpha_i^2 4^{-M_i}/3` subject to :math:`\sum_i M_i = C\bar M`. The
    Lagrangian is stationary where :math:`\alpha_i^2 4^{-M_i}` is the same for every channel: every
    channel ends with the same noise, and with all :math:`\alpha_i > 0`

    .. math::

        M_i = \bar M + \log_2\frac{\alpha_i}{\big(\prod_j \alpha_j\big)^{1/C}},

    the classical log rule (Huang & Schultheiss 1963). This may give :math:`M_i < 0` for a narrow
    channel, which no quantizer can use. With :math:`0 \le M_i \le M_{\max}` the KKT conditions give
    reverse water-filling (as in rate-distortion theory for parallel Gaussian sources): for one
    level :math:`t`,

    .. math::

        M_i = \operatorname{clip}\big(\log_2\alpha_i - t,\ 0,\ M_{\max}\big),

    where :math:`t` is chosen so that :math:`\sum_i M_i = C\bar M`. A channel whose range is below
    the water level gets 0 bits and keeps its full error :math:`\alpha_i^2/3`; one with
    :math:`\alpha_i = 0` always gets 0 bits and the budget goes to the others. If the cap cannot
    spend the budget every channel with :math:`\alpha_i > 0` gets :math:`M_{\max}`. The sum is a
    piecewise-linear function of :math:`t`, solved exactly between its breakpoints.

    Parameters
    ----------
    alphas : array_like
        Per-channel ranges, 1-D, :math:`\alpha_i \ge 0`.
    avg_bits : float
        Average bits per channel :math:`\bar M \ge 0` (the budget is :math:`C\bar M`).
    max_bits : float, optional
        Upper bound :math:`M_{\max}` (None: no upper bound).

    Returns
    -------
    numpy.ndarray
        :math:`M_i` (real-valued, :math:`\ge 0`).

    Examples
    --------
    >>> allocate_bits_continuous([1.0, 4.0], avg_bits=3).round(6)  # 3 -+ log2(4/2)
    array([2., 4.])
    >>> allocate_bits_continuous([1.0, 1024.0], avg_bits=3).round(6)  # log rule: -2 and 8
    array([0., 6.])
    """
    a = _check_alphas(alphas)
    cap = math.inf if max_bits is None else float(check_positive(max_bits, "max_bits"))
    avg = float(check_bits(avg_bits, "avg_bits", low=0.0))
    total = a.size * avg
    out = np.zeros_like(a)
    active = a > 0
    n = int(active.sum())
    if n == 0 or total == 0:
        return out
    if total >= n * cap:
        out[active] = cap
        return out
    u = _log2_ratio(a[active])  # log2 alpha_i, shifted (the level t shifts with it)

    def spent(t):
        return float(np.clip(u - t, 0.0, cap).sum())

    points = np.concatenate([u, u - cap]) if np.isfinite(cap) else u.copy()
    points = np.unique(np.append(points, u.min() - total / n))  # far left: spent >= total there
    values = np.array([spent(t) for t in points])  # non-increasing in t
    # Find the segment [points[j], points[j+1]] with values[j] >= total >= values[j+1]; linear there.
    j = int(np.flatnonzero(values >= total)[-1])
    if j == points.size - 1 or values[j] == total:
        t = points[j]
    else:
        t0, t1, v0, v1 = points[j], points[j + 1], values[j], values[j + 1]
        t = t0 + (v0 - total) * (t1 - t0) / (v0 - v1)
    out[active] = np.clip(u - t, 0.0, cap)
    return out


# --------------------------------------------------------------------------- eq. 11
def paper_bits(alphas, *, avg_bits, mode="round", max_bits=8) -> np.ndarray:
    r"""The paper's bit allocation as written (eq. 11), like the seed's ``get_bits_alloc``.

    .. math::

        M_i = \left\lfloor \log_2\!\Big(\frac{\alpha_i^{2/3}}{\sum_j \alpha_j^{2/3}}\, B\Big)
              \right\rceil, \qquad B = C\,2^{\bar M} \qquad (11)

    i.e. eq. 10's bins rounded in the log domain (``mode="round"``: to nearest, ties to even as
    ``torch.round``; ``mode="ceil"``: up), then clamped to :math:`[0, M_{\max}]` (the seed clamps
    to [0, 8]). A zero-range channel (:math:`\log_2 0 = -\infty`) gets 0 bits. Rounding does not
    keep the budget: see :func:`allocate` for the overshoot.

    Examples
    --------
    >>> paper_bits([1.0, 8.0], avg_bits=4).tolist()  # B = 32 bins: 6.4 and 25.6 -> log2 2.68, 4.68
    [3, 5]
    >>> paper_bits([1.0, 8.0], avg_bits=4, mode="ceil").tolist()
    [3, 5]
    >>> paper_bits([0.0, 1.0, 1.0], avg_bits=2).tolist()  # 6 bins each, log2 6 = 2.58
    [0, 3, 3]
    """
    a = _check_alphas(alphas)
    mode = _check_mode(mode)
    max_bits = _check_max_bits(max_bits)
    avg = float(check_bits(avg_bits, "avg_bits", low=0.0))
    return _paper_bits(a, avg, mode, max_bits)


def _paper_bits(a: np.ndarray, avg: float, mode: str, max_bits: int) -> np.ndarray:
    out = np.zeros(a.shape, dtype=np.int64)
    active = a > 0
    if not np.any(active):
        return out
    log_w = _log2_ratio(a[active]) * (2.0 / 3.0)  # log2 of alpha_i^(2/3) / max alpha^(2/3)
    # log2(w_i / sum w * C * 2^avg), written in logs so that neither avg_bits nor the spread overflow
    log_bins = log_w - np.log2(np.exp2(log_w).sum()) + np.log2(a.size) + avg
    rounded = np.round(log_bins) if mode == "round" else np.ceil(log_bins)
    out[active] = np.clip(rounded, 0, max_bits).astype(np.int64)
    return out


def paper_bits_fixed_target(alphas, *, avg_bits, mode="round", max_bits=8, max_iter=10,
                            eps=0.01) -> np.ndarray:
    r"""The seed's ``get_bits_alloc_fixed_target``: nudge eq. 11's target until the mean hits it.

    Start with :math:`t = \bar M`; while :math:`|2\delta| > \varepsilon` (:math:`\delta = 1` at
    first) and fewer than ``max_iter`` iterations ran: :math:`M = \mathrm{eq.\,11}(t)`,
    :math:`\delta = (\bar M - \overline{M})/2`, :math:`t \leftarrow t + \delta`. Returns the
    **last** :math:`M`, which may still miss the target (up or down); reproduced as is.

    Examples
    --------
    >>> paper_bits_fixed_target([1.0, 2.0, 4.0, 8.0], avg_bits=4).tolist()
    [3, 4, 4, 5]
    """
    a = _check_alphas(alphas)
    mode = _check_mode(mode)
    max_bits = _check_max_bits(max_bits)
    goal = float(check_bits(avg_bits, "avg_bits", low=0.0))
    t, delta, it = goal, 1.0, 0
    bits = _paper_bits(a, max(t, 0.0), mode, max_bits)
    while abs(2 * delta) > eps and it < max_iter:
        bits = _paper_bits(a, max(t, 0.0), mode, max_bits)
        delta = (goal - bits.mean()) / 2
        t += delta
        it += 1
    return bits


# --------------------------------------------------------------------------- integer optimum
def optimal_integer_bits(alphas, *, avg_bits, budget="bins", max_bits=8) -> np.ndarray:
    r"""Integer bits :math:`M_i \in \{0..M_{\max}\}` minimising the model error, never over budget.

    Minimise :math:`\sum_i \alpha_i^2 4^{-M_i}/3` over integers, subject to

    * ``budget="bits"``: :math:`\sum_i M_i \le \lfloor C\bar M\rfloor`. The costs are separable
      and convex (the gain of bit :math:`m+1` is :math:`\alpha_i^2 4^{-m-1}`, falling with
      :math:`m`) and every bit costs the same, so the greedy rule "give the next bit to the channel
      whose error falls most" is exact; it is run as a selection of the largest gains.
    * ``budget="bins"``: :math:`\sum_{i:\alpha_i>0} 2^{M_i} \le \lfloor C 2^{\bar M}\rfloor`.
      Greedy by gain per bin is **not** exact here (a knapsack). Raising channel :math:`i` from
      :math:`m` to :math:`m+1` bits costs :math:`2^m` extra bins and gains
      :math:`g_{i,m} = \alpha_i^2 4^{-m-1}`; taking step :math:`m` without step :math:`m-1` is never
      optimal (step :math:`m-1` is cheaper and gains 4 times more), so the problem is a 0/1
      knapsack whose weights are powers of two. That is solved exactly level by level: at weight
      :math:`2^k`, if bit :math:`k` of the remaining capacity is set take the most valuable item;
      then pair the remaining items in order of value into items of weight :math:`2^{k+1}` (an
      odd last one alone). An exchange argument shows some optimum uses, at each level, the best
      item when that bit is set and a prefix of the sorted pairs otherwise, so nothing is lost.
      Cost :math:`O(n\log n)` per level for :math:`n = C M_{\max}` items.

    A zero-range channel gets 0 bits and costs nothing in either budget. The budgets are
    floored to integers after adding 1e-9 (float rounding of :math:`C\bar M`).

    Examples
    --------
    >>> optimal_integer_bits([1.0, 2.0, 4.0, 8.0], avg_bits=4, budget="bins").tolist()  # 64 bins
    [3, 3, 4, 5]
    >>> optimal_integer_bits([1.0, 3.0, 9.0], avg_bits=4, budget="bits").tolist()
    [2, 4, 6]
    """
    a = _check_alphas(alphas)
    budget = _check_budget(budget)
    max_bits = _check_max_bits(max_bits)
    avg = _check_avg_bits(avg_bits, max_bits)
    return _integer_bits(a, avg, budget, max_bits)


def _integer_bits(a: np.ndarray, avg: float, budget: str, max_bits: int) -> np.ndarray:
    bits = np.zeros(a.shape, dtype=np.int64)
    active = np.flatnonzero(a > 0)
    if active.size == 0:
        return bits
    scaled = np.exp2(2.0 * _log2_ratio(a[active]))  # the gains scale with alpha^2: normalise
    steps = np.arange(max_bits)
    gains = scaled[:, None] * 4.0 ** -(steps[None, :] + 1)  # g[i, m], rows = active channels
    gains = np.where(gains > 0, gains, np.finfo(float).tiny)  # an underflowed gain is still a gain
    if budget == "bits":
        capacity = math.floor(a.size * avg + _SLACK)
        k = min(capacity, gains.size)
        if k > 0:
            # lexsort: largest gain first, ties to the lower channel then the lower step
            chan, step = np.divmod(np.arange(gains.size), max_bits)
            order = np.lexsort((step, chan, -gains.ravel()))[:k]
            np.add.at(bits, active[chan[order]], 1)
        return bits
    capacity = math.floor(a.size * 2.0**avg + _SLACK) - active.size  # M = 0 costs one bin
    chosen = _power_of_two_knapsack(gains, capacity)
    # counts per channel: taking the first k steps is never worse than any k steps
    bits[active] = np.bincount(chosen // max_bits, minlength=active.size)
    return bits


def _power_of_two_knapsack(gains: np.ndarray, capacity: int) -> np.ndarray:
    """0/1 knapsack where item (i, m) weighs 2**m and is worth gains[i, m]; returns flat item ids.

    Vectorised level by level: the items of a level are arrays (value, tie-break, node); merged pairs
    become new nodes whose two children are remembered, and taken nodes are expanded at the end.
    """
    n_chan, n_steps = gains.shape
    n_leaves = gains.size
    children: list[tuple[np.ndarray, np.ndarray]] = []   # node n_leaves + j -> (left[j], right[j]) per batch
    child_base: list[int] = []
    taken: list[int] = []
    vals = np.empty(0)
    ties = np.empty(0, np.int64)
    nodes = np.empty(0, np.int64)
    next_node = n_leaves
    level = 0
    while capacity > 0 and (level < n_steps or vals.size):
        if level < n_steps:
            flat = np.arange(n_chan, dtype=np.int64) * n_steps + level
            vals = np.concatenate([vals, -gains[:, level].astype(float)])
            ties = np.concatenate([ties, flat])
            nodes = np.concatenate([nodes, flat])
        order = np.lexsort((ties, vals))       # largest value first, ties to the lower id
        vals, ties, nodes = vals[order], ties[order], nodes[order]
        if capacity & 1 and vals.size:
            taken.append(int(nodes[0]))
            vals, ties, nodes = vals[1:], ties[1:], nodes[1:]
        n_pairs = vals.size // 2
        left, right = nodes[0:2 * n_pairs:2], nodes[1:2 * n_pairs:2]
        pair_nodes = next_node + np.arange(n_pairs, dtype=np.int64)
        children.append((left, right))
        child_base.append(next_node)
        next_node += n_pairs
        pair_vals = vals[0:2 * n_pairs:2] + vals[1:2 * n_pairs:2]
        pair_ties = ties[0:2 * n_pairs:2]
        if vals.size % 2:
            pair_vals = np.append(pair_vals, vals[-1])
            pair_ties = np.append(pair_ties, ties[-1])
            pair_nodes = np.append(pair_nodes, nodes[-1])
        vals, ties, nodes = pair_vals, pair_ties, pair_nodes
        capacity >>= 1
        level += 1
    bases = np.asarray(child_base, dtype=np.int64)
    out, stack = [], list(taken)
    while stack:
        node = stack.pop()
        if node < n_leaves:
            out.append(node)
            continue
        batch = int(np.searchsorted(bases, node, side="right")) - 1
        left, right = children[batch]
        j = node - bases[batch]
        stack.extend((int(left[j]), int(right[j])))
    return np.sort(np.asarray(out, dtype=np.int64))


# --------------------------------------------------------------------------- all at once
@dataclass(frozen=True)
class Allocation:
    """Every allocation rule on one set of ranges, with its model error and budget use.

    Attributes
    ----------
    alphas : numpy.ndarray
        The per-channel ranges.
    avg_bits, budget, max_bits
        The request; ``total_bins`` :math:`= C 2^{\\bar M}` and ``total_bits`` :math:`= C\\bar M`.
    bins_continuous : numpy.ndarray
        Eq. 10 for the bins budget, capped at :math:`2^{M_{\\max}}` (water-filling when it binds).
    bits_continuous : numpy.ndarray
        The bits budget's continuous optimum on :math:`[0, M_{\\max}]` (log rule, water-filled).
    bits_paper : numpy.ndarray
        Eq. 11 as written (round to nearest, clamp to :math:`[0, M_{\\max}]`).
    bits : numpy.ndarray
        The integer optimum under ``budget``, never over it.
    mse : dict
        Model error :math:`\\sum_i \\alpha_i^2/(3B_i^2)` of each of the four.
    bins_used, bits_used : dict
        :math:`\\sum_{i:\\alpha_i>0} B_i` and :math:`\\sum_i M_i` of each (for ``bins_continuous``,
        :math:`M_i = \\log_2 B_i`, which may be negative).
    paper_overshoot_bits, paper_overshoot_bins : float
        Eq. 11's mean bits minus ``avg_bits``, and its bins used minus ``total_bins``.
    """

    alphas: np.ndarray
    avg_bits: float
    budget: str
    max_bits: int
    total_bins: float
    total_bits: float
    bins_continuous: np.ndarray
    bits_continuous: np.ndarray
    bits_paper: np.ndarray
    bits: np.ndarray
    mse: dict = field(default_factory=dict)
    bins_used: dict = field(default_factory=dict)
    bits_used: dict = field(default_factory=dict)
    paper_overshoot_bits: float = 0.0
    paper_overshoot_bins: float = 0.0

    def to_dict(self) -> dict:
        """Plain lists, floats, ints and strings (``json.dumps`` takes it as is)."""
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, dict):
                value = {k: float(v) for k, v in value.items()}
            out[name] = value
        return out


def allocate(alphas, *, avg_bits, budget="bins", max_bits=8) -> Allocation:
    r"""Allocate bins and bits to channels with ranges ``alphas`` by every rule, under one budget.

    The continuous optima (:func:`allocate_bins_continuous` for :math:`\sum B_i = C 2^{\bar M}`,
    eq. 10; :func:`allocate_bits_continuous` for :math:`\sum M_i = C\bar M`, the log rule) are
    both computed whatever ``budget`` is; the paper's rule (eq. 11, :func:`paper_bits`) too; the
    integer optimum :func:`optimal_integer_bits` solves the chosen ``budget``. Its error is never
    below that budget's continuous optimum (a relaxation of the same problem).

    .. math::

        \mathrm{MSE} = \sum_i \frac{\alpha_i^2}{3 B_i^2}, \quad B_i = 2^{M_i}

    Parameters
    ----------
    alphas : array_like
        Per-channel ranges :math:`\alpha_i \ge 0`, 1-D.
    avg_bits : float
        Average bits per channel, :math:`0 \le \bar M \le M_{\max}` (fractional allowed).
    budget : {"bins", "bits"}
        The budget the integer allocation must respect.
    max_bits : int
        :math:`M_{\max}`, the largest bit-width of one channel (the seed clamps to 8).

    Returns
    -------
    Allocation

    Examples
    --------
    >>> res = allocate([1, 3, 9], avg_bits=4, budget="bins")
    >>> res.bits_paper.tolist(), res.bins_used["bits_paper"], res.total_bins  # eq. 11 overshoots
    ([3, 4, 5], 56.0, 48.0)
    >>> res.bits.tolist(), res.bins_used["bits"]  # the integer optimum stays within 48 bins
    ([3, 3, 5], 48.0)
    >>> round(res.mse["bits"] / res.mse["bins_continuous"], 4)  # the price of integer bits
    1.3344
    >>> sorted(res.to_dict())[:3]
    ['alphas', 'avg_bits', 'bins_continuous']
    """
    a = _check_alphas(alphas)
    budget = _check_budget(budget)
    max_bits = _check_max_bits(max_bits)
    avg = _check_avg_bits(avg_bits, max_bits)
    c = a.size
    total_bins, total_bits = c * 2.0**avg, c * avg
    bins_c = allocate_bins_continuous(a, total_bins=total_bins, max_bins=2.0**max_bits)
    bits_c = allocate_bits_continuous(a, avg_bits=avg, max_bits=max_bits)
    bits_p = _paper_bits(a, avg, "round", max_bits)
    bits_i = _integer_bits(a, avg, budget, max_bits)
    active = a > 0
    bins_of = {"bins_continuous": bins_c, "bits_continuous": np.exp2(bits_c),
               "bits_paper": np.exp2(bits_p.astype(float)), "bits": np.exp2(bits_i.astype(float))}
    mse = {k: allocation_mse(a, bins=v) for k, v in bins_of.items()}
    bins_used = {k: float(v[active].sum()) for k, v in bins_of.items()}
    log_bins_c = np.zeros_like(a)
    log_bins_c[active] = np.log2(bins_c[active])
    bits_used = {"bins_continuous": float(log_bins_c.sum()), "bits_continuous": float(bits_c.sum()),
                 "bits_paper": float(bits_p.sum()), "bits": float(bits_i.sum())}
    return Allocation(
        alphas=a, avg_bits=avg, budget=budget, max_bits=max_bits, total_bins=total_bins,
        total_bits=total_bits, bins_continuous=bins_c, bits_continuous=bits_c, bits_paper=bits_p,
        bits=bits_i, mse=mse, bins_used=bins_used, bits_used=bits_used,
        paper_overshoot_bits=float(bits_p.mean() - avg),
        paper_overshoot_bins=bins_used["bits_paper"] - total_bins,
    )
