"""CUDA backend of the fused clip-quantize-GEMM op (numba-cuda): the host side.

The backend seam of :mod:`aciq.kernels.api` (same names as ``reference`` and ``cpu``):

* ``Plan`` (:class:`CudaPlan`): the op with every parameter uploaded once; ``linear(x)`` and
  ``conv(x, geom)``; what layers use;
* ``qgemm(x, weights, act, *, epilogue=None, mode="mixed", out=None)`` -> float32 ``[M, N]`` (or uint8/int8
  codes when ``epilogue.out_bits`` is set); ``qgemm_int32(x, weights, act)`` -> the int32 accumulators of
  integer mode; ``qconv2d(x, weights, act, geom, ...)``: one-shot calls that build a plan each time.

:class:`CudaQGemm` is the GEMM plan underneath (one launch configuration per ``M``, split-K scratch kept);
the kernels themselves are in :mod:`aciq.kernels.cuda_kernels`.

Inputs: numpy arrays (copied to the device; the result comes back as numpy) or device arrays (numba
``DeviceNDArray`` or anything with ``__cuda_array_interface__``, e.g. a CUDA torch tensor, viewed without a
copy and without synchronising: the launches go to ``stream``, which must be the stream that produced the
input, e.g. ``cuda.external_stream(torch.cuda.current_stream().cuda_stream)``). Device input gives a device
result (written into ``out`` when given: no device allocation on the hot path). ``x`` must be float32 and
C-contiguous (no silent copy).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda
from numba.cuda.cudadrv import devicearray as _devicearray

from ._scalar import qrange
from .conv import ConvGeometry, act_of_group, group_slice
from .cuda_kernels import (BK, BLOCK, GEMV_MAX_M, GEMV_WARPS, OUT_ACC, OUT_CODE, OUT_FLOAT, OUT_PARTIAL, SIM,
                           TILE_NAMES, TILES, gemv_kernel, gemv_rows, im2col_kernel, scatter_kernel,
                           splitk_reduce_kernel, tiled_kernel)
from .packing import NIBBLE_OFFSET
from .spec import ActQuant, Epilogue, QuantWeights, check_accumulator, check_plan, check_x

__all__ = ["qgemm", "qgemm_int32", "qconv2d", "Plan", "CudaPlan", "CudaQGemm", "sm_count"]


def sm_count():
    """Multiprocessors of the current GPU (4 under the simulator)."""
    if SIM:
        return 4
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:  # pragma: no cover - no usable device
        return 132


def _is_device(a):
    """True for numba device arrays and anything with ``__cuda_array_interface__``."""
    return _devicearray.is_cuda_ndarray(a) or hasattr(a, "__cuda_array_interface__")


def _as_device(a):
    """A numba device array viewing ``a`` (no copy, no synchronisation: the caller orders the stream)."""
    return a if _devicearray.is_cuda_ndarray(a) else cuda.as_cuda_array(a, sync=False)


def _check_out(out, shape, dtype):
    """``out`` of the result's shape and dtype, C-contiguous, as a device array (None for a host ``out``)."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if np.dtype(out.dtype) != dtype:
        raise ValueError(f"out must be {dtype}, got {np.dtype(out.dtype)}")
    if _is_device(out):
        od = _as_device(out)
        if not od.is_c_contiguous():
            raise ValueError("out must be C-contiguous")
        return od
    if not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    return None


def _host(a, dtype):
    return np.ascontiguousarray(np.asarray(a), dtype=dtype).reshape(-1)


