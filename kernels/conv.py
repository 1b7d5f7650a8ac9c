"""Conv2d through the fused GEMM: geometry, im2col and group slicing, shared by every backend.

A conv weight ``[O, C/groups, kh, kw]`` is quantized as the matrix
``weight.reshape(O, -1)`` (``K = C/groups * kh * kw``, order ``(c, ki, kj)``);
the activation quantizer has one set of parameters per input channel ``c``,
used by every im2col column of that channel. Output ``[N, O, H', W']`` with

.. math::

    H' = \\Big\\lfloor \\frac{H + 2p_h - d_h (k_h - 1) - 1}{s_h} \\Big\\rfloor + 1

Zero padding contributes exactly 0 after dequantization (0.0 quantizes to the
zero point, whose dequantized value is 0), which is what
``F.conv2d(fake_quantize(x), ...)`` with zero padding computes.

How each backend lowers the conv (its ``qconv2d`` and ``Plan.conv``; chosen by measurement, see the report of
``benchmarks/bench_kernels_cpu.py``):

* ``reference``: explicit numpy im2col (:func:`im2col`), then :func:`aciq.kernels.reference.qgemm`
  per group -- clear, slow, the oracle;
* ``cpu``: implicit GEMM (:class:`aciq.kernels.cpu.CpuQGemm`): the input is
  quantized once per element into a zero-padded tensor of codes, and each task
  gathers its im2col tile from it into cache-resident scratch (an explicit
  im2col would write and re-read ``kh * kw`` times the input). Two
  orientations: *pixels* (vector along output pixels, NCHW codes; stride-1
  convs on wide maps skip the gather altogether as ``kh * kw`` shifted GEMMs
  over the padded planes, 1x1 stride-1 convs use the codes in place) and
  *channels* (vector along output channels, NHWC codes; few output pixels);
* ``cuda``: im2col on the device (a small gather kernel, one group at a time),
  the CUDA fused GEMM, and a scatter to NCHW (:class:`aciq.kernels.cuda.CudaPlan`).

Examples
--------
>>> conv_output_size((7, 7), kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1))
(4, 4)
>>> cols = im2col(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3), kernel_size=(2, 2),
...               stride=(1, 1), padding=(0, 0), dilation=(1, 1))
>>> cols.shape, cols[0].tolist()
((4, 4), [0.0, 1.0, 3.0, 4.0])
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .spec import ActQuant, Epilogue, QuantWeights

__all__ = ["pair", "conv_output_size", "infer_kernel_size", "im2col", "ConvGeometry",
           "conv_geometry", "group_slice", "act_of_group"]


def pair(value, name: str, *, low: int) -> tuple[int, int]:
    """``value`` as two ints ``>= low`` (an int is repeated).

    Examples
    --------
    >>> pair(2, "stride", low=1), pair((1, 0), "padding", low=0)
    ((2, 2), (1, 0))
    """
    vals = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(vals) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    out = []
    for v in vals:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name} must be integers >= {low}, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def conv_output_size(hw, *, kernel_size, stride, padding, dilation) -> tuple[int, int]:
    """Output ``(H', W')`` of a conv (the formula of the module docstring).

    Examples
    --------
    >>> conv_output_size((56, 56), kernel_size=(1, 1), stride=(1, 1), padding=(0, 0),
    ...                  dilation=(1, 1))
    (56, 56)
    """
    return tuple((hw[i] + 2 * padding[i] - dilation[i] * (kernel_size[i] - 1) - 1) // stride[i] + 1
                 for i in range(2))


def infer_kernel_size(k: int, c_per_group: int, kernel_size=None) -> tuple[int, int]:
    """``(kh, kw)`` from a weight matrix of ``K = c_per_group * kh * kw`` columns.

    ``kernel_size=None`` assumes a square kernel.

    Examples
    --------
    >>> infer_kernel_size(576, 64), infer_kernel_size(18, 2, (1, 9))
    ((3, 3), (1, 9))
    """
    if kernel_size is not None:
        kh, kw = pair(kernel_size, "kernel_size", low=1)
        if c_per_group * kh * kw != k:
            raise ValueError(f"kernel_size {(kh, kw)} with C/groups={c_per_group} needs K="
                             f"{c_per_group * kh * kw}, but weights have K={k}")
        return kh, kw
    if k % c_per_group:
        raise ValueError(f"weights K={k} is not a multiple of C/groups={c_per_group}")
    taps = k // c_per_group
    side = math.isqrt(taps)
    if side * side != taps:
        raise ValueError(f"kernel_size: K/(C/groups)={taps} taps is not a square; pass kernel_size")
    return side, side


def im2col(x, *, kernel_size, stride, padding, dilation) -> np.ndarray:
    """Explicit im2col: ``[N*H'*W', C*kh*kw]`` with columns in ``(c, ki, kj)`` order.

    .. math::

        \\text{cols}[(b, o_h, o_w), (c, i, j)] = x_{\\text{pad}}[b, c, o_h s_h + i d_h, o_w s_w + j d_w]

    Examples
    --------
    >>> im2col(np.ones((1, 2, 2, 2), np.float32), kernel_size=(1, 1), stride=(1, 1),
    ...        padding=(0, 0), dilation=(1, 1)).shape
    (4, 2)
    """
    x = np.asarray(x)
    nb, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    ho, wo = conv_output_size((h, w), kernel_size=kernel_size, stride=stride, padding=padding,
                              dilation=dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((nb, ho, wo, c, kh, kw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            cols[:, :, :, :, i, j] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(nb * ho * wo, c * kh * kw)


@dataclass(frozen=True)
class ConvGeometry:
    """Validated conv parameters (pairs of ints) and the derived sizes."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    c_per_group: int
    o_per_group: int
    out_hw: tuple[int, int]


