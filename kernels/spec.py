"""Data model of the fused clip-quantize-GEMM op (shared by every backend).

The op computes, for activations ``x[M, K]`` (float32) and weight codes
``q_w[N, K]``,

.. math::

    y_{mn} = \\operatorname{epilogue}\\Big(\\sum_k
        \\underbrace{(q_a(x_{mk}) - z_k)\\, s_k}_{\\hat a_{mk}}\\;
        \\underbrace{(q_{w,nk} - z_{w,n})\\, s_{w,n}}_{\\hat w_{nk}}\\Big),
    \\qquad
    q_a(x) = \\operatorname{clamp}(\\operatorname{rint}(x / s_k) + z_k,\\; q_{\\min,k},\\; q_{\\max,k})

with ``rint`` = round half to even and ``x / s_k`` an IEEE float32 division (see
:mod:`aciq.kernels._scalar`, whose scalar helpers every compiled backend uses).

* :class:`ActQuant` -- how activations are quantized on load: a step ``scale``,
  a ``zero_point`` and a bit width ``bits`` per input channel ``k`` (bit
  allocation: one tensor may mix 2-, 3-, 4- and 8-bit channels), and one form
  for the tensor: ``signed`` (``[-2^{b-1}, 2^{b-1}-1]``) or unsigned /
  half-range (``[0, 2^b - 1]``). A symmetric restricted grid is the signed form
  with zero point 0 whose codes never reach ``qmin``.
* :class:`QuantWeights` -- weight codes prepared once: signed codes with a
  per-output-channel ``scale`` and ``zero_point``; int8 ``[N, K]`` storage, or
  for ``bits <= 4`` two codes per byte (:mod:`aciq.kernels.packing`).
* :class:`Epilogue` -- per-output-channel bias, optional ReLU, optional
  requantization of the output to ``out_bits`` codes.

Accumulation modes
------------------
``"integer"``
    Per-tensor activation scale and zero point (per-channel ``bits`` allowed:
    they only change clamp ranges). ``acc = sum_k (q_a - z_a)(q_w - z_w[n])`` is
    an exact integer (int32; see :func:`check_operands` for the overflow bound),
    then ``y = f32(acc) * f32(s_a * s_w[n]) + bias[n]`` (two float32 roundings,
    no FMA).
``"mixed"``
    Per-channel activation scales: ``acc = sum_k a_hat[m, k] (q_w - z_w[n])`` in
    float32, then ``y = f32(acc * s_w[n]) + bias[n]``.

Then ``relu`` and, with ``out_bits``, requantization with the same rounding
rule as the activations; the op then returns codes (uint8 for the unsigned
form, int8 for the signed one).

Examples
--------
>>> import numpy as np
>>> act = ActQuant.per_tensor(0.1, zero_point=0, bits=4, signed=False, k=3)
>>> act.qmax.tolist(), act.is_per_tensor
([15, 15, 15], True)
>>> w = quantize_weights(np.array([[1.0, -0.5, 0.25]], np.float32), bits=4)
>>> w.packed, w.codes.shape, unpack_codes(w).tolist()
(True, (1, 2), [[7, -3, 2]])
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .packing import NIBBLE_OFFSET, pack_int4, packed_width, unpack_int4

__all__ = [
    "MODES",
    "MAX_BITS",
    "ActQuant",
    "QuantWeights",
    "Epilogue",
    "code_range",
    "quantize_weights",
    "unpack_codes",
    "check_x",
    "check_x4",
    "check_plan",
    "check_accumulator",
    "check_operands",
    "max_integer_k",
]

MODES = ("integer", "mixed")
MAX_BITS = 8
_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------- helpers
def code_range(bits, signed: bool):
    """Integer code range ``(qmin, qmax)`` of a ``bits``-bit grid (numpy, broadcasting).

    .. math::

        \\text{signed: } [-2^{b-1},\\, 2^{b-1} - 1], \\qquad
        \\text{unsigned: } [0,\\, 2^{b} - 1]

    Examples
    --------
    >>> [v.tolist() for v in code_range(np.array([1, 4, 8]), True)]
    [[-1, -8, -128], [0, 7, 127]]
    """
    b = np.asarray(bits, dtype=np.int64)
    if signed:
        half = np.left_shift(np.int64(1), b - 1)
        return (-half).astype(np.int32), (half - 1).astype(np.int32)
    return np.zeros_like(b, dtype=np.int32), (np.left_shift(np.int64(1), b) - 1).astype(np.int32)


def _numeric(value, name: str, what: str) -> np.ndarray:
    """``value`` as a non-empty float64 array, or ValueError naming ``name``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be {what}, got {value!r}") from exc
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    return arr


