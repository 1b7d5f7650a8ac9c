"""One signature, three backends: ``qgemm``, ``qconv2d`` and the layer wrappers.

``backend=None`` dispatches on where the data lives: ``"cuda"`` when ``x`` has
``__cuda_array_interface__`` (a numba device array, a CUDA torch tensor, a CuPy
array), else ``"cpu"``. ``"reference"`` (numpy), ``"cpu"`` (numba) and
``"cuda"`` (numba-cuda) can be named explicitly.

Inputs are never copied silently: ``x`` must be float32 and C-contiguous (a
ValueError says so otherwise). Objects with ``__array__`` (a CPU torch tensor)
are viewed with ``numpy.asarray`` (zero copy; a tensor that requires grad must
be detached first); device objects are viewed with
``numba.cuda.as_cuda_array``. Device input gives a numba device array (wrap it
with ``torch.as_tensor(y, device="cuda")``); host input gives numpy.

Examples
--------
>>> import numpy as np
>>> layer = QuantLinear.from_float(np.float32([[1.0, -1.0], [0.5, 0.5]]), np.float32([0.0, 1.0]),
...                                weight_bits=4,
...                                act=ActQuant.per_tensor(0.125, bits=8, signed=True, k=2))
>>> np.round(layer(np.float32([[1.0, 0.5]])), 4).tolist()
[[0.5, 1.75]]
"""
from __future__ import annotations

import numpy as np

from . import conv as _conv
from .spec import (MODES, ActQuant, Epilogue, QuantWeights, check_operands, max_integer_k,
                   quantize_weights)

__all__ = ["BACKENDS", "resolve_backend", "qgemm", "qgemm_int32", "qconv2d", "QuantLinear",
           "QuantConv2d"]

BACKENDS = ("reference", "cpu", "cuda")


def _is_device(x) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def _as_array(x, name: str = "x"):
    """``x`` itself (numpy / device array) or a zero-copy numpy view of an ``__array__`` object."""
    if isinstance(x, np.ndarray) or _is_device(x):
        return x
    if hasattr(x, "__array__"):
        try:
            return np.asarray(x)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"{name} cannot be viewed as a numpy array ({exc}); "
                             "detach it or pass a numpy array") from exc
    raise ValueError(f"{name} must be an array (numpy, __array__ or __cuda_array_interface__), "
                     f"got {type(x).__name__}")


def resolve_backend(x, backend=None) -> str:
    """The backend that runs ``x``: ``backend`` checked, or dispatched on where ``x`` lives.

    Examples
    --------
    >>> resolve_backend(np.zeros((1, 1), np.float32)), resolve_backend(None, "reference")
    ('cpu', 'reference')
    """
    if backend is None:
        return "cuda" if _is_device(x) else "cpu"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend != "cuda" and _is_device(x):
        raise ValueError(f"backend={backend!r} cannot read a device array x; use backend='cuda'")
    return backend


def _module(backend: str):
    if backend == "reference":
        from . import reference as mod
    elif backend == "cpu":
        from . import cpu as mod
    else:
        from . import cuda as mod
    return mod


def qgemm(x, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
          mode: str = "mixed", backend: str | None = None, out=None):
    """Fused clip-quantize-GEMM ``y[M, N] = epilogue(sum_k a_hat[m, k] w_hat[n, k])``.

    .. math::

        y_{mn} = \\operatorname{epilogue}\\Big(\\sum_k (q_a(x_{mk}) - z_k) s_k\\,
                 (q_{w,nk} - z_{w,n}) s_{w,n}\\Big)

    Parameters
    ----------
    x : float32 ``[M, K]``, C-contiguous (numpy, ``__array__`` or device array)
    weights : QuantWeights
    act : ActQuant
        ``K`` channels.
    epilogue : Epilogue, optional
    mode : {"mixed", "integer"}
        See :mod:`aciq.kernels.spec`.
    backend : {None, "reference", "cpu", "cuda"}
    out : array, optional
        Destination (shape ``[M, N]``, the result's dtype).

    Returns
    -------
    float32 ``[M, N]``, or codes (uint8 / int8) with ``epilogue.out_bits``.

    Examples
    --------
    >>> w = quantize_weights(np.float32([[2.0, 0.0]]), bits=8)
    >>> a = ActQuant.per_tensor(0.5, bits=4, k=2)
    >>> [np.round(qgemm(np.float32([[1.2, 3.0]]), w, a, mode=m, backend=b), 4).tolist()
    ...  for m in ("integer", "mixed") for b in ("reference", "cpu")]
    [[[2.0]], [[2.0]], [[2.0]], [[2.0]]]
    """
    x = _as_array(x)
    backend = resolve_backend(x, backend)
    if backend != "cuda":
        check_operands(x, weights, act, epilogue, mode)
    return _module(backend).qgemm(x, weights, act, epilogue=epilogue, mode=mode, out=out)


