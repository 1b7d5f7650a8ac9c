"""Scalar helpers shared by every compiled backend, written once.

Each helper is a ``numba.njit(inline="always")`` function on scalars. The CPU
backend calls them from ``@njit`` loops; the CUDA backend calls the very same
objects from ``@cuda.jit`` kernels (numba-cuda compiles a CPU dispatcher called
from a kernel as a device function, and ``inline="always"`` inlines it at the IR
level, which is also what lets ``numba.cuda.compile_ptx`` build PTX on a machine
without a GPU). Under ``NUMBA_ENABLE_CUDASIM=1`` the simulator calls them as
ordinary CPU-jitted functions.

Rounding rule (identical in numpy, numba CPU, numba CUDA and the simulator)
---------------------------------------------------------------------------
A value ``x`` is quantized with step ``scale`` and zero point ``zp`` to

.. math::

    q = \\operatorname{clamp}\\big(\\operatorname{rint}(x / s) + z,\\;
        q_{\\min},\\; q_{\\max}\\big)

* ``x / s`` is an IEEE float32 division (``div.rn.f32`` in PTX; fastmath stays
  off), never a multiplication by a reciprocal;
* ``rint`` rounds half to even, like ``numpy.rint`` and ``torch.round``. It is
  the builtin ``round`` on a float, which numba lowers to ``llvm.rint`` on the
  CPU and to ``__nv_llrint`` (``cvt.rni.s64.f64``) on CUDA; float32 -> float64
  is exact, so ties are decided on the float32 quotient;
* before rounding the quotient is clamped to ``[-65536, 65536]`` (this never
  changes a code, since every ``qmin - zp >= -510`` and ``qmax - zp <= 510``),
  which keeps ``inf`` finite: ``+inf -> qmax``, ``-inf -> qmin``, and
  ``NaN -> qmin`` (the clamp is written with comparisons that are False for
  NaN). A numpy reference reproduces this bit for bit with::

      v = (x.astype(np.float32) / scale.astype(np.float32)).astype(np.float32)
      v = np.where(v > -65536, v, -65536)      # NaN -> -65536
      v = np.minimum(v, 65536)
      q = np.clip(np.rint(v).astype(np.int64) + zp, qmin, qmax)

Code ranges
-----------
``signed``: ``[-2**(bits-1), 2**(bits-1) - 1]``; unsigned (half-range):
``[0, 2**bits - 1]``. A symmetric restricted grid is the signed form with a
zero point of 0 whose codes never reach ``qmin``. ``bits`` is 1..8; for
``bits == 1`` the signed range is ``[-1, 0]``.

Packed nibbles
--------------
Two 4-bit fields per byte along K: the low nibble holds the even index ``k``,
the high nibble the odd one. :func:`unpack_nibble` returns the raw field in
``0..15``; mapping a field to a code (subtracting the packing offset) is the
caller's business, so the packing convention lives in one place
(``kernels/packing.py``).

Every helper casts explicitly to ``int32``/``float32``: the CUDA simulator runs
kernels as Python on numpy scalars and does not apply numba's integer typing.
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "qrange",
    "quantize_code",
    "dequantize_code",
    "unpack_nibble",
    "pack_nibbles",
]

_CLAMP = np.float32(65536.0)


@numba.njit(inline="always", cache=False)
def qrange(bits, signed):
    """Integer code range ``(qmin, qmax)`` of a ``bits``-bit grid.

    .. math::

        \\text{signed: } [-2^{b-1}, 2^{b-1} - 1], \\qquad
        \\text{unsigned: } [0, 2^{b} - 1]

    Parameters
    ----------
    bits : int
        Bit width, 1..8 (not validated here: validation happens once on the
        host, in ``kernels/spec.py``).
    signed : bool
        Signed (two's-complement-like) or non-negative (half-range) grid.

    Returns
    -------
    (int32, int32)

    Examples
    --------
    >>> [int(v) for v in qrange(4, True)], [int(v) for v in qrange(4, False)]
    ([-8, 7], [0, 15])
    """
    b = np.int32(bits)
    if signed:
        half = np.int32(np.int32(1) << np.int32(b - np.int32(1)))
        return np.int32(-half), np.int32(half - np.int32(1))
    return np.int32(0), np.int32(np.int32(np.int32(1) << b) - np.int32(1))


@numba.njit(inline="always", cache=False)
def quantize_code(x, scale, zero_point, qmin, qmax):
    """Quantize one float to an integer code (round half to even, clamp).

    .. math::

        q = \\operatorname{clamp}(\\operatorname{rint}(x / s) + z, q_{\\min}, q_{\\max})

    The division is float32 (both operands are cast to float32 first); NaN maps
    to ``qmin`` and infinities to the nearest end (see the module docstring).

    Parameters
    ----------
    x, scale : float
        Value and step (``scale > 0``, validated on the host).
    zero_point, qmin, qmax : int
        Zero point and code range.

    Returns
    -------
    int32

    Examples
    --------
    >>> import numpy as np
    >>> [int(quantize_code(np.float32(v), np.float32(1.0), 0, -8, 7))
    ...  for v in (0.5, 1.5, 2.5, -2.5, 9.0, float("nan"))]
    [0, 2, 2, -2, 7, -8]
    >>> int(quantize_code(np.float32(0.3), np.float32(0.1), 3, 0, 15))
    6
    """
    v = np.float32(x) / np.float32(scale)
    if not v > -_CLAMP:  # also catches NaN
        v = -_CLAMP
    if v > _CLAMP:
        v = _CLAMP
    q = np.int32(np.int32(round(v)) + np.int32(zero_point))
    if q < np.int32(qmin):
        q = np.int32(qmin)
    if q > np.int32(qmax):
        q = np.int32(qmax)
    return q


@numba.njit(inline="always", cache=False)
def dequantize_code(code, zero_point, scale):
    """Float32 value of a code: ``(q - z) * s``.

    .. math::

        \\hat{x} = (q - z)\\, s

    Examples
    --------
    >>> import numpy as np
    >>> float(dequantize_code(6, 3, np.float32(0.5)))
    1.5
    """
    return np.float32(np.int32(np.int32(code) - np.int32(zero_point))) * np.float32(scale)


@numba.njit(inline="always", cache=False)
def unpack_nibble(byte, k):
    """Raw 4-bit field (0..15) of index ``k`` in a packed byte.

    Even ``k`` -> low nibble, odd ``k`` -> high nibble.

    .. math::

        f = (\\text{byte} \\gg 4\\,(k \\bmod 2)) \\;\\&\\; 15

    Examples
    --------
    >>> int(unpack_nibble(0xA3, 0)), int(unpack_nibble(0xA3, 1))
    (3, 10)
    """
    shift = np.int32(np.int32(k) & np.int32(1)) * np.int32(4)
    return np.int32(np.int32(np.int32(byte) >> shift) & np.int32(15))


@numba.njit(inline="always", cache=False)
def pack_nibbles(low, high):
    """Pack two 4-bit fields (0..15) into one uint8: ``low | high << 4``.

    Examples
    --------
    >>> int(pack_nibbles(3, 10))
    163
    """
    return np.uint8((np.int32(low) & np.int32(15)) | ((np.int32(high) & np.int32(15)) << np.int32(4)))
