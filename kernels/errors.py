"""The squared error of quantizing one tensor on many per-tensor grids, in one pass over the data.

The ``mse`` and ``mix`` calibrators of :mod:`aciq.quant.calibrate` score K candidate clipping windows of a site
by their exact error over all calibration values: K fake-quantize passes over tensors of hundreds of millions
of values, memory-bound in torch. Here each value is read once and quantized on all K grids while it is in a
register; chunks of the flattened tensor run in parallel (numba ``prange``), each chunk's sums kept apart and
added in chunk order, so the result does not depend on the thread count.

The arithmetic is that of :func:`aciq.quant.fake.fake_quantize` in the tensor's dtype: ``r = x / s``
(a division, not a multiplication by a reciprocal), ``rint(r)`` (half to even; ``floor(r) + 1/2`` on a grid with
a half-integer zero point), ``+ z``, clamp to ``[0, qmax]``, ``- z``, ``* s``; the squared difference is formed
in the dtype and summed in float64.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["grid_errors"]

CHUNK = 1 << 16


@njit(parallel=True, cache=True, error_model="numpy", fastmath={"nnan", "ninf", "nsz"})
def _errors(x, scale, zp, qmax, half, consts, out):
    # x: (C, n); grids (K, C); out: (C, K). Tasks: (row, chunk) pairs, each with its own sums, added in order.
    # consts = (0, 1/2) in x's dtype: every operation stays in that dtype, as in the torch fake-quantizer
    zero, one_half = consts[0], consts[1]
    rows, n = x.shape
    k_count = scale.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros((rows * chunks, k_count))
    for t in prange(rows * chunks):
        r, c = t // chunks, t % chunks
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        xr = x[r]
        for k in range(k_count):
            s, z, m = scale[k, r], zp[k, r], qmax[k, r]
            acc = 0.0
            if half[k, r]:
                for i in range(lo, hi):
                    v = xr[i]
                    q = min(max(np.floor(v / s) + one_half + z, zero), m)
                    e = (q - z) * s - v
                    acc += e * e
            else:
                for i in range(lo, hi):
                    v = xr[i]
                    q = min(max(np.rint(v / s) + z, zero), m)
                    e = (q - z) * s - v
                    acc += e * e
            partial[t, k] = acc
    for r in range(rows):
        for c in range(chunks):
            for k in range(k_count):
                out[r, k] += partial[r * chunks + c, k]


def grid_errors(x: np.ndarray, scale, zero_point, qmax, half) -> np.ndarray:
    r"""The squared error of ``x`` on each of K grids: per tensor, ``out[k]`` :math:`= \sum_i (Q_k(x_i) - x_i)^2`
    (float64, shape ``(K,)``); per channel, ``x`` of shape ``(C, n)`` (row ``c`` = every value of channel ``c``)
    and grids of shape ``(K, C)``: ``out[c, k]`` sums over row ``c`` (shape ``(C, K)``).

    ``x``: float32 or float64; ``scale``, ``zero_point``, ``qmax`` (levels - 1), ``half`` (the zero point is a
    half-integer): ``(K,)`` per tensor, ``(K, C)`` per channel. The squares are formed in ``x``'s dtype (as
    the torch fake-quantizer forms them) and summed in float64 per chunk of :data:`CHUNK` values.

    Examples
    --------
    >>> x = np.float32([-1.0, -0.2, 0.0, 0.7, 1.0])
    >>> e = grid_errors(x, scale=[2 / 3, 0.5], zero_point=[1.5, 2.0], qmax=[3, 4], half=[True, False])
    >>> [round(float(v), 6) for v in e]
    [0.218889, 0.08]
    >>> grid_errors(np.float32([[0.0, 1.0], [0.25, 0.5]]), scale=[[1.0, 0.5]], zero_point=[[0.0, 0.0]],
    ...             qmax=[[1, 1]], half=[[False, False]]).tolist()
    [[0.0], [0.0625]]
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    per_channel = np.ndim(scale) == 2
    grids = [np.asarray(v) for v in (scale, zero_point, qmax, half)]
    if any(g.shape != grids[0].shape for g in grids):
        raise ValueError(f"scale, zero_point, qmax and half need one shape, got {[g.shape for g in grids]}")
    if per_channel and (x.ndim != 2 or x.shape[0] != grids[0].shape[1]):
        raise ValueError(f"per-channel grids {grids[0].shape} need x of shape (C={grids[0].shape[1]}, n), "
                         f"got {x.shape}")
    if not per_channel and grids[0].ndim != 1:
        raise ValueError(f"grids must be (K,) per tensor or (K, C) per channel, got {grids[0].shape}")
    x2 = np.ascontiguousarray(x if per_channel else x.reshape(1, -1))
    scale, zp, qmax = (np.ascontiguousarray(np.asarray(v, np.float64).astype(x.dtype).reshape(len(v), -1))
                       for v in grids[:3])
    half = np.ascontiguousarray(np.asarray(grids[3], np.bool_).reshape(len(grids[3]), -1))
    if not np.all(scale > 0):
        raise ValueError("scale must be > 0 on every grid")
    out = np.zeros((x2.shape[0], scale.shape[0]))
    _errors(x2, scale, zp, qmax, half, np.array([0.0, 0.5], x.dtype), out)
    return out if per_channel else out[0]