def qgemm_int32(x, weights: QuantWeights, act: ActQuant, *, backend: str | None = None):
    """Integer-mode accumulators ``int32[M, N] = sum_k (q_a - z_a)(q_w - z_w[n])``.

    Bit-exact across backends (the test hook of integer mode).

    Examples
    --------
    >>> w = quantize_weights(np.float32([[1.0, 1.0]]), bits=8)
    >>> qgemm_int32(np.float32([[1.0, 2.0]]), w, ActQuant.per_tensor(0.5, bits=8, k=2)).tolist()
    [[762]]
    """
    x = _as_array(x)
    backend = resolve_backend(x, backend)
    if backend != "cuda":
        check_operands(x, weights, act, None, "integer")
    return _module(backend).qgemm_int32(x, weights, act)


def _check_x4(x, name="x"):
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {shape}")
    if np.dtype(dtype) != np.float32:
        raise ValueError(f"{name} must be float32, got {dtype}")
    if isinstance(x, np.ndarray) and not x.flags["C_CONTIGUOUS"]:
        raise ValueError(f"{name} must be C-contiguous (no silent copy)")
    if _is_device(x):
        from numba import cuda

        if not cuda.as_cuda_array(x).is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous (no silent copy)")


def qconv2d(x, weights: QuantWeights, act: ActQuant, *, stride=1, padding=0, dilation=1,
            groups: int = 1, epilogue: Epilogue | None = None, mode: str = "mixed",
            backend: str | None = None, kernel_size=None, accumulator: bool = False):
    """Quantized conv2d ``[N, C, H, W] -> [N, O, H', W']`` through the fused op.

    ``weights`` come from a ``[O, C/groups, kh, kw]`` weight (``K = C/groups *
    kh * kw``; ``kernel_size`` defaults to a square kernel), ``act`` has one set
    of parameters per input channel ``C``. Zero padding contributes exactly 0
    (see :mod:`aciq.kernels.conv`). ``accumulator=True`` (integer mode) returns
    the int32 accumulators.

    .. math::

        y_{b,o,h,w} = \\operatorname{epilogue}\\Big(\\sum_{c,i,j}
            \\hat a_{b,c,h s_h + i d_h - p_h, w s_w + j d_w - p_w}\\; \\hat w_{o,c,i,j}\\Big)

    Examples
    --------
    >>> w = quantize_weights(np.ones((1, 1, 3, 3), np.float32), bits=4)
    >>> a = ActQuant.per_tensor(0.5, bits=8, k=1)
    >>> np.round(qconv2d(np.ones((1, 1, 3, 3), np.float32), w, a, padding=1)[0, 0], 4).tolist()
    [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]
    """
    x = _as_array(x)
    backend = resolve_backend(x, backend)
    _check_x4(x)
    geom = _conv.conv_geometry(tuple(x.shape), weights, act, stride=stride, padding=padding,
                               dilation=dilation, groups=groups, kernel_size=kernel_size)
    epilogue = Epilogue() if epilogue is None else epilogue
    _check_conv_args(weights, act, epilogue, mode, geom, accumulator)
    if backend == "reference":
        return _conv.qconv2d_reference(x, weights, act, geom, epilogue=epilogue, mode=mode,
                                       accumulator=accumulator)
    if backend == "cuda":
        return _conv.qconv2d_cuda(x, weights, act, geom, epilogue=epilogue, mode=mode,
                                  accumulator=accumulator)
    from .cpu import CpuQGemm

    plan = CpuQGemm(weights, act, epilogue=epilogue, mode=mode, groups=geom.groups,
                    kernel_size=geom.kernel_size)
    return plan.conv2d(x, stride=geom.stride, padding=geom.padding, dilation=geom.dilation,
                       accumulator=accumulator)


