"""aciq.kernels: the fused clip-quantize-GEMM op and its conv2d, with three backends.

``y[m, n] = epilogue(sum_k deq_a(q_a[m, k]) * deq_w(q_w[k, n]))``: activations are
clipped and quantized as they are loaded (per input channel scale, zero point and
bit width), weights are integer codes prepared once (int8, or two 4-bit codes per
byte), the epilogue adds bias, applies ReLU and optionally requantizes.

Backends behind one seam: ``reference`` (numpy), ``cpu`` (numba),
``cuda`` (numba-cuda), each a module with the same functions and a ``Plan`` class
(:mod:`aciq.kernels.api`); ``backend=None`` dispatches on where ``x`` lives.
Importing this package imports neither torch nor numba.cuda; the backends load
on first use.

Examples
--------
>>> import numpy as np
>>> from aciq.kernels import ActQuant, quantize_weights, qgemm
>>> w = quantize_weights(np.float32([[2.0, -2.0]]), bits=8)
>>> act = ActQuant.per_tensor(0.25, bits=8, signed=True, k=2)
>>> np.round(qgemm(np.float32([[1.0, 0.5]]), w, act, mode="integer"), 4).tolist()
[[1.0]]
"""
from .api import BACKENDS, QuantConv2d, QuantLinear, backend_module, qconv2d, qgemm, qgemm_int32, resolve_backend
from .packing import NIBBLE_OFFSET, pack_int4, unpack_int4
from .spec import ActQuant, Epilogue, QuantWeights, code_range, quantize_weights, unpack_codes

__all__ = [
    "BACKENDS",
    "backend_module",
    "ActQuant",
    "Epilogue",
    "QuantWeights",
    "QuantLinear",
    "QuantConv2d",
    "NIBBLE_OFFSET",
    "code_range",
    "pack_int4",
    "qconv2d",
    "qgemm",
    "qgemm_int32",
    "quantize_weights",
    "resolve_backend",
    "unpack_codes",
    "unpack_int4",
]
