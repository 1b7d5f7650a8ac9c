"""Two 4-bit weight codes per byte: the packed layout of :class:`QuantWeights`.

Layout (one convention, used by every backend)
----------------------------------------------
A weight matrix of signed codes ``q[n, k]`` (``n`` = output channel, ``k`` =
reduction index, ``-8 <= q <= 7``) is stored as ``uint8[N, ceil(K / 2)]``:

* byte ``j`` of row ``n`` holds ``k = 2j`` in its **low** nibble and
  ``k = 2j + 1`` in its **high** nibble;
* a nibble stores the unsigned field ``f = q + NIBBLE_OFFSET`` (``0..15``), the
  same offset for every bit width 1..4, so decoding is ``q = f - 8``;
* for odd ``K`` the high nibble of the last byte is padding and holds the field
  of code 0 (``8``); kernels never read it as data.

.. math::

    \\text{byte}_{n,j} = (q_{n,2j} + 8) \\;|\\; (q_{n,2j+1} + 8) \\ll 4

Examples
--------
>>> import numpy as np
>>> q = np.array([[-8, 7, 0]], dtype=np.int8)
>>> p = pack_int4(q)
>>> p.tolist(), unpack_int4(p, k=3).tolist()
([[240, 136]], [[-8, 7, 0]])
"""
from __future__ import annotations

import numpy as np

__all__ = ["NIBBLE_OFFSET", "pack_int4", "unpack_int4", "packed_width"]

NIBBLE_OFFSET = 8
"""Field stored in a nibble = code + 8 (codes -8..7 map to fields 0..15)."""


def packed_width(k: int) -> int:
    """Bytes per packed row: ``ceil(k / 2)``.

    Examples
    --------
    >>> packed_width(5), packed_width(6)
    (3, 3)
    """
    return (int(k) + 1) // 2


def pack_int4(codes) -> np.ndarray:
    """Pack signed 4-bit codes ``int[N, K]`` into ``uint8[N, ceil(K/2)]``.

    .. math::

        \\text{byte}_{n,j} = (q_{n,2j} + 8) + 16\\,(q_{n,2j+1} + 8)

    Parameters
    ----------
    codes : array_like of int, shape (N, K)
        Codes in ``[-8, 7]``.

    Returns
    -------
    numpy.ndarray of uint8, shape (N, ceil(K / 2)), C-contiguous.

    Raises
    ------
    ValueError
        If ``codes`` is not 2-D integer or holds a code outside ``[-8, 7]``.

    Examples
    --------
    >>> pack_int4([[1, -1, 3, 2]]).tolist()
    [[121, 171]]
    """
    q = np.asarray(codes)
    if q.ndim != 2:
        raise ValueError(f"codes must be 2-D (N, K), got shape {q.shape}")
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {q.dtype}")
    if q.size and (q.min() < -NIBBLE_OFFSET or q.max() > NIBBLE_OFFSET - 1):
        raise ValueError("codes must lie in [-8, 7] to be packed two per byte")
    n, k = q.shape
    f = np.full((n, 2 * packed_width(k)), NIBBLE_OFFSET, dtype=np.uint8)
    f[:, :k] = (q.astype(np.int16) + NIBBLE_OFFSET).astype(np.uint8)
    return np.ascontiguousarray(f[:, 0::2] | (f[:, 1::2] << 4))


def unpack_int4(packed, *, k: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: ``uint8[N, ceil(k/2)]`` -> ``int8[N, k]``.

    .. math::

        q_{n,k} = \\big((\\text{byte}_{n,\\lfloor k/2 \\rfloor} \\gg 4 (k \\bmod 2)) \\;\\&\\; 15\\big) - 8

    Examples
    --------
    >>> unpack_int4(pack_int4([[1, -1, 3]]), k=3).tolist()
    [[1, -1, 3]]
    """
    p = np.asarray(packed)
    if p.ndim != 2 or p.dtype != np.uint8:
        raise ValueError(f"packed must be a 2-D uint8 array, got {p.dtype} of shape {p.shape}")
    if packed_width(k) != p.shape[1]:
        raise ValueError(f"k={k} does not match packed width {p.shape[1]}")
    out = np.empty((p.shape[0], 2 * p.shape[1]), dtype=np.int8)
    out[:, 0::2] = (p & 15).astype(np.int8) - NIBBLE_OFFSET
    out[:, 1::2] = (p >> 4).astype(np.int8) - NIBBLE_OFFSET
    return np.ascontiguousarray(out[:, :k])
