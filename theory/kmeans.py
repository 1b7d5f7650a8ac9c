r"""k-means (non-uniform) scalar quantization of measured data, per channel, against Lloyd-Max.

The seed's ``kmeans_quantization.py`` replaces every weight of a tensor by the nearest of :math:`k = 2^M`
centroids fitted by k-means (scikit-learn, whole tensor). In one dimension an optimal codebook cuts the sorted
data into :math:`k` contiguous cells, each reconstructed by its mean, and satisfies

.. math::

    t_j = \frac{l_j + l_{j+1}}{2}, \qquad l_j = \frac{\sum_{x \in (t_{j-1}, t_j]} x}{\#\{x \in (t_{j-1}, t_j]\}},

the optimality conditions of Lloyd-Max (:func:`aciq.theory.limits.lloyd_max`) with the prior replaced by the
data. So k-means on :math:`n` samples of a Laplace or Gaussian prior tends to the Lloyd-Max quantizer of that
prior as :math:`n \to \infty`; on real weights, :func:`lloyd_max_comparison` says how far the measured optimum
is from the Lloyd-Max optimum of the prior fitted to each channel.

Because the cells are contiguous, the optimum is a dynamic programme over the cut points, solved here exactly
(or on a subset of cut points, then refined by Lloyd's iteration) for every channel at once, in numpy; Lloyd's
iteration alone, from any fixed start, often stops at a local optimum far from it on small channels (2-3x the
optimal error on 144-weight rows at 16 levels). Each codebook keeps its channel's mean exactly (every level is
the mean of its cell), so the mean bias correction of eq. 12 has nothing to correct after k-means.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import check_bits
from .limits import lloyd_max
from .stats import _channels, _gauss_rows, _laplace_rows

__all__ = ["KMeansResult", "kmeans_1d", "kmeans_quantize", "LloydMaxComparison", "lloyd_max_comparison"]


@dataclass(frozen=True)
class KMeansResult:
    """k-means levels of every channel and the codes of the data.

    Attributes
    ----------
    levels : numpy.ndarray
        ``(C, k)`` non-decreasing levels per channel (``(k,)`` for ``axis=None``). A channel with fewer than
        ``k`` distinct values repeats levels (its error is then 0).
    codes : numpy.ndarray
        int64 indices into the channel's levels, the shape of ``x``.
    mse : float or numpy.ndarray
        Mean squared error per channel (a float for ``axis=None``).
    iterations : int
        Lloyd iterations run after the dynamic programme.
    converged : bool
        True when every channel reached a fixed point of Lloyd's iteration within ``max_iter``.
    exact : bool
        True when the codebooks are the global optimum (the unrestricted programme ran; Lloyd's iteration
        then cannot move them).
    axis : int or None
        The channel axis of the data (None: one codebook for all of it).
    """

    levels: np.ndarray
    codes: np.ndarray
    mse: float | np.ndarray
    iterations: int
    converged: bool
    exact: bool = False
    axis: int | None = None

    def reconstruct(self) -> np.ndarray:
        """The quantized data: every value replaced by its level (the shape of ``x``)."""
        levels = self.levels.reshape(1, -1) if self.levels.ndim == 1 else self.levels
        axis = self.axis
        codes = np.moveaxis(self.codes, axis, 0) if axis is not None else self.codes.reshape(1, -1)
        rows = codes.reshape(codes.shape[0], -1)
        out = np.take_along_axis(levels, rows, axis=1).reshape(codes.shape)
        return np.moveaxis(out, 0, axis) if axis is not None else out.reshape(self.codes.shape)



def _count_le(sorted_rows: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per row r, how many of ``sorted_rows[r]`` are ``<= t[r, j]`` (a batched ``searchsorted(side='right')``)."""
    c, n = sorted_rows.shape
    lo = np.zeros(t.shape, np.int64)
    hi = np.full(t.shape, n, np.int64)
    rows = np.arange(c)[:, None]
    while np.any(active := lo < hi):
        mid = (lo + hi) // 2
        right = active & (sorted_rows[rows, np.minimum(mid, n - 1)] <= t)
        left = active & ~right
        lo = np.where(right, mid + 1, lo)
        hi = np.where(left, mid, hi)
    return lo


