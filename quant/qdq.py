r"""The QDQ form of aciq's grids: torch modules that export as ONNX QuantizeLinear / DequantizeLinear.

These modules exist only to be exported (:func:`aciq.quant.export.export_onnx` swaps them in for the
quantized modules of a copy of the model); each ONNX node is emitted with :func:`torch.onnx.ops.symbolic`,
so what the file holds is written here and nowhere else. The numbers come from the data of
:mod:`aciq.quant.fake` (``GridParams``) and :class:`aciq.quant.modules.LayerQuant`, never from the forward
code of the quantized modules.

* **Activations** (:class:`ActQDQ`) on the gemmlowp grid :math:`q = \operatorname{clamp}(\operatorname{rint}
  (x/s) + z, 0, 2^{M_c} - 1)`, :math:`\hat x = (q - z)s`: ``QuantizeLinear(x, s, z)`` (per tensor, or per
  channel along ``axis``) into ``UINT8``, then, when a channel has fewer than 8 bits, ``Min(q, qmax)``
  (per-channel clamp ranges express bit allocation), then ``DequantizeLinear``; channels allocated 0 bits are
  set to their ``fill`` by a ``Where``.
* **Weights** (:class:`IntWeight`): aciq's own unsigned codes :math:`q \in [0, 2^{M_n} - 1]` are an
  initializer, with per-output-channel zero points and scales :math:`s_n \xi_n` (:math:`\xi` = the on-grid
  bias correction's scale factor), read by ``DequantizeLinear(axis=0)``. A channel allocated 0 bits stores
  one level, its fill value ``f``: code :math:`1 + \operatorname{sign}(f)`, zero point 1, scale :math:`|f|`.

Containers (:func:`container`) are unsigned. Weights whose channels all have at most 4 bits are ``UINT4``
initializers when ``int4`` is allowed (opset 21), else ``UINT8``. Activations are always ``UINT8``, 4-bit (and
other < 8-bit) ranges kept by the ``Min`` clamp: ONNX Runtime 1.32 runs ``UINT4`` QuantizeLinear and
DequantizeLinear on the CPU, but its QDQ graph optimizer propagates a Q/DQ pair through an adjacent
``MaxPool`` and then finds no ``UINT4`` MaxPool kernel, so the session fails to load (measured on
``Relu -> MaxPool -> QuantizeLinear`` and on ``DequantizeLinear -> MaxPool``; ``UINT8`` is fine). Unsigned
weights also keep ONNX Runtime exact where it fuses ``DequantizeLinear -> Gemm/Conv`` into integer kernels:
with signed 8-bit weights and full-range 8-bit activations its x86 ``U8S8`` kernels saturate 16-bit pair
sums (measured: logits off by 0.4 on a small Gemm), ``U8U8`` does not. The ``UINT4`` storage is written by
:mod:`aciq.quant.export` after torch's export (torch has no 4-bit dtype): the nodes carry the metadata
``aciq.container``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .fake import GridParams
from .modules import LayerQuant

__all__ = ["Container", "container", "ActQDQ", "IntWeight", "LayerQDQ", "OutputQDQ", "CONTAINER_KEY",
           "weight_codes"]

CONTAINER_KEY = "aciq.container"
"""Node metadata key naming the container of a Q/DQ node's integer tensors."""


@dataclass(frozen=True)
class Container:
    """The integer type that holds a tensor's codes: ONNX type, torch storage dtype and range."""

    name: str            # "uint4", "uint8"
    onnx_type: int
    storage: torch.dtype
    lo: int
    hi: int


# onnx.TensorProto's data types (fixed by the ONNX standard; written out so that this module, imported by
# nothing but the exporter, does not need the onnx package either)
_UINT8, _UINT4 = 2, 21
CONTAINERS = {
    "uint8": Container("uint8", _UINT8, torch.uint8, 0, 255),
    "uint4": Container("uint4", _UINT4, torch.uint8, 0, 15),
}


def container(bits, *, weight: bool, int4: bool) -> Container:
    """The container of codes with these per-channel ``bits`` (see the module docstring).

    Examples
    --------
    >>> container([3, 4], weight=True, int4=True).name, container([4, 5], weight=True, int4=True).name
    ('uint4', 'uint8')
    >>> container([4], weight=True, int4=False).name, container([4], weight=False, int4=True).name
    ('uint8', 'uint8')
    """
    four = weight and int4 and bool(np.all(np.asarray(bits) <= 4))
    return CONTAINERS["uint4" if four else "uint8"]


