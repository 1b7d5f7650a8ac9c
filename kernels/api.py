"""One signature, three backends: ``qgemm``, ``qconv2d`` and the layer wrappers.

The backend seam: :data:`BACKENDS` names a module per backend (``reference``, ``cpu``, ``cuda``), each of which
exports the same functions (``qgemm``, ``qgemm_int32``, ``qconv2d(x, weights, act, geom, ...)``) and a plan
class ``Plan(weights, act, *, epilogue, mode, groups, kernel_size)`` with ``linear(x, out=...)`` and
``conv(x, geom, out=...)``. This module only resolves the backend and calls its module; the arguments are
validated by :mod:`aciq.kernels.spec` (``check_plan``, ``check_x``, ``check_x4``) and the conv geometry by
:func:`aciq.kernels.conv.conv_geometry`.

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

import importlib

import numpy as np

from . import conv as _conv
from .spec import ActQuant, Epilogue, QuantWeights, check_plan, check_x4, quantize_weights

__all__ = ["BACKENDS", "backend_module", "resolve_backend", "qgemm", "qgemm_int32", "qconv2d", "QuantLinear",
           "QuantConv2d"]

_MODULES = {"reference": "aciq.kernels.reference", "cpu": "aciq.kernels.cpu", "cuda": "aciq.kernels.cuda"}
BACKENDS = tuple(_MODULES)


def backend_module(name: str):
    """The module of backend ``name`` (imported on first use: ``cuda`` loads numba-cuda).

    Examples
    --------
    >>> backend_module("reference").__name__
    'aciq.kernels.reference'
    """
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    return importlib.import_module(_MODULES[name])


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
    mod = backend_module(resolve_backend(x, backend))
    return mod.qgemm(x, weights, act, epilogue=epilogue, mode=mode, out=out)


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
    return backend_module(resolve_backend(x, backend)).qgemm_int32(x, weights, act)


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
    mod = backend_module(resolve_backend(x, backend))
    check_x4(x)
    geom = _conv.conv_geometry(tuple(x.shape), weights, act, stride=stride, padding=padding,
                               dilation=dilation, groups=groups, kernel_size=kernel_size)
    return mod.qconv2d(x, weights, act, geom, epilogue=epilogue, mode=mode, accumulator=accumulator)


# ------------------------------------------------------------------ layers
class QuantLinear:
    """A quantized ``Linear``: ``y = epilogue(x @ w_hat.T)`` with weights prepared once.

    ``__call__(x)`` accepts ``[..., K]`` (flattened to ``[M, K]``, a view for a
    contiguous ``x``). The backend plan (the CPU weight panel, the uploaded
    CUDA parameters) is built on first use and kept by the layer, one per backend.

    Examples
    --------
    >>> layer = QuantLinear(quantize_weights(np.eye(2, dtype=np.float32), bits=8),
    ...                     ActQuant.per_tensor(0.5, bits=8, signed=True, k=2), mode="integer")
    >>> layer(np.float32([[1.0, -2.0]])).tolist()
    [[1.0, -2.0]]
    """

    def __init__(self, weights: QuantWeights, act: ActQuant, *, epilogue: Epilogue | None = None,
                 mode: str = "mixed", backend: str | None = None):
        self.epilogue = check_plan(weights, act, epilogue, mode)
        self.weights, self.act, self.mode, self.backend = weights, act, mode, backend
        if backend is not None:
            backend_module(backend)
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

    def plan(self, backend: str):
        """This layer's plan on ``backend`` (built once)."""
        if backend not in self._plans:
            self._plans[backend] = backend_module(backend).Plan(self.weights, self.act, epilogue=self.epilogue,
                                                                mode=self.mode)
        return self._plans[backend]

    def __call__(self, x, *, out=None, stream=None):
        """``y[..., N]`` for ``x[..., K]``; ``out`` receives the result (``[M, N]`` or ``[..., N]``);
        ``stream`` (CUDA only) orders the launches after the producer of ``x``."""
        x = _as_array(x)
        backend = resolve_backend(x, self.backend)
        shape = tuple(x.shape)
        if len(shape) < 1 or shape[-1] != self.weights.k:
            raise ValueError(f"x must have K={self.weights.k} as its last dimension, got shape {shape}")
        x2 = x.reshape(-1, self.weights.k) if len(shape) != 2 else x
        o2 = out.reshape(-1, self.weights.n) if out is not None and len(shape) != 2 else out
        kw = {} if stream is None else {"stream": stream}
        y = self.plan(backend).linear(x2, out=o2, **kw)
        if out is not None:
            return out
        return y.reshape(shape[:-1] + (self.weights.n,)) if len(shape) != 2 else y


class QuantConv2d:
    """A quantized ``Conv2d`` (stride, padding, dilation, groups) with weights prepared once.

    The plan of each backend is built on first use; the geometry of each input shape (with the plan's
    scratch for it, on CUDA) is worked out once and kept, so a repeated call does no set-up.

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
        self.epilogue = check_plan(weights, act, epilogue, mode, conv=True)
        self.weights, self.act, self.mode, self.backend = weights, act, mode, backend
        if backend is not None:
            backend_module(backend)
        self.stride = _conv.pair(stride, "stride", low=1)
        self.padding = _conv.pair(padding, "padding", low=0)
        self.dilation = _conv.pair(dilation, "dilation", low=1)
        self.groups = groups
        # validate the geometry once on a large input (kernel size, groups, channels)
        probe = (1, act.k, 1 << 12, 1 << 12)
        geom = _conv.conv_geometry(probe, weights, act, stride=stride, padding=padding,
                                   dilation=dilation, groups=groups, kernel_size=kernel_size)
        self.kernel_size = geom.kernel_size
        self._backend_plans = {}
        self._plans = {}

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

    def plan(self, backend: str, shape: tuple):
        """``(plan, geometry)`` for inputs of ``shape`` on ``backend``, cached per (backend, shape)."""
        key = (backend, shape)
        if key not in self._plans:
            geom = _conv.conv_geometry(shape, self.weights, self.act, stride=self.stride, padding=self.padding,
                                       dilation=self.dilation, groups=self.groups, kernel_size=self.kernel_size)
            if backend not in self._backend_plans:   # the weight side: one per backend, shared by the shapes
                self._backend_plans[backend] = backend_module(backend).Plan(
                    self.weights, self.act, epilogue=self.epilogue, mode=self.mode, groups=geom.groups,
                    kernel_size=geom.kernel_size)
            self._plans[key] = (self._backend_plans[backend], geom)
        return self._plans[key]

    def output_shape(self, shape: tuple) -> tuple:
        """``(N, O, H', W')`` for inputs of ``shape``."""
        geom = _conv.conv_geometry(shape, self.weights, self.act, stride=self.stride, padding=self.padding,
                                   dilation=self.dilation, groups=self.groups, kernel_size=self.kernel_size)
        return (shape[0], self.weights.n) + geom.out_hw

    def __call__(self, x, *, out=None, stream=None):
        """``y[N, O, H', W']``; ``out`` receives it; ``stream`` (CUDA only) orders the launches."""
        x = _as_array(x)
        backend = resolve_backend(x, self.backend)
        check_x4(x)
        plan, geom = self.plan(backend, tuple(int(v) for v in x.shape))
        kw = {} if stream is None else {"stream": stream}
        return plan.conv(x, geom, out=out, **kw)