def _check_conv_args(weights, act, epilogue, mode, geom, accumulator):
    """Mode / epilogue / overflow checks of a conv (those of :func:`check_operands`)."""
    if not isinstance(epilogue, Epilogue):
        raise ValueError(f"epilogue must be an Epilogue or None, got {type(epilogue).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "integer":
        if not act.is_per_tensor:
            raise ValueError("mode='integer' needs a per-tensor act scale and zero_point; "
                             "use mode='mixed'")
        kmax = max_integer_k(act, weights)
        if weights.k > kmax:
            raise ValueError(f"K={weights.k} may overflow the int32 accumulator in mode='integer' "
                             f"(K must be <= {kmax} for these bit widths)")
    if accumulator and mode != "integer":
        raise ValueError("mode: accumulators are only defined for mode='integer'")
    epilogue.bias_or_zeros(weights.n)


# ------------------------------------------------------------------ layers
class QuantLinear:
    """A quantized ``Linear``: ``y = epilogue(x @ w_hat.T)`` with weights prepared once.

    ``__call__(x)`` accepts ``[..., K]`` (flattened to ``[M, K]``, a view for a
    contiguous ``x``). The backend plan (the CPU weight panel, the uploaded
    CUDA parameters) is built on first use and kept by the layer.

    Examples
    --------
    >>> layer = QuantLinear(quantize_weights(np.eye(2, dtype=np.float32), bits=8),
    ...                     ActQuant.per_tensor(0.5, bits=8, signed=True, k=2), mode="integer")
    >>> layer(np.float32([[1.0, -2.0]])).tolist()
    [[1.0, -2.0]]
    """

    def __init__(self, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
                 mode: str = "mixed", backend: str | None = None):
        self.weights, self.act, self.mode, self.backend = weights, act, mode, backend
        self.epilogue = Epilogue() if epilogue is None else epilogue
        check_operands(np.zeros((1, weights.k), np.float32), weights, act, self.epilogue, mode)
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        self._plans = {}

    @classmethod
    def from_float(cls, weight, bias=None, *, weight_bits: int, act: ActQuant, relu: bool = False,
                   out_bits=None, out_scale=1.0, out_zero_point=0, out_signed=False,
                   mode: str = "mixed", backend=None, pack=None) -> "QuantLinear":
        """Quantize a float ``weight[N, K]`` (symmetric per output channel) and wrap it."""
        w = quantize_weights(_as_array(weight, "weight"), bits=weight_bits, pack=pack)
        ep = Epilogue(bias=None if bias is None else np.asarray(_as_array(bias, "bias"), np.float32),
                      relu=relu, out_bits=out_bits, out_scale=out_scale,
                      out_zero_point=out_zero_point, out_signed=out_signed)
        return cls(w, act, epilogue=ep, mode=mode, backend=backend)

    def _plan(self, backend):
        if backend not in self._plans:
            if backend == "cpu":
                from .cpu import CpuQGemm as plan_cls
            else:
                from .cuda import CudaQGemm as plan_cls
            self._plans[backend] = plan_cls(self.weights, self.act, epilogue=self.epilogue,
                                            mode=self.mode)
        return self._plans[backend]

    def __call__(self, x):
        x = _as_array(x)
        backend = resolve_backend(x, self.backend)
        shape = tuple(x.shape)
        if len(shape) < 1 or shape[-1] != self.weights.k:
            raise ValueError(f"x must have K={self.weights.k} as its last dimension, got shape {shape}")
        x2 = x.reshape(-1, self.weights.k) if len(shape) != 2 else x
        if backend == "reference":
            from . import reference

            y = reference.qgemm(x2, self.weights, self.act, epilogue=self.epilogue, mode=self.mode)
        else:  # the cpu and cuda plans validated weights/act/epilogue/mode once and check x per call
            y = self._plan(backend)(x2)
        return y.reshape(shape[:-1] + (self.weights.n,)) if len(shape) != 2 else y


class QuantConv2d:
    """A quantized ``Conv2d`` (stride, padding, dilation, groups) with weights prepared once.

    Examples
    --------
    >>> layer = QuantConv2d.from_float(np.ones((2, 1, 1, 1), np.float32), weight_bits=8,
    ...                                act=ActQuant.per_tensor(1.0, bits=8, k=1))
    >>> layer(np.full((1, 1, 2, 2), 3.0, np.float32)).shape
    (1, 2, 2, 2)
    """

    def __init__(self, weights: QuantWeights, act: ActQuant, *, stride=1, padding=0, dilation=1,
                 groups: int = 1, kernel_size=None, epilogue: Epilogue | None = None,
                 mode: str = "mixed", backend: str | None = None):
        self.weights, self.act, self.mode, self.backend = weights, act, mode, backend
        self.epilogue = Epilogue() if epilogue is None else epilogue
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        self.stride = _conv.pair(stride, "stride", low=1)
        self.padding = _conv.pair(padding, "padding", low=0)
        self.dilation = _conv.pair(dilation, "dilation", low=1)
        self.groups = groups
        # validate once on a minimal input
        probe = (1, act.k, 1 << 12, 1 << 12)
        geom = _conv.conv_geometry(probe, weights, act, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups, kernel_size=kernel_size)
        _check_conv_args(weights, act, self.epilogue, mode, geom, False)
        self.kernel_size = geom.kernel_size
        self._cpu = None

    @classmethod
    def from_float(cls, weight, bias=None, *, weight_bits: int, act: ActQuant, stride=1, padding=0,
                   dilation=1, groups: int = 1, relu: bool = False, out_bits=None, out_scale=1.0,
                   out_zero_point=0, out_signed=False, mode: str = "mixed", backend=None,
                   pack=None) -> "QuantConv2d":
        """Quantize a float conv ``weight[O, C/groups, kh, kw]`` and wrap it."""
        warr = np.asarray(_as_array(weight, "weight"))
        if warr.ndim != 4:
            raise ValueError(f"weight must be 4-D (O, C/groups, kh, kw), got shape {warr.shape}")
        w = quantize_weights(warr, bits=weight_bits, pack=pack)
        ep = Epilogue(bias=None if bias is None else np.asarray(_as_array(bias, "bias"), np.float32),
                      relu=relu, out_bits=out_bits, out_scale=out_scale,
                      out_zero_point=out_zero_point, out_signed=out_signed)
        return cls(w, act, stride=stride, padding=padding, dilation=dilation, groups=groups,
                   kernel_size=warr.shape[2:], epilogue=ep, mode=mode, backend=backend)

    def __call__(self, x):
        x = _as_array(x)
        backend = resolve_backend(x, self.backend)
        if backend != "cpu":
            return qconv2d(x, self.weights, self.act, stride=self.stride, padding=self.padding,
                           dilation=self.dilation, groups=self.groups, epilogue=self.epilogue,
                           mode=self.mode, backend=backend, kernel_size=self.kernel_size)
        _check_x4(x)
        geom = _conv.conv_geometry(tuple(x.shape), self.weights, self.act, stride=self.stride,
                                   padding=self.padding, dilation=self.dilation,
                                   groups=self.groups, kernel_size=self.kernel_size)
        if self._cpu is None:
            from .cpu import CpuQGemm

            self._cpu = CpuQGemm(self.weights, self.act, epilogue=self.epilogue, mode=self.mode,
                                 groups=geom.groups, kernel_size=geom.kernel_size)
        return self._cpu.conv2d(x, stride=geom.stride, padding=geom.padding,
                                dilation=geom.dilation)