def _symbolic(op, inputs, attrs, *, dtype, like, opset, meta=None):
    return torch.onnx.ops.symbolic(op, inputs, attrs, dtype=dtype, shape=like.shape, version=opset,
                                   metadata_props=meta)


def _channel_view(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.ndim
    shape[axis] = -1
    return t.reshape(shape)


class ActQDQ(nn.Module):
    """``QuantizeLinear -> [Min] -> DequantizeLinear [-> Where]`` of one activation grid (export only)."""

    def __init__(self, grid: GridParams, *, opset: int, unit: bool = False):
        super().__init__()
        bits = np.asarray(grid.bits)
        per_channel = bits.ndim == 1
        self.axis = grid.axis if per_channel else None
        if per_channel and self.axis is None:
            raise ValueError("a per-channel activation grid needs its axis")
        self.cont = container(bits, weight=False, int4=False)
        self.opset = opset
        self.register_buffer("scale", torch.as_tensor(np.asarray(grid.scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.as_tensor(np.asarray(grid.zero_point), dtype=self.cont.storage))
        # unit: DequantizeLinear with scale 1 gives the integer codes minus the zero point (the integer form)
        self.unit = unit
        self.register_buffer("ones", torch.ones_like(self.scale) if unit else None)
        qmax = np.asarray(grid.qmax)
        self.clamp = bool(np.any(qmax < self.cont.hi))
        self.register_buffer("qmax", torch.as_tensor(qmax, dtype=self.cont.storage))
        dead = bits == 0
        self.dead = bool(np.any(dead))
        self.register_buffer("dead_mask", torch.as_tensor(dead))
        self.register_buffer("fill", torch.as_tensor(np.asarray(grid.fill), dtype=torch.float32))
        self.bits = sorted({int(b) for b in np.unique(bits)})

    def forward(self, x):
        attrs = {} if self.axis is None else {"axis": self.axis}
        meta = {CONTAINER_KEY: self.cont.name}
        q = _symbolic("QuantizeLinear", (x, self.scale, self.zero_point), attrs, dtype=self.cont.onnx_type,
                      like=x, opset=self.opset, meta=meta)
        if self.clamp:
            qmax = self.qmax if self.axis is None else _channel_view(self.qmax, x, self.axis)
            q = _symbolic("Min", (q, qmax), {}, dtype=self.cont.onnx_type, like=x, opset=self.opset)
        dq_scale = self.ones if self.unit else self.scale
        y = _symbolic("DequantizeLinear", (q, dq_scale, self.zero_point), attrs, dtype=x.dtype, like=x,
                      opset=self.opset, meta=meta)
        if self.dead:
            mask, fill = self.dead_mask, self.fill
            if self.axis is not None:
                mask, fill = _channel_view(mask, x, self.axis), _channel_view(fill, x, self.axis)
            y = torch.where(mask, fill, y)
        return y

    def describe(self) -> dict:
        return {"bits": self.bits, "container": self.cont.name, "clamp": self.clamp,
                "per_channel": self.axis is not None, "zero_bit_channels": self.dead, "unit_scale": self.unit}


def weight_codes(q: LayerQuant, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes (``shape``), per-output-channel zero points and scales of ``q``'s integer weight.

    ``(codes - zero_point) * scale`` is the layer's quantized weight (``q.weight``) up to the float32
    rounding of the scale; see the module docstring for the 0-bit channels.
    """
    grid = q.weight_grid
    n = shape[0]
    bits = np.broadcast_to(np.asarray(grid.bits), (n,)).astype(np.int64)
    scale = np.broadcast_to(np.asarray(grid.scale, np.float64), (n,)).copy()
    zp = np.broadcast_to(np.asarray(grid.zero_point), (n,)).astype(np.int64).copy()
    fill = np.broadcast_to(np.asarray(grid.fill, np.float64), (n,))
    xi = np.ones(n) if q.scale_factor is None else np.asarray(q.scale_factor, np.float64).reshape(n)
    codes = np.asarray(q.codes).reshape(n, -1).astype(np.int64)
    dead = bits == 0
    if np.any(dead):   # one level, the fill value f: code 1 + sign(f), zero point 1, scale |f| (1 when f = 0)
        codes[dead] = 1 + np.sign(fill[dead])[:, None].astype(np.int64)
        zp[dead] = 1
        scale[dead] = np.where(fill[dead] != 0, np.abs(fill[dead]), 1.0)
    return codes.reshape(shape), zp, scale * xi


class IntWeight(nn.Module):
    """``DequantizeLinear(codes, scale, zero_point, axis=0)`` of an integer weight initializer."""

    def __init__(self, q: LayerQuant, shape, *, int4: bool, opset: int, unit: bool = False):
        super().__init__()
        codes, zp, scale = weight_codes(q, tuple(shape))
        self.cont = container(np.asarray(q.weight_grid.bits), weight=True, int4=int4)
        self.opset = opset
        self.register_buffer("codes", torch.as_tensor(codes, dtype=self.cont.storage))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.as_tensor(zp, dtype=self.cont.storage))
        self.unit = unit      # DequantizeLinear with scale 1: the integer weight codes minus the zero points
        self.register_buffer("ones", torch.ones_like(self.scale) if unit else None)
        self.bits = sorted({int(b) for b in np.unique(np.asarray(q.weight_grid.bits))})

    def forward(self):
        return _symbolic("DequantizeLinear", (self.codes, self.ones if self.unit else self.scale, self.zero_point),
                         {"axis": 0},
                         dtype=torch.float32, like=self.codes, opset=self.opset,
                         meta={CONTAINER_KEY: self.cont.name})

    def dequantized(self) -> torch.Tensor:
        """The float weight the file computes (float32 scale, as ONNX Runtime applies it)."""
        view = [-1] + [1] * (self.codes.ndim - 1)
        return (self.codes.float() - self.zero_point.float().reshape(view)) * self.scale.reshape(view)

    def describe(self) -> dict:
        return {"bits": self.bits, "container": self.cont.name, "per_channel": True, "unit_scale": self.unit}


class LayerQDQ(nn.Module):
    """A quantized conv/linear in QDQ form: ``act_out(layer(act_in(x); weight=DQ(codes), bias))``.

    The original layer's own ``forward`` runs (``torch.func.functional_call`` with the weight and bias
    given), so conv subclasses (EfficientNet's static "same" padding) export as they run.
    """

    def __init__(self, layer: nn.Module, q: LayerQuant, *, int4: bool, opset: int, exact=None):
        super().__init__()
        self.layer = layer
        self.integer = exact is not None
        weight = layer.weight
        layer.register_parameter("weight", None)    # given by forward: no float copy in the file
        layer.register_parameter("bias", None)
        if q.codes is None:     # weights left in float (weight_bits=None): a float initializer
            self.weight = None
            self.register_buffer("float_weight", q.weight.detach().float().cpu().clone())
        else:
            self.weight = IntWeight(q, weight.shape, int4=int4, opset=opset, unit=self.integer)
        # the integer form: the scales of aciq's integer path (QuantizedLayer.finish) and the bias it adds
        row_scale, bias = exact if self.integer else (None, q.bias)
        self.register_buffer("row_scale", None if row_scale is None else row_scale.detach().float().cpu().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().cpu().clone())
        self.act_in = None if q.act_in is None else ActQDQ(q.act_in, opset=opset, unit=self.integer)
        self.act_out = None if q.act_out is None else ActQDQ(q.act_out, opset=opset)
        self.axis = -1 if isinstance(layer, nn.Linear) else 1

    def forward(self, x):
        if self.act_in is not None:
            x = self.act_in(x)
        w = self.float_weight if self.weight is None else self.weight()
        y = functional_call(self.layer, {"weight": w}, (x,), strict=False)
        if self.row_scale is not None:
            # the integer form: the sum of integers is exact in float32, then one multiply, one add (aciq's
            # integer path, modules.QuantizedLayer.finish)
            y = y * _channel_view(self.row_scale, y, self.axis)
        if self.bias is not None:
            # a separate Add, not the Conv's bias input: ONNX Runtime's WeightBiasQuantization would round a
            # bias input to int32 in units of s_x * s_w (at 4 bits, a visible shift of every output)
            y = y + _channel_view(self.bias, y, self.axis)
        if self.act_out is not None:
            y = self.act_out(y)
        return y

    def describe(self) -> dict:
        return {"form": "integer" if self.integer else "qdq",
                "weight": None if self.weight is None else self.weight.describe(),
                "act_in": None if self.act_in is None else self.act_in.describe(),
                "act_out": None if self.act_out is None else self.act_out.describe()}


class OutputQDQ(nn.Module):
    """``ActQDQ(module(x))``: a quantized pooling output."""

    def __init__(self, module: nn.Module, grid: GridParams, *, opset: int):
        super().__init__()
        self.module = module
        self.act_out = ActQDQ(grid, opset=opset)

    def forward(self, x):
        return self.act_out(self.module(x))

    def describe(self) -> dict:
        return {"act_out": self.act_out.describe()}
