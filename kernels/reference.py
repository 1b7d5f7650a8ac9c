"""Numpy reference of the fused clip-quantize-GEMM op: the oracle of every backend.

Written for clarity, not speed: quantize the activations (float32 division,
round half to even, clamp: the rule of :mod:`aciq.kernels._scalar`), then

* ``mode="integer"``: int64 accumulation of ``(q_a - z_a)(q_w - z_w[n])``,
  computed through the zero-point cross terms

  .. math::

      \\text{acc}_{mn} = \\sum_k q_a q_w - z_{w,n} \\sum_k q_a - z_a \\sum_k q_{w,nk}
          + K z_a z_{w,n},

  checked to fit int32, then ``y = f32(acc) * f32(s_a s_w[n]) + bias[n]`` in
  float32 (exactly what the compiled backends do, so requantized codes agree
  bit for bit);
* ``mode="mixed"``: float64 accumulation of the dequantized activations times
  the centred weight codes, ``y = acc * s_w[n] + bias[n]`` in float64, rounded
  to float32 once.

Then ReLU and optional requantization of the float32 ``y``.

Examples
--------
>>> import numpy as np
>>> x = np.array([[0.5, -1.0, 2.0]], np.float32)
>>> w = quantize_weights(np.array([[1.0, 1.0, 1.0]]), bits=8)
>>> act = ActQuant.per_tensor(0.25, bits=8, signed=True, k=3)
>>> quantize_activations(x, act).tolist()
[[2, -4, 8]]
>>> qgemm_int32(x, w, act).tolist(), np.round(qgemm(x, w, act, mode="integer"), 4).tolist()
([[762]], [[1.5]])
"""
from __future__ import annotations

import numpy as np

from .conv import ConvGeometry, act_of_group, group_slice, im2col
from .spec import (ActQuant, Epilogue, QuantWeights, check_accumulator, check_operands, check_plan,  # noqa: F401
                   quantize_weights, unpack_codes)

__all__ = ["quantize_activations", "quantize_values", "fake_quantize", "qgemm", "qgemm_int32", "qconv2d", "Plan"]

_CLAMP = np.float32(65536.0)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def quantize_values(x, scale, zero_point, qmin, qmax) -> np.ndarray:
    """Codes of ``x`` (broadcasting): ``clamp(rint(f32(x / s)) + z, qmin, qmax)``.

    Bit-identical to :func:`aciq.kernels._scalar.quantize_code` (float32
    division, half to even, NaN -> ``qmin``, ``+-inf`` -> the ends).

    .. math::

        q = \\operatorname{clamp}(\\operatorname{rint}(x / s) + z, q_{\\min}, q_{\\max})

    Examples
    --------
    >>> quantize_values(np.float32([0.5, 1.5, 2.5, np.nan, np.inf]), 1.0, 0, -8, 7).tolist()
    [0, 2, 2, -8, 7]
    """
    with np.errstate(invalid="ignore", over="ignore"):
        v = (np.asarray(x, np.float32) / np.asarray(scale, np.float32)).astype(np.float32)
        v = np.where(v > -_CLAMP, v, -_CLAMP)
        v = np.minimum(v, _CLAMP)
    q = np.rint(v).astype(np.int64) + np.asarray(zero_point, np.int64)
    return np.clip(q, qmin, qmax)


def quantize_activations(x, act: ActQuant) -> np.ndarray:
    """Activation codes ``int64[M, K]`` of ``x[M, K]`` under ``act`` (per input channel k).

    .. math::

        q_{mk} = \\operatorname{clamp}(\\operatorname{rint}(x_{mk} / s_k) + z_k, q_{\\min,k}, q_{\\max,k})

    Examples
    --------
    >>> a = ActQuant(scale=[1.0, 1.0], zero_point=0, bits=[2, 8], signed=False)
    >>> quantize_activations(np.float32([[9.0, 9.0]]), a).tolist()
    [[3, 9]]
    """
    return quantize_values(x, act.scale, act.zero_point, act.qmin, act.qmax)