def _codes(rows: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the cell of every value: the number of thresholds strictly below it (ties to the lower level)."""
    t = 0.5 * (levels[:, :-1] + levels[:, 1:])
    k1 = t.shape[1]
    if k1 == 0:
        return np.zeros(rows.shape, np.int64)
    lo = np.zeros(rows.shape, np.int64)
    hi = np.full(rows.shape, k1, np.int64)
    r = np.arange(rows.shape[0])[:, None]
    while np.any(active := lo < hi):
        mid = (lo + hi) // 2
        right = active & (t[r, np.minimum(mid, k1 - 1)] < rows)
        left = active & ~right
        lo = np.where(right, mid + 1, lo)
        hi = np.where(left, mid, hi)
    return lo


def _prefix(s: np.ndarray):
    """Prefix sums of the (row-centred) sorted rows and of their squares, ``(C, n + 1)`` each."""
    c = s.shape[0]
    z = s - s.mean(axis=1, keepdims=True)        # centred: less cancellation in sum(x^2) - sum(x)^2 / n
    c1 = np.concatenate([np.zeros((c, 1)), np.cumsum(z, axis=1)], axis=1)
    c2 = np.concatenate([np.zeros((c, 1)), np.cumsum(z * z, axis=1)], axis=1)
    return c1, c2


def _dp_rows(s: np.ndarray, k: int, edges: np.ndarray) -> np.ndarray:
    r"""Optimal partition of every sorted row into k cells whose boundaries lie on the row's ``edges``.

    ``edges`` ``(C, B + 1)``: per row, non-decreasing allowed cut positions from 0 to n (repeats allowed; a
    cell between two equal positions is empty and costs :math:`+\infty`); all of ``0..n`` gives the exact
    1-D k-means optimum. The dynamic programme
    :math:`D_q(j) = \min_{i<j} D_{q-1}(i) + \mathrm{SSE}(e_i, e_j)` is solved for all rows at once by
    divide and conquer over j, which is valid because the optimal split point is non-decreasing in j (the
    squared error of an interval satisfies the quadrangle inequality, and so does any subset of the cut
    points); ties go to the smaller i. Work :math:`O(C\,B\log B)` per cell count. Returns the cell
    boundaries ``(C, k + 1)`` (positions in the row).
    """
    c, width = edges.shape
    b_n = width - 1
    c1, c2 = _prefix(s)
    p1 = np.take_along_axis(c1, edges, axis=1).ravel()
    p2 = np.take_along_axis(c2, edges, axis=1).ravel()
    e = edges.ravel()
    rows = np.arange(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = p2.reshape(c, width) - p1.reshape(c, width) ** 2 / edges
    prev = np.where(edges > 0, first, np.inf)
    args = np.zeros((k, c, width), np.int32)
    for q in range(2, k + 1):
        cur = np.full((c, width), np.inf)
        a, b = np.array([q]), np.array([b_n])                # segments of j, shared by every row
        lo, hi = np.full((c, 1), q - 1, np.int64), np.full((c, 1), b_n - 1, np.int64)  # split range per row
        while a.size:
            m = (a + b) // 2
            length = (np.minimum(hi, m[None, :] - 1) - lo + 1).ravel()   # >= 1: opt(parent) < m
            starts = np.concatenate([[0], np.cumsum(length)[:-1]])
            g = np.repeat(np.arange(length.size), length)
            i = lo.ravel()[g] + (np.arange(g.size) - starts[g])
            r, j = g // a.size, m[g % a.size]
            fi, fj = r * width + i, r * width + j
            s1 = p1[fj] - p1[fi]
            count = e[fj] - e[fi]
            with np.errstate(divide="ignore", invalid="ignore"):
                sse = np.where(count > 0, p2[fj] - p2[fi] - s1 * s1 / count, np.inf)
            val = prev.ravel()[fi] + sse
            best = np.minimum.reduceat(val, starts)
            hit = np.flatnonzero(val == best[g])
            opt = i[hit[np.unique(g[hit], return_index=True)[1]]].reshape(c, a.size)
            cur[:, m] = best.reshape(c, a.size)
            args[q - 1][:, m] = opt
            left, right = m - 1 >= a, m + 1 <= b
            a, b = np.concatenate([a[left], m[right] + 1]), np.concatenate([m[left] - 1, b[right]])
            lo, hi = (np.concatenate([lo[:, left], opt[:, right]], axis=1),
                      np.concatenate([opt[:, left], hi[:, right]], axis=1))
        prev = cur
    bounds = np.empty((c, k + 1), np.int64)
    bounds[:, 0], bounds[:, k] = 0, b_n
    j = np.full(c, b_n)
    for q in range(k, 1, -1):
        j = args[q - 1][rows, j]
        bounds[:, q - 1] = j
    return np.take_along_axis(edges, bounds, axis=1)


_DP_WORK = 1 << 23   # elements the restricted programme may touch per call (about a second of numpy)


def _edges(s: np.ndarray, k: int, exact: bool) -> np.ndarray | None:
    """Allowed cut positions per sorted row: all of 0..n (exact), or the edges of G equal-count groups (the
    bulk; G >= k, so k non-empty cells always exist) plus G - 1 cuts at equal steps of value from the
    minimum to the maximum (the tails), with C k (2G) log2(2G) <= _DP_WORK; None if even G = k is over
    the budget (many channels and many levels: then Lloyd's iteration starts from k equal-count cells)."""
    c, n = s.shape
    groups = n

    def work(g):
        return c * k * 2 * g * max(np.log2(2 * g), 1.0)

    while groups // 2 >= k and work(groups) > _DP_WORK:
        groups //= 2
    if exact or groups >= n:
        return np.broadcast_to(np.arange(n + 1), (c, n + 1))
    if work(groups) > _DP_WORK:
        return None
    by_count = np.broadcast_to((np.arange(groups + 1) * n) // groups, (c, groups + 1))
    values = s[:, :1] + (s[:, -1:] - s[:, :1]) * (np.arange(1, groups) / groups)
    return np.sort(np.concatenate([by_count, _count_le(s, values)], axis=1), axis=1)


def _lloyd_rows(s: np.ndarray, levels: np.ndarray, max_iter: int):
    """Lloyd's iteration on sorted rows from ``levels``, until no cell boundary moves."""
    c, n = s.shape
    csum = np.concatenate([np.zeros((c, 1)), np.cumsum(s, axis=1)], axis=1)
    bounds = None
    it, converged = 0, False
    r = np.arange(c)[:, None]
    for it in range(1, max_iter + 1):
        t = 0.5 * (levels[:, :-1] + levels[:, 1:])
        inner = _count_le(s, t)                          # cell j holds s[b_j : b_{j+1}]
        b = np.concatenate([np.zeros((c, 1), np.int64), inner, np.full((c, 1), n, np.int64)], axis=1)
        if bounds is not None and np.array_equal(b, bounds):
            converged = True
            break
        bounds = b
        count = b[:, 1:] - b[:, :-1]
        total = csum[r, b[:, 1:]] - csum[r, b[:, :-1]]
        levels = np.where(count > 0, total / np.maximum(count, 1), levels)  # an empty cell keeps its level
        levels = np.maximum.accumulate(levels, axis=1)   # guards rounding; the centroids are already sorted
    return levels, it, converged


def _kmeans_rows(rows: np.ndarray, k: int, exact: bool, max_iter: int):
    c, n = rows.shape
    s = np.sort(rows, axis=1)
    if k >= n:                                           # every value its own level
        levels = np.concatenate([s, np.repeat(s[:, -1:], k - n, axis=1)], axis=1)
        return levels, 0, True, True
    edges = _edges(s, k, exact)
    if edges is None:
        bounds = np.broadcast_to((np.arange(k + 1) * n) // k, (c, k + 1))
    else:
        bounds = _dp_rows(s, k, edges)
    csum = np.concatenate([np.zeros((c, 1)), np.cumsum(s, axis=1)], axis=1)
    r = np.arange(c)[:, None]
    levels = (csum[r, bounds[:, 1:]] - csum[r, bounds[:, :-1]]) / (bounds[:, 1:] - bounds[:, :-1])
    levels = np.maximum.accumulate(levels, axis=1)
    levels, it, converged = _lloyd_rows(s, levels, max_iter)
    return levels, it, converged, edges is not None and edges.shape[1] == n + 1


def kmeans_1d(x, *, levels, axis=None, exact=False, max_iter=300) -> KMeansResult:
    r"""1-D k-means with ``levels`` centroids, per channel along ``axis``.

    Minimises the empirical error of a ``levels``-level scalar quantizer of each channel,

    .. math::

        \min_{l_1 \le \dots \le l_k} \frac1n \sum_{i=1}^n \min_j (x_i - l_j)^2 .

    In 1-D an optimal codebook cuts the sorted data into k contiguous cells, so the optimum is a dynamic
    programme over cut points (Bellman 1973; Wang & Song 2011, Ckmeans.1d.dp), solved here for every channel
    at once (:func:`_dp_rows`). ``exact=True`` allows a cut between any two values: the global optimum, at
    :math:`O(C\,k\,n\log n)` work. By default the cuts are restricted to the edges of equal-count groups of
    the sorted data, as many as a fixed work budget allows (all of them for small channels), and Lloyd's
    iteration (the two conditions of the module docstring, which never increase the error) then moves the cuts
    freely until none moves. ``KMeansResult.exact`` says when the result is the certified optimum.

    Parameters
    ----------
    x : array_like
        Real, finite data.
    levels : int
        k >= 1 (``2**bits`` for an M-bit codebook).
    axis : int or None
        The channel axis (one codebook per slice along it, e.g. ``axis=0`` for the output channels of a
        weight); None: one codebook for the whole array (the seed's choice).
    exact : bool
        Solve the unrestricted programme (slower for large channels).
    max_iter : int
        Largest number of Lloyd iterations.

    Returns
    -------
    KMeansResult

    Examples
    --------
    >>> res = kmeans_1d([0.0, 0.1, 0.2, 5.0, 5.2], levels=2)
    >>> res.levels.round(3).tolist(), res.codes.tolist(), round(res.mse, 4), res.exact
    ([0.1, 5.1], [0, 0, 0, 1, 1], 0.008, True)
    >>> kmeans_1d([[1.0, 2.0, 3.0], [4.0, 4.0, 8.0]], levels=2, axis=0).levels.tolist()
    [[1.0, 2.5], [4.0, 8.0]]
    """
    k = int(check_bits(levels, "levels", low=1, integer=True))
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    rows, scalar = _channels(x, axis)
    if rows.shape[1] == 0:
        raise ValueError("x has no values per channel")
    lv, it, converged, certified = _kmeans_rows(rows, k, bool(exact), int(max_iter))
    codes = _codes(rows, lv)
    err = rows - np.take_along_axis(lv, codes, axis=1)
    mse = np.einsum("ij,ij->i", err, err) / rows.shape[1]
    arr = np.asarray(x, dtype=np.float64)
    if scalar:
        return KMeansResult(levels=lv[0], codes=codes.reshape(arr.shape), mse=float(mse[0]), iterations=it,
                            converged=converged, exact=certified, axis=None)
    ax = axis % arr.ndim
    moved = np.moveaxis(arr, ax, 0).shape
    return KMeansResult(levels=lv, codes=np.moveaxis(codes.reshape(moved), 0, ax), mse=mse, iterations=it,
                        converged=converged, exact=certified, axis=ax)


def kmeans_quantize(x, *, bits, axis=None, max_iter=300) -> np.ndarray:
    """``x`` with every value replaced by the nearest of its channel's :math:`2^M` k-means levels.

    Examples
    --------
    >>> kmeans_quantize([0.0, 0.1, 0.2, 5.0, 5.2], bits=1).round(3).tolist()
    [0.1, 0.1, 0.1, 5.1, 5.1]
    """
    m = int(check_bits(bits, "bits", low=0, high=16, integer=True))
    return kmeans_1d(x, levels=1 << m, axis=axis, max_iter=max_iter).reconstruct()


@dataclass(frozen=True)
class LloydMaxComparison:
    """k-means on the data vs the Lloyd-Max quantizer of the prior fitted to each channel.

    ``kmeans_mse``: measured error of the data's own k-means codebook; ``lloyd_max_mse[prior]``: the
    Lloyd-Max error of Laplace(:math:`\\hat b`) or Gauss(:math:`\\hat\\sigma`) with the channel's estimated
    scale (:func:`aciq.theory.stats.laplace_scale`, :func:`~aciq.theory.stats.gauss_scale`), i.e. what k-means
    would reach if the channel followed that prior exactly; ``gap_db[prior]`` =
    :math:`10\\log_{10}(\\text{kmeans} / \\text{Lloyd-Max})` (negative: the data quantize better than the prior
    predicts). Arrays per channel, floats for ``axis=None``. ``kmeans`` is the fitted
    :class:`KMeansResult` itself (channels along axis 0 of the data's ``(C, n)`` rows).
    """

    bits: int
    kmeans_mse: float | np.ndarray
    lloyd_max_mse: dict
    gap_db: dict
    kmeans: KMeansResult


def lloyd_max_comparison(x, *, bits, axis=None, max_iter=300) -> LloydMaxComparison:
    r"""Measured k-means error of each channel against the Lloyd-Max error of its fitted prior.

    .. math::

        \mathrm{gap} = 10\log_{10}\frac{\min_{l}\frac1n\sum_i \min_j (x_i - l_j)^2}
                                      {s^2\,D_\mathrm{LM}(M)} ,

    with :math:`D_\mathrm{LM}(M)` the unit-scale Lloyd-Max error (Max 1960) and :math:`s` the channel's
    Laplace :math:`b` or Gaussian :math:`\sigma`. A channel with zero spread has gap 0 dB.

    Examples
    --------
    >>> from aciq.theory.priors import sample
    >>> cmp = lloyd_max_comparison(sample("laplace", 200_000, seed=1), bits=2)
    >>> abs(cmp.gap_db["laplace"]) < 0.1        # k-means on Laplace data finds Lloyd-Max
    True
    """
    m = int(check_bits(bits, "bits", low=1, high=16, integer=True))
    rows, scalar = _channels(x, axis)
    res = kmeans_1d(rows, levels=1 << m, axis=0, max_iter=max_iter)
    km = np.atleast_1d(res.mse)
    lm, gap = {}, {}
    for prior, scales in (("laplace", _laplace_rows(rows)), ("gauss", _gauss_rows(rows))):
        unit = lloyd_max(prior=prior, bits=m).mse
        d = unit * scales ** 2
        lm[prior] = d
        with np.errstate(divide="ignore", invalid="ignore"):
            g = 10.0 * np.log10(km / d)
        gap[prior] = np.where((d > 0) & (km > 0), g, 0.0)
    pick = (lambda a: float(a[0])) if scalar else (lambda a: a)
    return LloydMaxComparison(bits=m, kmeans_mse=pick(km), lloyd_max_mse={k: pick(v) for k, v in lm.items()},
                              gap_db={k: pick(v) for k, v in gap.items()}, kmeans=res)