def conv_geometry(x_shape, weights: QuantWeights, act: ActQuant, *, stride=1, padding=0,
                  dilation=1, groups=1, kernel_size=None) -> ConvGeometry:
    """Check a conv call and derive its geometry (ValueError naming the argument).

    Examples
    --------
    >>> from aciq.kernels.spec import quantize_weights
    >>> w = quantize_weights(np.ones((4, 2, 3, 3), np.float32), bits=8)
    >>> g = conv_geometry((1, 4, 8, 8), w, ActQuant.per_tensor(1.0, k=4), groups=2, padding=1)
    >>> g.kernel_size, g.out_hw, g.c_per_group, g.o_per_group
    ((3, 3), (8, 8), 2, 2)
    """
    if not isinstance(weights, QuantWeights):
        raise ValueError(f"weights must be a QuantWeights, got {type(weights).__name__}")
    if not isinstance(act, ActQuant):
        raise ValueError(f"act must be an ActQuant, got {type(act).__name__}")
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    groups = int(groups)
    nb, c, h, w = (int(v) for v in x_shape)
    if c % groups:
        raise ValueError(f"groups={groups} does not divide the C={c} input channels of x")
    if weights.n % groups:
        raise ValueError(f"groups={groups} does not divide the {weights.n} output channels of weights")
    if act.k != c:
        raise ValueError(f"act has K={act.k} channels but x has C={c} (act is per input channel)")
    cg = c // groups
    ks = infer_kernel_size(weights.k, cg, kernel_size)
    st = pair(stride, "stride", low=1)
    pd = pair(padding, "padding", low=0)
    dl = pair(dilation, "dilation", low=1)
    ho, wo = conv_output_size((h, w), kernel_size=ks, stride=st, padding=pd, dilation=dl)
    if ho < 1 or wo < 1 or nb < 1:
        raise ValueError(f"x of shape {tuple(x_shape)} gives an empty output for kernel_size={ks}, "
                         f"padding={pd}, dilation={dl}")
    return ConvGeometry(kernel_size=ks, stride=st, padding=pd, dilation=dl, groups=groups,
                        c_per_group=cg, o_per_group=weights.n // groups, out_hw=(ho, wo))


def group_slice(weights: QuantWeights, epilogue: Epilogue, g: int, groups: int):
    """The ``QuantWeights`` and ``Epilogue`` of output channels of group ``g``."""
    og = weights.n // groups
    rows = slice(g * og, (g + 1) * og)
    w = QuantWeights(codes=weights.codes[rows], scale=weights.scale[rows],
                     zero_point=weights.zero_point[rows], bits=weights.bits, k=weights.k, n=og,
                     packed=weights.packed)
    bias = None if epilogue.bias is None else epilogue.bias[rows]
    e = Epilogue(bias=bias, relu=epilogue.relu, out_bits=epilogue.out_bits,
                 out_scale=epilogue.out_scale, out_zero_point=epilogue.out_zero_point,
                 out_signed=epilogue.out_signed)
    return w, e


def act_of_group(act: ActQuant, g: int, cg: int, taps: int) -> ActQuant:
    """The activation quantizer of group ``g``'s im2col columns (each channel repeated ``taps`` times)."""
    sl = slice(g * cg, (g + 1) * cg)
    sub = ActQuant(scale=act.scale[sl], zero_point=act.zero_point[sl], bits=act.bits[sl],
                   signed=act.signed)
    return sub.expand(taps)