def fake_quantize(x, act: ActQuant) -> np.ndarray:
    """Dequantized activations ``(q - z_k) s_k`` as float32 (the values the op multiplies).

    .. math::

        \\hat a_{mk} = (q_{mk} - z_k)\\, s_k

    Examples
    --------
    >>> a = ActQuant.per_tensor(0.5, bits=4, signed=True, k=2)
    >>> fake_quantize(np.float32([[0.3, -9.0]]), a).tolist()
    [[0.5, -4.0]]
    """
    q = quantize_activations(x, act)
    return ((q - act.zero_point).astype(np.float32) * act.scale).astype(np.float32)


def qgemm_int32(x, weights: QuantWeights, act: ActQuant) -> np.ndarray:
    """Integer-mode accumulators ``int32[M, N] = sum_k (q_a - z_a)(q_w - z_w[n])``.

    Computed in int64 through the zero-point cross terms (see the module
    docstring) and checked against the int32 range.

    Examples
    --------
    >>> w = QuantWeights(codes=np.int8([[1, 2]]), scale=1.0, zero_point=1, bits=8, k=2, n=1,
    ...                  packed=False)
    >>> a = ActQuant.per_tensor(1.0, zero_point=2, bits=8, k=2)
    >>> qgemm_int32(np.float32([[5.0, 1.0]]), w, a).tolist()  # (7-2)(1-1) + (3-2)(2-1)
    [[1]]
    """
    check_operands(x, weights, act, None, "integer")
    qa = quantize_activations(np.asarray(x), act)
    qw = unpack_codes(weights).astype(np.int64)
    za = int(act.zero_point[0])
    zw = weights.zero_point.astype(np.int64)
    k = weights.k
    acc = (qa @ qw.T
           - zw[None, :] * qa.sum(axis=1, keepdims=True)
           - za * qw.sum(axis=1)[None, :]
           + k * za * zw[None, :])
    if acc.size and (acc.min() < _INT32_MIN or acc.max() > _INT32_MAX):  # pragma: no cover
        raise AssertionError("int32 overflow despite the K bound")
    return acc.astype(np.int32)


def _requantize(y: np.ndarray, epilogue: Epilogue) -> np.ndarray:
    lo, hi = epilogue.out_range
    q = quantize_values(y, epilogue.out_scale, epilogue.out_zero_point, lo, hi)
    return q.astype(epilogue.out_dtype)


def qgemm(x, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
          mode: str = "mixed", out=None) -> np.ndarray:
    """Reference fused op ``y = epilogue(sum_k a_hat[m, k] w_hat[n, k])``.

    .. math::

        y_{mn} = \\operatorname{epilogue}\\Big(s_{w,n} \\sum_k \\hat a_{mk} (q_{w,nk} - z_{w,n})\\Big)

    Parameters
    ----------
    x : numpy.ndarray of float32, shape (M, K), C-contiguous
    weights : QuantWeights
    act : ActQuant
    epilogue : Epilogue, optional
    mode : {"mixed", "integer"}
    out : numpy.ndarray, optional
        Destination of the result's shape and dtype.

    Returns
    -------
    float32 ``[M, N]``, or codes (uint8/int8) with ``epilogue.out_bits``.

    Examples
    --------
    >>> w = quantize_weights(np.float32([[1.0, -1.0]]), bits=4)
    >>> a = ActQuant(scale=[0.5, 0.25], bits=8, signed=True)
    >>> qgemm(np.float32([[1.0, 1.0]]), w, a).tolist()
    [[0.0]]
    """
    epilogue = check_operands(x, weights, act, epilogue, mode)
    x = np.asarray(x)
    n = weights.n
    bias = epilogue.bias_or_zeros(n)
    if mode == "integer":
        acc = qgemm_int32(x, weights, act)
        s = (np.float32(act.scale[0]) * weights.scale).astype(np.float32)
        y = (acc.astype(np.float32) * s[None, :]).astype(np.float32)
        y = (y + bias[None, :]).astype(np.float32)
    else:
        a_hat = fake_quantize(x, act).astype(np.float64)
        wc = unpack_codes(weights).astype(np.float64) - weights.zero_point[:, None]
        acc = a_hat @ wc.T
        y = (acc * weights.scale.astype(np.float64)[None, :] + bias[None, :]).astype(np.float32)
    if epilogue.relu:
        y = np.where(y < 0, np.float32(0.0), y).astype(np.float32)
    result = y if epilogue.out_bits is None else _requantize(y, epilogue)
    if out is None:
        return result
    _check_out(out, result)
    out[...] = result
    return out


