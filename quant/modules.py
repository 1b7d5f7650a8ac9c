"""The modules a quantized model is made of.

:class:`QuantizedLayer` wraps the original conv/linear (any subclass: EfficientNet's static-padding conv
keeps its own ``forward``) whose weight has been replaced by its quantized value, between an input and an
output fake-quantizer. :class:`KernelLayer` runs the same layer through :mod:`aciq.kernels` (integer codes,
activations quantized as they load). :class:`QuantizedOutput` quantizes the output of a pooling module.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .fake import FakeQuant, GridParams

__all__ = ["QuantizedLayer", "KernelLayer", "QuantizedOutput", "LayerQuant"]


class LayerQuant:
    """Everything decided for one layer: grids, integer codes and the final weight/bias (plain data)."""

    def __init__(self, name: str, *, weight_grid: GridParams | None, codes: np.ndarray | None,
                 weight: torch.Tensor, bias: torch.Tensor | None, scale_factor: np.ndarray | None,
                 act_in: GridParams | None, act_out: GridParams | None, info: dict):
        self.name, self.weight_grid, self.codes = name, weight_grid, codes
        self.weight, self.bias, self.scale_factor = weight, bias, scale_factor
        self.act_in, self.act_out, self.info = act_in, act_out, info


class QuantizedLayer(nn.Module):
    """``act_out(layer(act_in(x)))`` with the layer's weight (and bias) replaced by the quantized ones."""

    def __init__(self, layer: nn.Module, q: LayerQuant):
        super().__init__()
        with torch.no_grad():
            layer.weight = nn.Parameter(q.weight.to(layer.weight.dtype), requires_grad=False)
            if q.bias is not None:
                layer.bias = nn.Parameter(q.bias.to(layer.weight.dtype), requires_grad=False)
        self.layer = layer
        self.act_in = FakeQuant(q.act_in) if q.act_in is not None else None
        self.act_out = FakeQuant(q.act_out) if q.act_out is not None else None
        self.quant = q

    def forward(self, x):
        if self.act_in is not None:
            x = self.act_in(x)
        y = self.layer(x)
        if self.act_out is not None:
            y = self.act_out(y)
        return y


class QuantizedOutput(nn.Module):
    """``quantize(module(x))``: pooling outputs (``pool_bits``)."""

    def __init__(self, module: nn.Module, grid: GridParams):
        super().__init__()
        self.module = module
        self.act_out = FakeQuant(grid)

    def forward(self, x):
        return self.act_out(self.module(x))


def _per_channel(values, k: int) -> np.ndarray:
    v = np.asarray(values)
    return np.full(k, v.item()) if v.ndim == 0 else v


def _static_padding(layer: nn.Module) -> nn.Module | None:
    """The fixed zero padding a conv subclass applies before convolving (EfficientNet's
    ``Conv2dStaticSamePadding``: ``static_padding`` is a ``ZeroPad2d`` or an identity), else None."""
    pad = getattr(layer, "static_padding", None)
    if not isinstance(layer, nn.Conv2d) or type(layer) is nn.Conv2d or not isinstance(pad, nn.Module):
        return None
    if isinstance(pad, nn.ZeroPad2d) or (not list(pad.parameters()) and type(pad).__name__ == "Identity"):
        return pad
    return None


