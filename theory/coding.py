r"""How many bits the integer codes of a quantized tensor really need: entropy and Huffman coding.

An :math:`M`-bit quantizer emits codes :math:`q \in \{0, \dots, 2^M - 1\}`; a fixed-width code spends
:math:`M` bits on each. Clipped bell-shaped data uses the levels very unequally (the outer levels
are rare), so a variable-length code (VLC) spends less. With :math:`p_s` the empirical frequency of
symbol :math:`s`, the ideal rate is the Shannon entropy

.. math::

    H = -\sum_s p_s \log_2 p_s \quad \text{bits per symbol},

and a Huffman code (the optimal prefix code for these frequencies, lengths :math:`\ell_s`) reaches

.. math::

    \bar\ell = \sum_s p_s \ell_s, \qquad H \le \bar\ell < H + 1, \qquad \sum_s 2^{-\ell_s} = 1

(the last, Kraft's equality, for two or more used symbols: a Huffman tree is a full binary tree).

The seed (``utils/entropy.py``) only printed :math:`H` and never built a code; it pooled the codes
of every channel into **one histogram per tensor** (one codebook per layer). That is what these
functions do by default; pass ``axis`` (the channel axis, as in
:func:`aciq.theory.bias.channel_bias`) for one histogram, hence one codebook, per channel.

Reference numbers: the gemmlowp codes (:mod:`aciq.theory.grids`) of Laplace(0, 1) clipped at the
ACIQ alpha (:func:`aciq.theory.clipping.optimal_alpha`) have entropy 1.473, 2.281, 3.021 and 6.130
bits at M = 2, 3, 4, 8 (exact, from the Laplace CDF over the grid's cells; a seeded sample of
:math:`10^6` gives 1.473, 2.282, 3.022, 6.132 and the seed inventory lists 1.473, 2.283, 3.020,
6.131), and Huffman codes built for those exact probabilities average 1.584, 2.360, 3.078 and
6.156 bits (built from that sample's counts: 1.584, 2.361, 3.080, 6.157): 0.4 to 1.9 bits below the
nominal width.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ._common import check_axis, check_bits

__all__ = ["CodeLength", "code_entropy", "huffman_code_lengths", "huffman_average_length", "code_length"]


# --------------------------------------------------------------------------- validation
def _check_codes(codes) -> np.ndarray:
    """Integer codes as an int64 array: integer/bool dtype, or floats that are all whole numbers."""
    try:
        arr = np.asarray(codes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"codes must be an array of integers, got {codes!r}") from exc
    if arr.size == 0:
        raise ValueError("codes must not be empty")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"codes must be integers, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("codes contains NaN or Inf")
    if np.any(arr != np.round(arr)) or np.any(np.abs(arr) > 2.0**62):
        raise ValueError("codes must be integers (whole numbers), got non-integer values")
    return arr.astype(np.int64)


def _rows(codes, axis) -> np.ndarray:
    """Codes as a 2-D array [channels, -1]: one row for ``axis=None`` (all codes pooled)."""
    arr = _check_codes(codes)
    if axis is None:
        return arr.reshape(1, -1)
    axis = check_axis(axis, what="codes", ndim=arr.ndim)
    c = arr.shape[axis]
    rows = np.moveaxis(arr, axis, 0).reshape(c, -1)
    if rows.shape[1] == 0:
        raise ValueError("codes must not be empty along the channels (no codes per channel)")
    return rows


def _row_counts(rows: np.ndarray):
    """Counts of the distinct values of every row: (counts, row id of each count), sorted by row."""
    s = np.sort(rows, axis=1)
    new = np.ones(s.shape, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    starts = np.flatnonzero(new.ravel())
    counts = np.diff(np.append(starts, s.size))
    return counts, starts // s.shape[1]


def _entropy_rows(rows: np.ndarray) -> np.ndarray:
    counts, row = _row_counts(rows)
    p = counts / rows.shape[1]
    return -np.bincount(row, weights=p * np.log2(p), minlength=rows.shape[0]) + 0.0


def _out(arr: np.ndarray, axis):
    return float(arr[0]) if axis is None else arr


# --------------------------------------------------------------------------- entropy
def code_entropy(codes, *, axis=None):
    r"""Shannon entropy of integer codes, in bits per symbol.

    .. math::

        H = -\sum_s p_s \log_2 p_s, \qquad p_s = \frac{\#\{q = s\}}{n}

    from the histogram of the values that occur (unused levels contribute nothing).

    Parameters
    ----------
    codes : array_like of int
        Integer codes of any shape (an integer dtype, or floats holding whole numbers).
    axis : int, optional
        None (default): all codes pooled into one histogram (the seed's one codebook per tensor).
        An integer: the channel axis; one histogram per channel, the other axes pooled.

    Returns
    -------
    float or ndarray
        A float for ``axis=None``, else an array of length ``codes.shape[axis]``.

    Examples
    --------
    >>> code_entropy([0, 0, 0, 0, 1, 1, 2, 3])  # p = 1/2, 1/4, 1/8, 1/8
    1.75
    >>> code_entropy(np.array([[0, 1, 2, 3], [5, 5, 5, 5]]), axis=0)
    array([2., 0.])
    """
    rows = _rows(codes, axis)
    return _out(_entropy_rows(rows), axis)


# --------------------------------------------------------------------------- Huffman
def huffman_code_lengths(counts) -> np.ndarray:
    r"""Code lengths of a Huffman code for symbols with the given counts.

    The classic construction: repeatedly merge the two lightest subtrees (a ``heapq`` of
    ``(weight, order)``; leaves are ordered by symbol index, each merged node comes after every
    earlier one, so ties are broken deterministically); a symbol's length is its depth. The result
    minimises :math:`\sum_s c_s \ell_s` over all prefix codes, with

    .. math::

        \sum_{s:\,c_s > 0} 2^{-\ell_s} = 1 \quad (\ge 2 \text{ used symbols}), \qquad
        H \le \frac{\sum_s c_s \ell_s}{\sum_s c_s} < H + 1 .

    Parameters
    ----------
    counts : array_like
        1-D non-negative symbol counts (any non-negative weights); at least one positive.

    Returns
    -------
    ndarray of int64
        ``lengths[s]``: 0 for an unused symbol (count 0); 1 when a single symbol is used.

    Examples
    --------
    >>> huffman_code_lengths([4, 2, 1, 1])
    array([1, 2, 3, 3])
    >>> huffman_code_lengths([0, 5, 0])
    array([0, 1, 0])
    >>> huffman_code_lengths([1, 1, 1, 1, 1])  # ties: the lowest symbols are merged first
    array([3, 3, 2, 2, 2])
    """
    try:
        c = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"counts must be numeric, got {counts!r}") from exc
    if c.ndim != 1:
        raise ValueError(f"counts must be 1-D, got shape {c.shape}")
    if c.size == 0:
        raise ValueError("counts must not be empty")
    if not np.all(np.isfinite(c)):
        raise ValueError("counts contains NaN or Inf")
    if np.any(c < 0):
        raise ValueError("counts must be >= 0")
    used = np.flatnonzero(c > 0)
    if used.size == 0:
        raise ValueError("counts must have at least one positive entry")
    lengths = np.zeros(c.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    heap = [(float(c[s]), order, [int(s)]) for order, s in enumerate(used)]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        w1, _, s1 = heapq.heappop(heap)
        w2, _, s2 = heapq.heappop(heap)
        merged = s1 + s2
        lengths[merged] += 1
        heapq.heappush(heap, (w1 + w2, order, merged))
        order += 1
    return lengths


def _huffman_rows(rows: np.ndarray) -> np.ndarray:
    counts, row = _row_counts(rows)
    bounds = np.searchsorted(row, np.arange(rows.shape[0] + 1))
    out = np.empty(rows.shape[0])
    for r in range(rows.shape[0]):
        cr = counts[bounds[r]:bounds[r + 1]]
        out[r] = float(np.dot(cr, huffman_code_lengths(cr))) / rows.shape[1]
    return out


def huffman_average_length(codes, *, axis=None):
    r"""Average length, bits per symbol, of the Huffman code built on these codes' own histogram.

    .. math::

        \bar\ell = \frac{1}{n}\sum_s c_s \ell_s, \qquad H \le \bar\ell < H + 1

    (:math:`\bar\ell = 1` for a single used symbol). The codebook is fitted to the data it codes
    (the cost of transmitting the codebook is not counted), pooled or per channel as in
    :func:`code_entropy`.

    Examples
    --------
    >>> huffman_average_length([0, 0, 0, 0, 1, 1, 2, 3])  # dyadic: equals the entropy
    1.75
    >>> huffman_average_length([0, 1, 2])  # lengths 1, 2, 2; the entropy is log2(3) = 1.585
    1.6666666666666667
    """
    rows = _rows(codes, axis)
    return _out(_huffman_rows(rows), axis)


# --------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class CodeLength:
    """Bits per symbol of one tensor's codes (or per channel: arrays of length C).

    ``entropy``: :math:`H`, the ideal VLC rate; ``huffman``: the average length of the Huffman
    code fitted to these codes; ``fixed``: a fixed-width code, the nominal ``bits`` if given, else
    :math:`\\max(1, \\lceil\\log_2 k\\rceil)` for the :math:`k` used symbols; ``n``: the number of
    codes; ``symbols``: :math:`k`, the number of distinct codes used.
    """

    entropy: float | np.ndarray
    huffman: float | np.ndarray
    fixed: float | np.ndarray
    n: int | np.ndarray
    symbols: int | np.ndarray


def code_length(codes, *, bits=None, axis=None) -> CodeLength:
    r"""Entropy, Huffman and fixed-width rates of integer codes, in bits per symbol.

    .. math::

        H = -\sum_s p_s\log_2 p_s \;\le\; \bar\ell_\text{Huffman} \;\le\; \text{fixed}

    (the last only when ``fixed`` counts the used symbols or ``bits`` is at least that wide; for
    one used symbol both Huffman and the fixed width spend 1 bit).

    Parameters
    ----------
    codes : array_like of int
        Integer codes of any shape.
    bits : int, optional
        The quantizer's nominal width :math:`M`, reported as ``fixed``; must be able to hold the
        number of distinct codes (:math:`k \le 2^M`).
    axis : int, optional
        The channel axis for one codebook per channel; None (default) pools every code.

    Returns
    -------
    CodeLength
        Floats and ints, or arrays of length ``codes.shape[axis]``.

    Examples
    --------
    >>> r = code_length([0, 0, 0, 0, 1, 1, 2, 3], bits=4)
    >>> r.entropy, r.huffman, r.fixed, r.n, r.symbols
    (1.75, 1.75, 4.0, 8, 4)
    >>> r = code_length(np.array([[0, 1, 1, 1], [2, 2, 2, 2]]), axis=0)
    >>> np.round(r.entropy, 4), r.huffman, r.fixed, r.symbols
    (array([0.8113, 0.    ]), array([1., 1.]), array([1., 1.]), array([2, 1]))
    """
    rows = _rows(codes, axis)
    _, row = _row_counts(rows)
    symbols = np.bincount(row, minlength=rows.shape[0])
    if bits is not None:
        m = check_bits(bits, integer=True)
        if m.ndim != 0:
            raise ValueError(f"bits must be a scalar, got {bits!r}")
        m = float(m)
        if np.any(symbols > 2.0**m):
            raise ValueError(f"bits={bits!r} cannot hold {int(symbols.max())} distinct codes")
        fixed = np.full(rows.shape[0], m)
    else:
        fixed = np.maximum(1.0, np.ceil(np.log2(symbols)))
    n = np.full(rows.shape[0], rows.shape[1], dtype=np.int64)
    if axis is None:
        return CodeLength(entropy=float(_entropy_rows(rows)[0]), huffman=float(_huffman_rows(rows)[0]),
                          fixed=float(fixed[0]), n=int(n[0]), symbols=int(symbols[0]))
    return CodeLength(entropy=_entropy_rows(rows), huffman=_huffman_rows(rows), fixed=fixed, n=n,
                      symbols=symbols)
