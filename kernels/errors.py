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
    # consts = (0, 1/2) in x's dtype: every operation stays in that dtype, as in the torch fake-quantizer
    zero, one_half = consts[0], consts[1]
    n, k_count = x.size, scale.size
    chunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros((chunks, k_count))
    for c in prange(chunks):
        lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
        for k in range(k_count):
            s, z, m = scale[k], zp[k], qmax[k]
            acc = 0.0
            if half[k]:
                for i in range(lo, hi):
                    v = x[i]
                    q = min(max(np.floor(v / s) + one_half + z, zero), m)
                    e = (q - z) * s - v
                    acc += e * e
            else:
                for i in range(lo, hi):
                    v = x[i]
                    q = min(max(np.rint(v / s) + z, zero), m)
                    e = (q - z) * s - v
                    acc += e * e
            partial[c, k] = acc
    for c in range(chunks):
        for k in range(k_count):
            out[k] += partial[c, k]


def grid_errors(x: np.ndarray, scale, zero_point, qmax, half) -> np.ndarray:
    r"""``out[k]`` :math:`= \sum_i (Q_k(x_i) - x_i)^2` for the per-tensor grids ``k`` (float64, shape ``(K,)``).

    ``x``: float32 or float64, any shape; ``scale``, ``zero_point``, ``qmax`` (levels - 1), ``half`` (the zero
    point is a half-integer): one value per grid. The squares are formed in ``x``'s dtype (as the torch
    fake-quantizer forms them) and summed in float64 per chunk of :data:`CHUNK` values.

    Examples
    --------
    >>> x = np.float32([-1.0, -0.2, 0.0, 0.7, 1.0])
    >>> e = grid_errors(x, scale=[2 / 3, 0.5], zero_point=[1.5, 2.0], qmax=[3, 4], half=[True, False])
    >>> [round(float(v), 6) for v in e]
    [0.206667, 0.13]
    """
    x = np.ascontiguousarray(x).reshape(-1)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    scale, zp, qmax = (np.ascontiguousarray(np.asarray(v, np.float64).astype(x.dtype)).reshape(-1)
                       for v in (scale, zero_point, qmax))
    half = np.ascontiguousarray(np.asarray(half, np.bool_)).reshape(-1)
    if not (scale.size == zp.size == qmax.size == half.size):
        raise ValueError(f"scale, zero_point, qmax and half need one value per grid, got sizes "
                         f"{scale.size}, {zp.size}, {qmax.size}, {half.size}")
    if not np.all(scale > 0):
        raise ValueError("scale must be > 0 on every grid")
    out = np.zeros(scale.size)
    _errors(x, scale, zp, qmax, half, np.array([0.0, 0.5], x.dtype), out)
    return out