def _check_bits(bits, name: str) -> np.ndarray:
    arr = _numeric(bits, name, f"integers in 1..{MAX_BITS}")
    if (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))
            or np.any(arr < 1) or np.any(arr > MAX_BITS)):
        raise ValueError(f"{name} must be integers in 1..{MAX_BITS}, got {bits!r}")
    return arr.astype(np.int32)


def _check_scale(scale, name: str) -> np.ndarray:
    arr = _numeric(scale, name, "numeric")
    arr32 = arr.astype(np.float32)
    if not np.all(np.isfinite(arr32)) or np.any(arr32 <= 0):
        raise ValueError(f"{name} must be finite and > 0 (as float32), got {scale!r}")
    return arr32


def _check_int(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:  # pragma: no cover - exotic input
        raise ValueError(f"{name} must be integers, got {value!r}") from exc
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or (np.issubdtype(arr.dtype, np.floating)
                                     and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
        raise ValueError(f"{name} must be integers, got {value!r}")
    if np.any(np.abs(arr.astype(np.float64)) > 2**30):
        raise ValueError(f"{name} out of range, got {value!r}")
    return arr.astype(np.int32)


def _broadcast_1d(arr: np.ndarray, size: int, name: str) -> np.ndarray:
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or 1-D, got shape {arr.shape}")
    if arr.ndim == 1 and arr.shape[0] not in (1, size):
        raise ValueError(f"{name} has length {arr.shape[0]}, expected 1 or {size}")
    out = np.ascontiguousarray(np.broadcast_to(arr, (size,)).copy())
    out.setflags(write=False)
    return out




# ------------------------------------------------------------- activations
@dataclass(frozen=True, eq=False)
class ActQuant:
    """Activation quantizer applied on load, per input channel ``k``.

    .. math::

        q = \\operatorname{clamp}(\\operatorname{rint}(x / s_k) + z_k, q_{\\min,k}, q_{\\max,k}),
        \\qquad \\hat a = (q - z_k)\\, s_k

    Parameters
    ----------
    scale : array_like of float, shape (K,)
        Steps ``s_k`` (finite, > 0 as float32). Sets ``K``.
    zero_point : int or array_like of int, shape (K,) or scalar
        Zero points ``z_k`` in ``[qmin_k, qmax_k]``.
    bits : int or array_like of int
        Bit widths 1..8 per channel.
    signed : bool
        Signed or unsigned (half-range) code grid for the whole tensor.

    Arrays are stored as read-only copies: float32 ``scale``, int32
    ``zero_point`` and ``bits``.

    Examples
    --------
    >>> a = ActQuant(scale=[0.5, 0.25], zero_point=0, bits=[2, 8], signed=True)
    >>> a.k, a.qmin.tolist(), a.qmax.tolist(), a.is_per_tensor
    (2, [-2, -128], [1, 127], False)
    """

    scale: np.ndarray
    zero_point: np.ndarray = 0
    bits: np.ndarray = 8
    signed: bool = False

    def __post_init__(self):
        scale = _check_scale(self.scale, "scale").reshape(-1) if np.ndim(self.scale) else None
        if scale is None:
            raise ValueError("scale must be 1-D (one step per input channel); "
                             "use ActQuant.per_tensor for a scalar")
        k = scale.shape[0]
        bits = _broadcast_1d(_check_bits(self.bits, "bits"), k, "bits")
        zp = _broadcast_1d(_check_int(self.zero_point, "zero_point"), k, "zero_point")
        if not isinstance(self.signed, (bool, np.bool_)):
            raise ValueError(f"signed must be a bool, got {self.signed!r}")
        qmin, qmax = code_range(bits, bool(self.signed))
        if np.any(zp < qmin) or np.any(zp > qmax):
            raise ValueError("zero_point must lie in [qmin, qmax] of its channel's grid")
        scale = _broadcast_1d(scale, k, "scale")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "zero_point", zp)
        object.__setattr__(self, "signed", bool(self.signed))
        qmin.setflags(write=False)
        qmax.setflags(write=False)
        object.__setattr__(self, "_qmin", qmin)
        object.__setattr__(self, "_qmax", qmax)

    @classmethod
    def per_tensor(cls, scale, zero_point=0, bits=8, signed=False, k=None):
        """One step and zero point for all ``k`` channels (``bits`` may still vary).

        Examples
        --------
        >>> ActQuant.per_tensor(0.1, 3, 4, False, k=2).zero_point.tolist()
        [3, 3]
        """
        if k is None or isinstance(k, bool) or int(k) != k or int(k) < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        s = _check_scale(scale, "scale")
        if s.size != 1:
            raise ValueError(f"scale must be a scalar for per_tensor, got shape {s.shape}")
        return cls(scale=np.full(int(k), s.reshape(-1)[0], np.float32),
                   zero_point=zero_point, bits=bits, signed=signed)

    @property
    def k(self) -> int:
        """Number of input channels (GEMM reduction length)."""
        return int(self.scale.shape[0])

    @property
    def qmin(self) -> np.ndarray:
        """Smallest code per channel (int32[K])."""
        return self._qmin

    @property
    def qmax(self) -> np.ndarray:
        """Largest code per channel (int32[K])."""
        return self._qmax

    @property
    def is_per_tensor(self) -> bool:
        """True when every channel has the same step and zero point."""
        return bool(np.all(self.scale == self.scale[0]) and np.all(self.zero_point == self.zero_point[0]))

    def max_centered(self) -> int:
        """``max_k max(|qmin_k - z_k|, |qmax_k - z_k|)``: bound on ``|q_a - z_a|``."""
        return int(max(np.max(np.abs(self.qmin.astype(np.int64) - self.zero_point)),
                       np.max(np.abs(self.qmax.astype(np.int64) - self.zero_point))))

    def expand(self, repeat: int) -> "ActQuant":
        """Per-channel parameters repeated ``repeat`` times each (im2col columns of a conv).

        Channel ``c`` becomes columns ``c * repeat ... c * repeat + repeat - 1``.

        Examples
        --------
        >>> ActQuant(scale=[1.0, 2.0], bits=[4, 8]).expand(2).bits.tolist()
        [4, 4, 8, 8]
        """
        r = int(repeat)
        return ActQuant(scale=np.repeat(self.scale, r), zero_point=np.repeat(self.zero_point, r),
                        bits=np.repeat(self.bits, r), signed=self.signed)


# ----------------------------------------------------------------- weights
@dataclass(frozen=True, eq=False)
class QuantWeights:
    """Weight codes prepared once, with per-output-channel scale and zero point.

    .. math::

        \\hat w_{nk} = (q_{w,nk} - z_{w,n})\\, s_{w,n}, \\qquad
        q_{w,nk} \\in [-2^{b-1}, 2^{b-1} - 1]

    Parameters
    ----------
    codes : numpy.ndarray
        ``int8[N, K]`` (row = output channel, contiguous along K), or when
        ``packed`` ``uint8[N, ceil(K/2)]`` in the layout of
        :mod:`aciq.kernels.packing` (field = code + :attr:`offset`).
    scale : array_like of float, shape (N,) or scalar
        Per-output-channel steps (finite, > 0).
    zero_point : array_like of int, shape (N,) or scalar
        Per-output-channel zero points in the code range (0 for symmetric).
    bits : int
        Bit width 1..8 of every code (``packed`` requires ``bits <= 4``).
    k, n : int
        Reduction length and number of output channels.
    packed : bool
        Storage layout, see above.

    Every code is checked against ``[qmin, qmax]`` once, here; the arrays are
    stored as read-only C-contiguous copies.

    Examples
    --------
    >>> import numpy as np
    >>> w = QuantWeights(codes=np.array([[1, -2, 3]], np.int8), scale=0.5,
    ...                  zero_point=0, bits=3, k=3, n=1, packed=False)
    >>> w.qmin, w.qmax, w.offset, w.scale.tolist()
    (-4, 3, 0, [0.5])
    """

    codes: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    k: int
    n: int
    packed: bool

    def __post_init__(self):
        bits = _check_bits(self.bits, "bits")
        if bits.size != 1:
            raise ValueError("bits must be one integer for the whole weight tensor")
        bits = int(bits.reshape(-1)[0])
        for name in ("k", "n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        k, n, packed = int(self.k), int(self.n), bool(self.packed)
        if packed and bits > 4:
            raise ValueError(f"packed requires bits <= 4, got bits={bits}")
        codes = self.codes
        if not isinstance(codes, np.ndarray):
            raise ValueError("codes must be a numpy array")
        want = (np.uint8, (n, packed_width(k))) if packed else (np.int8, (n, k))
        if codes.dtype != want[0]:
            raise ValueError(f"codes must have dtype {np.dtype(want[0]).name} "
                             f"({'packed' if packed else 'unpacked'}), got {codes.dtype}")
        if codes.shape != want[1]:
            raise ValueError(f"codes must have shape {want[1]} for n={n}, k={k}, got {codes.shape}")
        qmin, qmax = (int(v) for v in code_range(bits, True))
        q = unpack_int4(codes, k=k) if packed else codes
        if q.size and (int(q.min()) < qmin or int(q.max()) > qmax):
            raise ValueError(f"codes out of range [{qmin}, {qmax}] for bits={bits}")
        scale = _broadcast_1d(_check_scale(self.scale, "scale"), n, "scale")
        zp = _broadcast_1d(_check_int(self.zero_point, "zero_point"), n, "zero_point")
        if np.any(zp < qmin) or np.any(zp > qmax):
            raise ValueError(f"zero_point must lie in [{qmin}, {qmax}] for bits={bits}")
        stored = np.array(codes, copy=True, order="C")
        stored.setflags(write=False)
        object.__setattr__(self, "codes", stored)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "packed", packed)

    @property
    def qmin(self) -> int:
        """Smallest weight code, ``-2^(bits-1)``."""
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        """Largest weight code, ``2^(bits-1) - 1``."""
        return (1 << (self.bits - 1)) - 1

    @property
    def offset(self) -> int:
        """Field minus code of the stored values: 8 when packed, else 0."""
        return NIBBLE_OFFSET if self.packed else 0

    def max_centered(self) -> int:
        """Bound on ``|q_w - z_w[n]|`` over all codes the grid allows."""
        zp = self.zero_point.astype(np.int64)
        return int(max(np.max(np.abs(self.qmin - zp)), np.max(np.abs(self.qmax - zp))))

    def dequantize(self) -> np.ndarray:
        """Float64 ``[N, K]`` matrix of dequantized weights (for tests and references)."""
        q = unpack_codes(self).astype(np.float64)
        return (q - self.zero_point[:, None]) * self.scale.astype(np.float64)[:, None]


def unpack_codes(weights: QuantWeights) -> np.ndarray:
    """Signed codes ``int8[N, K]`` of ``weights`` (unpacks nibbles if needed).

    Examples
    --------
    >>> import numpy as np
    >>> unpack_codes(quantize_weights(np.eye(2, 3, dtype=np.float32), bits=2)).tolist()
    [[1, 0, 0], [0, 1, 0]]
    """
    if weights.packed:
        return unpack_int4(weights.codes, k=weights.k)
    return weights.codes


def quantize_weights(w, *, bits: int, scale=None, zero_point=0, pack=None) -> QuantWeights:
    """Quantize a float weight matrix ``[N, K]`` (or a conv weight ``[O, C, kh, kw]``).

    Codes ``q = clamp(rint(w / s_n) + z_n, -2^{b-1}, 2^{b-1}-1)`` (float32
    division, round half to even). Default ``scale``: symmetric per output
    channel, ``s_n = max_k |w_nk| / max(2^{b-1} - 1, 1)`` (1 for an all-zero
    row), ``z_n = 0``.

    .. math::

        s_n = \\frac{\\max_k |w_{nk}|}{2^{b-1} - 1}

    Parameters
    ----------
    w : array_like of float
        ``[N, K]``, or ``[N, ...]`` flattened to ``[N, prod(...)]`` like
        ``weight.reshape(out, -1)``.
    bits : int
        1..8.
    scale, zero_point : array_like, optional
        Per-output-channel step and zero point overriding the default.
    pack : bool, optional
        Pack two codes per byte; default ``bits <= 4``.

    Examples
    --------
    >>> import numpy as np
    >>> w = quantize_weights(np.array([[0.5, -1.0], [2.0, 1.0]]), bits=8, pack=False)
    >>> w.codes.tolist(), [round(float(v), 5) for v in w.scale]
    ([[64, -127], [127, 64]], [0.00787, 0.01575])
    """
    arr = np.asarray(w, dtype=np.float64)
    if arr.ndim < 2 or arr.size == 0:
        raise ValueError(f"w must be at least 2-D and non-empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("w must be finite")
    arr = arr.reshape(arr.shape[0], -1).astype(np.float32)
    n, k = arr.shape
    b = _check_bits(bits, "bits")
    if b.size != 1:
        raise ValueError("bits must be one integer")
    b = int(b.reshape(-1)[0])
    qmin, qmax = (int(v) for v in code_range(b, True))
    if scale is None:
        amax = np.max(np.abs(arr), axis=1).astype(np.float32)
        s = np.where(amax > 0, amax / np.float32(max(qmax, 1)), np.float32(1.0)).astype(np.float32)
        s = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)  # subnormal underflow guard
    else:
        s = _broadcast_1d(_check_scale(scale, "scale"), n, "scale")
    zp = _broadcast_1d(_check_int(zero_point, "zero_point"), n, "zero_point")
    v = (arr / s[:, None]).astype(np.float32)
    q = np.clip(np.rint(v).astype(np.int64) + zp[:, None], qmin, qmax).astype(np.int8)
    if pack is None:
        pack = b <= 4
    codes = pack_int4(q) if pack else q
    return QuantWeights(codes=codes, scale=s, zero_point=zp, bits=b, k=k, n=n, packed=bool(pack))


# ---------------------------------------------------------------- epilogue
@dataclass(frozen=True, eq=False)
class Epilogue:
    """Per-output-channel epilogue: bias, optional ReLU, optional requantization.

    .. math::

        y = \\max(0,\\; \\text{acc}\\cdot s + b_n)\\ (\\text{relu}), \\qquad
        q_y = \\operatorname{clamp}(\\operatorname{rint}(y / s_y) + z_y, q_{\\min}, q_{\\max})

    Parameters
    ----------
    bias : array_like of float, shape (N,), optional
        Added after scaling (e.g. the quantizer's corrected bias).
    relu : bool
    out_bits : int, optional
        1..8: return codes (uint8 if not ``out_signed``, else int8) instead of float32.
    out_scale, out_zero_point, out_signed
        Output grid (used only with ``out_bits``).

    Examples
    --------
    >>> e = Epilogue(relu=True, out_bits=4, out_scale=0.5)
    >>> e.out_range, e.out_dtype
    ((0, 15), dtype('uint8'))
    """

    bias: np.ndarray | None = None
    relu: bool = False
    out_bits: int | None = None
    out_scale: float = 1.0
    out_zero_point: int = 0
    out_signed: bool = False

    def __post_init__(self):
        if self.bias is not None:
            b = np.asarray(self.bias, dtype=np.float32)
            if b.ndim != 1 or b.size == 0:
                raise ValueError(f"bias must be 1-D and non-empty, got shape {b.shape}")
            if not np.all(np.isfinite(b)):
                raise ValueError("bias must be finite")
            b = b.copy()
            b.setflags(write=False)
            object.__setattr__(self, "bias", b)
        for name in ("relu", "out_signed"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.out_bits is not None:
            ob = _check_bits(self.out_bits, "out_bits")
            if ob.size != 1:
                raise ValueError("out_bits must be one integer")
            object.__setattr__(self, "out_bits", int(ob.reshape(-1)[0]))
        s = _check_scale(self.out_scale, "out_scale")
        if s.size != 1:
            raise ValueError("out_scale must be a scalar")
        object.__setattr__(self, "out_scale", float(s.reshape(-1)[0]))
        zp = _check_int(self.out_zero_point, "out_zero_point")
        if zp.size != 1:
            raise ValueError("out_zero_point must be a scalar")
        zp = int(zp.reshape(-1)[0])
        object.__setattr__(self, "out_zero_point", zp)
        if self.out_bits is not None:
            lo, hi = self.out_range
            if not lo <= zp <= hi:
                raise ValueError(f"out_zero_point must lie in [{lo}, {hi}], got {zp}")

    @property
    def out_range(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the output grid (requires ``out_bits``)."""
        if self.out_bits is None:
            raise ValueError("out_bits is None: the epilogue returns float32")
        lo, hi = code_range(self.out_bits, self.out_signed)
        return int(lo), int(hi)

    @property
    def out_dtype(self) -> np.dtype:
        """float32, or the code dtype (int8 signed / uint8 unsigned) with ``out_bits``."""
        if self.out_bits is None:
            return np.dtype(np.float32)
        return np.dtype(np.int8 if self.out_signed else np.uint8)

    def bias_or_zeros(self, n: int) -> np.ndarray:
        """``bias`` (checked against ``n``) or zeros, float32[n]."""
        if self.bias is None:
            return np.zeros(n, np.float32)
        if self.bias.shape[0] != n:
            raise ValueError(f"bias has length {self.bias.shape[0]}, expected N={n}")
        return self.bias


# ------------------------------------------------------------- validation
def max_integer_k(act: ActQuant, weights: QuantWeights) -> int:
    """Largest K for which integer mode cannot overflow int32.

    .. math::

        K \\cdot \\max|q_a - z_a| \\cdot \\max|q_w - z_w| \\le 2^{31} - 1

    (8-bit activations and weights: ``K <= 33025``.)
    """
    per = max(act.max_centered() * weights.max_centered(), 1)
    return _INT32_MAX // per


def check_x(x, k: int, name: str = "x") -> None:
    """A float32, 2-D, C-contiguous array with ``k`` columns (no silent copy).

    Accepts numpy arrays and device arrays (anything with ``shape``, ``dtype``
    and, for contiguity, ``flags`` or ``__cuda_array_interface__``).
    """
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{name} must be an array, got {type(x).__name__}")
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (M, K), got shape {tuple(shape)}")
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"{name} must be float32, got {dtype}")
    if shape[1] != k:
        raise ValueError(f"{name} has K={shape[1]} columns, expected K={k}")
    if shape[0] < 1:
        raise ValueError(f"{name} must have at least one row")
    if not _is_c_contiguous(x):
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray; no silent copy)")


def check_x4(x, name: str = "x") -> None:
    """A float32, 4-D (N, C, H, W), C-contiguous array (numpy or device; no silent copy)."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {shape}")
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"{name} must be float32, got {dtype}")
    if not _is_c_contiguous(x):
        raise ValueError(f"{name} must be C-contiguous (no silent copy)")


def _is_c_contiguous(x) -> bool:
    flags = getattr(x, "flags", None)
    if flags is not None:
        try:
            return bool(flags["C_CONTIGUOUS"])
        except (KeyError, TypeError):
            return bool(getattr(flags, "c_contiguous", False))
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        strides = cai.get("strides")
        if strides is None:
            return True
        itemsize = np.dtype(cai["typestr"]).itemsize
        expect, acc = [], itemsize
        for dim in reversed(cai["shape"]):
            expect.append(acc)
            acc *= dim
        return all(s == e or d == 1 for s, e, d in zip(strides, reversed(expect), cai["shape"]))
    return False


def check_plan(weights: QuantWeights, act: ActQuant, epilogue: Epilogue | None, mode: str, *,
               conv: bool = False) -> Epilogue:
    """Validate the op's parameters once (everything but ``x``); return the epilogue (default: float32).

    The one place every backend's plan checks its arguments. Raises ValueError naming the argument:
    ``weights``/``act``/``epilogue`` of the wrong type, unknown ``mode``, ``act`` and ``weights`` with
    different ``K`` (a GEMM; a conv's ``act`` has one entry per input channel, checked against ``x`` by
    :func:`aciq.kernels.conv.conv_geometry`), ``bias`` of the wrong length, integer mode with per-channel
    scales or zero points or with ``K`` beyond :func:`max_integer_k`.
    """
    if not isinstance(weights, QuantWeights):
        raise ValueError(f"weights must be a QuantWeights, got {type(weights).__name__}")
    if not isinstance(act, ActQuant):
        raise ValueError(f"act must be an ActQuant, got {type(act).__name__}")
    if epilogue is None:
        epilogue = Epilogue()
    if not isinstance(epilogue, Epilogue):
        raise ValueError(f"epilogue must be an Epilogue or None, got {type(epilogue).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not conv and act.k != weights.k:
        raise ValueError(f"act has K={act.k} channels but weights have K={weights.k}")
    epilogue.bias_or_zeros(weights.n)
    if mode == "integer":
        if not act.is_per_tensor:
            raise ValueError("mode='integer' needs a per-tensor act scale and zero_point; use mode='mixed'")
        kmax = max_integer_k(act, weights)
        if weights.k > kmax:
            raise ValueError(f"K={weights.k} may overflow the int32 accumulator in mode='integer' "
                             f"(K must be <= {kmax} for these bit widths)")
    return epilogue


def check_accumulator(mode: str, accumulator: bool) -> None:
    """Accumulators (int32) exist in integer mode only."""
    if accumulator and mode != "integer":
        raise ValueError("mode: accumulators are only defined for mode='integer'")


def check_operands(x, weights: QuantWeights, act: ActQuant, epilogue: Epilogue | None,
                   mode: str) -> Epilogue:
    """Validate one call of the op (:func:`check_plan`, then ``x`` by :func:`check_x`); return the epilogue.

    Raises ValueError naming the argument, ``x`` included: not float32 / 2-D / C-contiguous / of width ``K``.
    """
    epilogue = check_plan(weights, act, epilogue, mode)
    check_x(x, weights.k)
    return epilogue