class CudaQGemm:
    """The fused GEMM with its parameters uploaded to the device once.

    ``CudaQGemm(weights, act, epilogue=None, mode="mixed")(x)`` equals
    ``qgemm(x, weights, act, epilogue=epilogue, mode=mode)``; see :mod:`aciq.kernels.cuda_kernels` for the
    kernels and the epilogue.

    Parameters
    ----------
    weights : QuantWeights
        ``codes`` int8 ``[N, K]`` or packed uint8 ``[N, ceil(K/2)]``, per output channel ``scale`` and
        ``zero_point``.
    act : ActQuant
        Per input channel ``scale``, ``zero_point``, ``bits`` and ``signed``.
    epilogue : Epilogue or None
        Bias, ReLU and optional requantization of the output.
    mode : {"mixed", "integer"}
        ``integer`` needs one activation scale and zero point for all k.
    split_k : int, optional
        Force the split-K factor of the tiled kernels (default: automatic).
    tile : {None, "tiled32", "tiled64", "tiled128"}
        Force a tiled kernel (default: automatic, ``gemv`` for M <= 4).
    """

    def __init__(self, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
                 mode: str = "mixed", split_k=None, tile=None):
        ep = check_plan(weights, act, epilogue, mode)   # validation lives in spec, for every backend
        self.mode = mode
        self.integer = mode == "integer"
        if split_k is not None and (isinstance(split_k, bool) or int(split_k) != split_k or split_k < 1):
            raise ValueError(f"split_k must be None or a positive integer, got {split_k!r}")
        self.split_k = split_k
        if tile not in (None,) + TILE_NAMES:
            raise ValueError(f"tile must be None or one of {TILE_NAMES}, got {tile!r}")
        self.tile = tile
        self._part, self._part_key = None, None
        self._sms = sm_count()
        k, n = int(weights.k), int(weights.n)
        self.k, self.n = k, n
        packed = bool(weights.packed)
        self.packed = packed
        offset = NIBBLE_OFFSET if packed else 0
        self.offset = offset
        self._a = tuple(cuda.to_device(_host(v, dt)) for v, dt in ((act.scale, np.float32),
                                                                     (act.zero_point, np.int32),
                                                                     (act.qmin, np.int32), (act.qmax, np.int32)))
        codes = np.ascontiguousarray(weights.codes)
        self._wq = cuda.to_device(codes)
        # 32-bit word view for the GEMV path (rows must be whole, aligned words)
        row_bytes = codes.shape[1]
        ptr = self._wq.__cuda_array_interface__["data"][0] if not SIM else 0
        self._ww = self._wq.view(np.uint32) if (row_bytes % 4 == 0 and ptr % 4 == 0 and row_bytes > 0) else None
        self.relu = ep.relu
        self.out_bits = ep.out_bits
        if ep.out_bits is not None:
            lo, hi = qrange(ep.out_bits, ep.out_signed)
            self._o = (np.float32(ep.out_scale), np.int32(ep.out_zero_point), np.int32(lo), np.int32(hi))
        else:
            self._o = (np.float32(1.0), np.int32(0), np.int32(0), np.int32(0))
        self.out_dtype = ep.out_dtype
        self._w = (cuda.to_device(_host(weights.zero_point, np.int32)),
                   cuda.to_device(_host(weights.scale, np.float32)), np.int32(offset))
        # the small-M kernel reads int8 codes as fields byte ^ 128 = code + 128
        self._w_gemv = self._w[:2] + (np.int32(offset if packed else 128),)
        self._bias = cuda.to_device(ep.bias_or_zeros(n))

    def kernel_for(self, m):
        """``(path, splits, k_split)`` for ``M = m``.

        ``path`` is ``"gemv"`` (``m <= 4`` and weight rows of whole 32-bit words),
        else ``"tiled64"``. ``"tiled32"`` and ``"tiled128"`` only when forced
        (``tile=``): on an H200 (benchmarks/results/gpu-h200-run1/2) tiled64 beat
        tiled128 on every ResNet-50 shape, and beat tiled32 on all but one (a 1x1
        64->64 layer at batch 1), small under-filled grids included, once split-K
        fills the SMs. A launch with fewer tiles than SMs splits K over
        ``splits = min(ceil(2 SMs / tiles), ceil(K / 128))`` blocks of ``k_split``
        (a multiple of the K-tile) whose partials a second small kernel reduces in
        fixed order (into a scratch buffer the plan keeps).
        """
        if 1 <= m <= GEMV_MAX_M and self._ww is not None and self.tile is None:
            return "gemv", 1, self.k
        path = self.tile if self.tile is not None else "tiled64"
        bm, bn = TILES[path][:2]
        if self.split_k is not None:
            splits = int(self.split_k)
        else:
            tiles = math.ceil(self.n / bn) * math.ceil(m / bm)
            splits = 1
            if tiles < self._sms:
                splits = max(1, min(math.ceil(2 * self._sms / tiles), math.ceil(self.k / (8 * BK))))
        k_split = math.ceil(math.ceil(self.k / max(splits, 1)) / BK) * BK
        splits = math.ceil(self.k / k_split)
        return path, splits, (k_split if splits > 1 else self.k)

    def _partials(self, splits, m, stream):
        """The split-K scratch ``[splits, m, n]``, allocated once per shape and reused.

        A per-call ``cuda.device_array`` here cost ~0.6 ms per call on an H200
        (allocation / deferred frees synchronise the device).
        """
        key = (splits, m)
        if self._part_key != key:
            self._part = cuda.device_array((splits, m, self.n), np.int32 if self.integer else np.float32,
                                           stream=stream)
            self._part_key = key
        return self._part

    def __call__(self, x, *, out=None, accumulator: bool = False, stream=0):
        """Run the op on ``x`` float32 ``[M, K]``; see :func:`qgemm`.

        ``accumulator=True`` (integer mode) returns the int32 accumulators instead.
        No host round trip and no device allocation when ``x`` and ``out`` are device arrays (the split-K
        scratch is kept by the plan, so one plan must not run on several streams at once).
        """
        check_accumulator(self.mode, accumulator)
        on_host = not _is_device(x)
        if on_host:
            x = np.asarray(x)
        check_x(x, self.k)   # the same checks and messages as the other backends; never copies
        xd = cuda.to_device(x, stream=stream) if on_host else _as_device(x)
        m = xd.shape[0]
        dtype = np.dtype(np.int32) if accumulator else self.out_dtype
        od = None if out is None else _check_out(out, (m, self.n), dtype)
        if od is None:
            od = cuda.device_array((m, self.n), dtype=dtype, stream=stream)
        self.launch(xd, od, accumulator=accumulator, stream=stream)
        if out is not None and not _is_device(out):
            od.copy_to_host(out, stream=stream)
            return out
        if on_host and out is None:
            return od.copy_to_host(stream=stream)
        return out if out is not None else od

    def launch(self, xd, od, *, accumulator: bool = False, stream=0) -> None:
        """Launch the kernels for device arrays ``xd [M, K]`` and ``od [M, N]`` (checked by the caller)."""
        m = xd.shape[0]
        kind = OUT_ACC if accumulator else (OUT_CODE if self.out_bits is not None else OUT_FLOAT)
        path, splits, k_split = self.kernel_for(m)
        k_split = np.int32(k_split)
        if path == "gemv":
            kern = gemv_kernel(self.integer, self.packed, kind, m)
            kern[(math.ceil(self.n / gemv_rows(m)),), (GEMV_WARPS * 32,), stream](
                xd, self._ww, *self._a, *self._w_gemv, self._bias, self.relu, *self._o, od)
            return
        bm, bn = TILES[path][:2]
        grid = (math.ceil(self.n / bn), math.ceil(m / bm), splits)
        if splits == 1:
            kern = tiled_kernel(self.integer, self.packed, kind, path)
            kern[grid, BLOCK, stream](xd, self._wq, *self._a, *self._w, self._bias, self.relu, *self._o, k_split,
                                      od)
            return
        part = self._partials(splits, m, stream)
        kern = tiled_kernel(self.integer, self.packed, OUT_PARTIAL, path)
        kern[grid, BLOCK, stream](xd, self._wq, *self._a, *self._w, self._bias, self.relu, *self._o, k_split,
                                  part)
        red = splitk_reduce_kernel(self.integer, kind)
        red[(math.ceil(m * self.n / 256),), (256,), stream](part, self._a[0], self._w[1], self._bias, self.relu,
                                                            *self._o, od)