class KernelLayer(nn.Module):
    """The layer run by :mod:`aciq.kernels`: integer weight codes, activations quantized as they load.

    Needs the input site (``act_site="input"``), every bit-width in 1..8, integer weights (no ``seed``-form
    bias correction) and a plain ``nn.Conv2d`` (zero padding) or ``nn.Linear``, or a conv that zero-pads its
    input with a fixed ``static_padding`` first (EfficientNet's "same" padding: the pad runs in torch, on the
    input's device; a padded 0 quantizes to the zero point, whose value is 0, as in the fake path).

    Accumulation: ``mode="integer"`` (exact int32 sums of code products, then the scales once) when the
    input grid is per tensor and ``K`` is within the int32 bound, else ``"mixed"`` (per-channel input
    steps: float32 sums of dequantized activations times integer weight codes).

    Where it runs: a CUDA tensor goes to the CUDA kernels as it is (``__cuda_array_interface__``, launched on
    torch's current stream) and the result is a CUDA tensor from torch's caching allocator, written in place
    by the kernels: no host round trip, no device allocation by numba on the hot path (the plans keep their
    scratch per input shape). A CPU tensor goes to the numba CPU backend through zero-copy numpy views.
    ``backend`` forces a backend; the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) takes host arrays, so
    ``backend="cuda"`` on CPU tensors runs the same seam there (the tests do).
    """

    def __init__(self, layer: nn.Module, q: LayerQuant, *, backend: str | None = None):
        super().__init__()
        from aciq import kernels

        name = q.name
        if q.act_in is None or q.codes is None:
            raise ValueError(f"layer {name}: the kernels backend needs quantized weights and inputs")
        self.pre = _static_padding(layer)
        if (type(layer) not in (nn.Conv2d, nn.Linear) and self.pre is None) \
                or getattr(layer, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"layer {name}: the kernels backend runs plain nn.Conv2d (zero padding), nn.Linear "
                             f"and convs that zero-pad with a fixed static_padding first, not "
                             f"{type(layer).__name__}")
        wg, ag = q.weight_grid, q.act_in
        if np.any(wg.bits == 0) or np.any(ag.bits == 0):
            raise ValueError(f"layer {name}: a channel has 0 bits; the kernels need 1..8 bits")
        n = layer.weight.shape[0]
        k_in = layer.weight.shape[1] * (layer.groups if isinstance(layer, nn.Conv2d) else 1)
        wbits = int(np.max(wg.bits))
        half = 1 << (wbits - 1)
        codes = (q.codes.reshape(n, -1).astype(np.int64) - half).astype(np.int8)
        scale = _per_channel(wg.scale, n) * (1.0 if q.scale_factor is None else q.scale_factor)
        weights = kernels.QuantWeights(codes=codes, scale=scale.astype(np.float32),
                                       zero_point=(_per_channel(wg.zero_point, n) - half).astype(np.int32),
                                       bits=wbits, k=codes.shape[1], n=n, packed=False)
        act = kernels.ActQuant(scale=_per_channel(ag.scale, k_in).astype(np.float32),
                               zero_point=_per_channel(ag.zero_point, k_in).astype(np.int32),
                               bits=_per_channel(ag.bits, k_in).astype(np.int32), signed=False)
        # integer accumulation where the input grid allows it: exact, and the same integers every backend sums
        kmax = kernels.spec.max_integer_k(act, weights)
        self.mode = "integer" if np.ndim(ag.scale) == 0 and weights.k <= kmax else "mixed"
        # q.bias, not layer.bias: the on-grid bias correction may give a bias-free layer a bias
        bias = None if q.bias is None else q.bias.detach().cpu().numpy().astype(np.float32)
        epilogue = kernels.Epilogue(bias=bias)
        if isinstance(layer, nn.Conv2d):
            self.op = kernels.QuantConv2d(weights, act, stride=layer.stride, padding=layer.padding,
                                          dilation=layer.dilation, groups=layer.groups,
                                          kernel_size=layer.kernel_size, epilogue=epilogue, mode=self.mode,
                                          backend=backend)
        else:
            self.op = kernels.QuantLinear(weights, act, epilogue=epilogue, mode=self.mode, backend=backend)
        self.act_out = FakeQuant(q.act_out) if q.act_out is not None else None
        self.quant = q
        self.layer = layer       # the geometry (and, for the ONNX exporter, the module's own forward)
        self._streams = {}

    @property
    def backend(self) -> str | None:
        """The forced backend (None: where the input lives)."""
        return self.op.backend

    @backend.setter
    def backend(self, name: str | None) -> None:
        from aciq.kernels import backend_module

        if name is not None:
            backend_module(name)
        self.op.backend = name

    def _out_shape(self, shape: tuple) -> tuple:
        if isinstance(self.layer, nn.Conv2d):
            return self.op.output_shape(shape)
        return shape[:-1] + (self.op.weights.n,)

    def _stream(self, device: torch.device):
        """numba's handle on torch's current stream of ``device`` (kept per stream)."""
        handle = torch.cuda.current_stream(device).cuda_stream
        key = (device.index, handle)
        if key not in self._streams:
            from numba import cuda

            self._streams[key] = cuda.external_stream(handle)
        return self._streams[key]

    def forward(self, x):
        x = x.detach()
        if self.pre is not None:
            x = self.pre(x)
        if x.dtype != torch.float32 or not x.is_contiguous():
            x = x.float().contiguous()
        out = torch.empty(self._out_shape(tuple(x.shape)), dtype=torch.float32, device=x.device)
        if x.is_cuda:
            from numba import cuda

            with cuda.gpus[x.device.index if x.device.index is not None else torch.cuda.current_device()]:
                self.op(x, out=out, stream=self._stream(x.device))
        else:
            self.op(x.numpy(), out=out.numpy())
        if self.act_out is not None:
            out = self.act_out(out)
        return out