def _check_out(out, result: np.ndarray) -> None:
    if not isinstance(out, np.ndarray):
        raise ValueError(f"out must be a numpy array, got {type(out).__name__}")
    if out.shape != result.shape or out.dtype != result.dtype:
        raise ValueError(f"out must have shape {result.shape} and dtype {result.dtype}, "
                         f"got {out.shape} {out.dtype}")
    if not out.flags["C_CONTIGUOUS"] or not out.flags["WRITEABLE"]:
        raise ValueError("out must be a writeable C-contiguous array")


def qconv2d(x, weights: QuantWeights, act: ActQuant, geom: ConvGeometry, *, epilogue: Epilogue | None = None,
            mode: str = "mixed", accumulator: bool = False, out=None) -> np.ndarray:
    """Reference conv: explicit numpy im2col, then :func:`qgemm` (or :func:`qgemm_int32`) per group.

    ``geom`` comes from :func:`aciq.kernels.conv.conv_geometry` (checked against ``x``'s shape there).
    """
    epilogue = check_plan(weights, act, epilogue, mode, conv=True)
    check_accumulator(mode, accumulator)
    x = np.asarray(x)
    nb = x.shape[0]
    ho, wo = geom.out_hw
    kh, kw = geom.kernel_size
    cg, groups = geom.c_per_group, geom.groups
    parts = []
    for g in range(groups):
        cols = im2col(x[:, g * cg:(g + 1) * cg], kernel_size=geom.kernel_size, stride=geom.stride,
                      padding=geom.padding, dilation=geom.dilation)
        cols = np.ascontiguousarray(cols, dtype=np.float32)
        w_g, e_g = group_slice(weights, epilogue, g, groups)
        a_g = act_of_group(act, g, cg, kh * kw)
        if accumulator:
            parts.append(qgemm_int32(cols, w_g, a_g))
        else:
            parts.append(qgemm(cols, w_g, a_g, epilogue=e_g, mode=mode))
    y = np.concatenate(parts, axis=1)  # [N*H'*W', O]
    result = np.ascontiguousarray(y.reshape(nb, ho, wo, -1).transpose(0, 3, 1, 2))
    if out is None:
        return result
    _check_out(out, result)
    out[...] = result
    return out


class Plan:
    """The reference backend behind the seam of :mod:`aciq.kernels.api`: nothing to prepare, each call runs
    the numpy oracle (:func:`qgemm`, :func:`qconv2d`)."""

    def __init__(self, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
                 mode: str = "mixed", groups: int = 1, kernel_size=None):
        self.epilogue = check_plan(weights, act, epilogue, mode, conv=kernel_size is not None)
        self.weights, self.act, self.mode = weights, act, mode

    def linear(self, x, *, out=None, accumulator: bool = False):
        check_accumulator(self.mode, accumulator)
        if accumulator:
            return qgemm_int32(x, self.weights, self.act)
        return qgemm(x, self.weights, self.act, epilogue=self.epilogue, mode=self.mode, out=out)

    def conv(self, x, geom: ConvGeometry, *, out=None, accumulator: bool = False):
        return qconv2d(x, self.weights, self.act, geom, epilogue=self.epilogue, mode=self.mode,
                       accumulator=accumulator, out=out)