class CudaPlan:
    """The backend seam's plan on the GPU: ``linear(x)`` and ``conv(x, geom)``, everything uploaded once.

    A conv runs per group: a small gather kernel writes the group's im2col matrix into a scratch buffer,
    the group's :class:`CudaQGemm` multiplies it, a scatter kernel writes the NCHW output. The per-group
    GEMM plans are built once; the scratch (im2col matrix, GEMM result) once per input shape. With device
    ``x`` and ``out`` nothing is allocated and nothing comes back to the host.
    """

    def __init__(self, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
                 mode: str = "mixed", groups: int = 1, kernel_size=None, split_k=None, tile=None):
        self.epilogue = check_plan(weights, act, epilogue, mode, conv=kernel_size is not None)
        self.weights, self.act, self.mode = weights, act, mode
        self.groups, self.kernel_size = int(groups), kernel_size
        self._options = {"split_k": split_k, "tile": tile}
        self._gemm = None if kernel_size is not None else CudaQGemm(weights, act, epilogue=self.epilogue,
                                                                    mode=mode, **self._options)
        self._groups = None
        self._scratch = {}

    def linear(self, x, *, out=None, accumulator: bool = False, stream=0):
        if self._gemm is None:
            raise ValueError("this plan holds a conv; call conv")
        return self._gemm(x, out=out, accumulator=accumulator, stream=stream)

    def _group_plans(self, geom: ConvGeometry):
        if self._groups is None:
            kh, kw = geom.kernel_size
            plans = []
            for g in range(geom.groups):
                w_g, e_g = group_slice(self.weights, self.epilogue, g, geom.groups)
                a_g = act_of_group(self.act, g, geom.c_per_group, kh * kw)
                plans.append(CudaQGemm(w_g, a_g, epilogue=e_g, mode=self.mode, **self._options))
            self._groups = plans
        return self._groups

    def conv(self, x, geom: ConvGeometry, *, out=None, accumulator: bool = False, stream=0):
        """``y[N, O, H', W']`` for ``x[N, C, H, W]`` (``geom`` from :func:`aciq.kernels.conv.conv_geometry`)."""
        if self.kernel_size is None:
            raise ValueError("this plan holds a linear layer; call linear")
        check_accumulator(self.mode, accumulator)
        if tuple(geom.kernel_size) != tuple(self.kernel_size) or geom.groups != self.groups:
            raise ValueError(f"geom has kernel_size={geom.kernel_size}, groups={geom.groups}; this plan "
                             f"{self.kernel_size}, {self.groups}")
        on_host = not _is_device(x)
        if on_host:
            x = np.asarray(x)
        if len(x.shape) != 4 or np.dtype(x.dtype) != np.float32:
            raise ValueError(f"x must be float32 (N, C, H, W), got {np.dtype(x.dtype)} {tuple(x.shape)}")
        xd = cuda.to_device(np.ascontiguousarray(x), stream=stream) if on_host else _as_device(x)
        if not xd.is_c_contiguous():
            raise ValueError("x must be C-contiguous (no silent copy)")
        nb = xd.shape[0]
        ho, wo = geom.out_hw
        dtype = np.dtype(np.int32) if accumulator else self.epilogue.out_dtype
        shape = (nb, self.weights.n, ho, wo)
        od = None if out is None else _check_out(out, shape, dtype)
        if od is None:
            od = cuda.device_array(shape, dtype=dtype, stream=stream)
        plans = self._group_plans(geom)
        cols, y = self._buffers(tuple(xd.shape), geom, dtype, stream)
        kh, kw = geom.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
        cg, og, m_total = geom.c_per_group, geom.o_per_group, cols.shape[0]
        flat = od.reshape(nb, self.weights.n, ho * wo)
        threads = 256
        for g, plan in enumerate(plans):
            im2col_kernel[(cols.size + threads - 1) // threads, threads, stream](
                xd, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
            plan.launch(cols, y, accumulator=accumulator, stream=stream)
            scatter_kernel[(m_total * og + threads - 1) // threads, threads, stream](y, g * og, ho * wo, flat)
        if out is not None and not _is_device(out):
            od.copy_to_host(out, stream=stream)
            return out
        if on_host and out is None:
            return od.copy_to_host(stream=stream)
        return out if out is not None else od

    def _buffers(self, x_shape, geom, dtype, stream):
        """The im2col matrix and the GEMM result of one group, kept per input shape (and output dtype)."""
        key = (x_shape, np.dtype(dtype).str)
        if key not in self._scratch:
            kh, kw = geom.kernel_size
            m_total = x_shape[0] * geom.out_hw[0] * geom.out_hw[1]
            self._scratch[key] = (cuda.device_array((m_total, geom.c_per_group * kh * kw), np.float32,
                                                    stream=stream),
                                  cuda.device_array((m_total, geom.o_per_group), dtype, stream=stream))
        return self._scratch[key]


Plan = CudaPlan
"""The backend seam's plan class (``linear(x)``, ``conv(x, geom)``): see :mod:`aciq.kernels.api`."""


def qgemm(x, weights, act, *, epilogue=None, mode="mixed", out=None):
    """Fused clip-quantize-GEMM on the GPU.

    .. math::

        y_{mn} = \\mathrm{epilogue}\\Big(\\sum_k \\hat a(q_a[m, k])\\,\\hat w(q_w[k, n])\\Big)

    Same signature and result as the ``reference`` and ``cpu`` backends (codes and
    int32 accumulators bit-exact in integer mode; float32 within rounding in mixed
    mode). Device input gives a device ``DeviceNDArray``; host input gives numpy.
    Uploads the parameter arrays on every call: keep a :class:`CudaPlan` for
    repeated calls.
    """
    return CudaQGemm(weights, act, epilogue=epilogue, mode=mode)(x, out=out)


def qgemm_int32(x, weights, act):
    """Int32 accumulators ``sum_k (q_a - z_a)(q_w - z_w[n])`` of integer mode."""
    return CudaQGemm(weights, act, mode="integer")(x, accumulator=True)


def qconv2d(x, weights, act, geom: ConvGeometry, *, epilogue=None, mode="mixed", accumulator=False, out=None):
    """Conv2d on the GPU (``geom`` from :func:`aciq.kernels.conv.conv_geometry`); host input gives numpy."""
    plan = CudaPlan(weights, act, epilogue=epilogue, mode=mode, groups=geom.groups, kernel_size=geom.kernel_size)
    return plan.conv(x, geom, accumulator=accumulator, out=out)
