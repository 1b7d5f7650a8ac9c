"""The modules a quantized model is made of.

:class:`QuantizedLayer` wraps the original conv/linear (any subclass: EfficientNet's static-padding conv
keeps its own ``forward``) whose weight has been replaced by its quantized value, between an input and an
output fake-quantizer. :class:`KernelLayer` runs the same layer through :mod:`aciq.kernels` (integer codes,
activations quantized as they load). :class:`QuantizedOutput` quantizes the output of a pooling module.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .fake import FakeQuant, GridParams, _round_steps

__all__ = ["QuantizedLayer", "KernelLayer", "QuantizedOutput", "LayerQuant", "ActCodes", "code_unit"]


class LayerQuant:
    """Everything decided for one layer: grids, integer codes and the final weight/bias (plain data).

    The weight the layer computes with is ``row_scale[o] (codes - z) + row_offset[o]`` per output row ``o``
    (``fill`` for a 0-bit row): ``row_scale`` is the grid's step times the on-grid correction factor
    ``scale_factor``, ``row_offset`` the seed-form bias correction's offset (weights off the grid), else None.
    """

    def __init__(self, name: str, *, weight_grid: GridParams | None, codes: np.ndarray | None,
                 weight: torch.Tensor, bias: torch.Tensor | None, scale_factor: np.ndarray | None,
                 act_in: GridParams | None, act_out: GridParams | None, info: dict,
                 row_offset: np.ndarray | None = None):
        self.name, self.weight_grid, self.codes = name, weight_grid, codes
        self.weight, self.bias, self.scale_factor = weight, bias, scale_factor
        self.act_in, self.act_out, self.info = act_in, act_out, info
        self.row_offset = row_offset


_EXACT = {torch.float32: float(1 << 24), torch.float64: float(1 << 52)}


def _channel_view(t: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    if t.ndim == 0:
        return t
    view = [1] * like.ndim
    view[axis] = -1
    return t.reshape(view)


def code_unit(grid: GridParams) -> np.ndarray:
    """The value of one unit of :class:`ActCodes`' output per channel: the step ``s``, ``s/2`` on a mid-tread
    channel with a half-integer zero point (its codes are doubled), the ``fill`` of a 0-bit channel."""
    return np.where(grid.bits == 0, grid.fill, grid.scale / np.where(grid.half, 2.0, 1.0)).astype(np.float64)


class ActCodes(nn.Module):
    """The integer codes of an activation grid, minus the zero point: ``clamp(round(x / s), -z, qmax - z)``.

    The arithmetic is :class:`~aciq.quant.fake.FakeQuant`'s (``FakeQuant(x) == s * ActCodes(x)``), stopped
    before the multiplication by ``s``. A 0-bit channel gives 1: its value (``fill``) is carried by the
    channel's multiplier in :class:`QuantizedLayer`. A channel with a half-integer zero point (a mid-tread
    grid with an odd number of bins) gives the odd integer ``2 (q - z)``, worth ``s/2`` each
    (:func:`code_unit`).
    """

    def __init__(self, grid: GridParams):
        super().__init__()
        self.grid = grid
        self.axis = grid.axis
        per_channel = grid.axis is not None and np.ndim(grid.scale) > 0
        self.per_channel = per_channel
        self.register_buffer("scale", torch.as_tensor(grid.scale, dtype=torch.float32))
        self.register_buffer("lo", torch.as_tensor(-grid.zero_point, dtype=torch.float32))
        self.register_buffer("hi", torch.as_tensor(grid.qmax - grid.zero_point, dtype=torch.float32))
        dead = grid.bits == 0
        self.has_dead = bool(np.any(dead))
        self.register_buffer("dead", torch.as_tensor(dead))
        self.has_half = grid.has_half
        self.register_buffer("unit", torch.as_tensor(np.where(grid.half, 2.0, 1.0), dtype=torch.float32))
        self._lo, self._hi = (None, None) if per_channel else (float(-grid.zero_point),
                                                               float(grid.qmax - grid.zero_point))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis if self.axis is not None else 1
        q = torch.div(x, _channel_view(self.scale, x, axis))
        q = _round_steps(q, self.grid, x) if self.has_half else q.round_()
        if not self.per_channel:
            q.clamp_(self._lo, self._hi)
        else:
            torch.maximum(q, _channel_view(self.lo, x, axis), out=q)
            torch.minimum(q, _channel_view(self.hi, x, axis), out=q)
        if self.has_half:
            q.mul_(_channel_view(self.unit, x, axis))
        if self.has_dead:
            q = torch.where(_channel_view(self.dead, x, axis), torch.ones((), dtype=q.dtype, device=q.device), q)
        return q

    def extra_repr(self) -> str:
        return f"bits={np.unique(self.grid.bits).tolist()}, axis={self.axis}"


def _rows_of(values, n: int) -> np.ndarray:
    v = np.asarray(values, np.float64)
    return np.full(n, float(v)) if v.ndim == 0 else v.astype(np.float64)


def runs_on_integers(q: LayerQuant) -> bool:
    """Both the input and the weight of the layer are on integer grids (the exact path)."""
    return q.act_in is not None and q.codes is not None and q.weight_grid is not None


def settle_input_grid(layer: nn.Module, q: LayerQuant) -> None:
    """Put on ``q`` the input grid the integer path runs (a dense layer's per-channel steps on a common unit),
    so that every backend, the exporter and the report read the same grid. Idempotent."""
    if runs_on_integers(q):
        q.act_in = _IntegerPlan(layer, q).grid


class _IntegerPlan:
    """How a layer runs on integer codes: the integer weight (multipliers folded in), the scale of each output
    row, the offset rows of the seed-form correction, the accumulation dtype, and the activation grid that the
    codes are taken on (per-channel steps of a dense layer rounded to a common dyadic unit)."""

    def __init__(self, layer: nn.Module, q: LayerQuant):
        w = layer.weight
        n_out = w.shape[0]
        groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
        og = n_out // groups
        cg = w.shape[1]
        taps = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1
        wg = q.weight_grid
        zp = _rows_of(wg.zero_point, n_out)
        wint = q.codes.reshape(n_out, cg, taps).astype(np.float64) - zp[:, None, None]
        wbits = np.broadcast_to(wg.bits, (n_out,))
        row_scale = _rows_of(wg.scale, n_out) * (1.0 if q.scale_factor is None else q.scale_factor)
        if wg.has_half:                                   # half-integer zero points: doubled codes, half steps
            unit = np.where(np.broadcast_to(wg.half, (n_out,)), 2.0, 1.0)
            wint = wint * unit[:, None, None]
            row_scale = row_scale / unit
        offset = None if q.row_offset is None else np.asarray(q.row_offset, np.float64).copy()
        dead_w = wbits == 0
        if dead_w.any():                                  # a 0-bit row is the constant fill
            wint[dead_w] = 1.0
            row_scale = np.where(dead_w, _rows_of(wg.fill, n_out), row_scale)
            if offset is not None:
                offset[dead_w] = 0.0
        ag = q.act_in
        xmax = float(np.max(np.maximum(ag.zero_point, ag.qmax - ag.zero_point) * np.where(ag.half, 2.0, 1.0)))
        grid = ag
        per_channel = ag.axis is not None and np.ndim(ag.scale) > 0
        ones = np.ones((groups, cg, taps))                # the rows that sum each group's inputs (offsets)
        if not per_channel:
            mult_rows = np.full(n_out, float(code_unit(ag)))
            ones_scale = np.full(groups, float(code_unit(ag)))
        else:
            a = code_unit(ag)                             # value of one code unit
            xmax = max(xmax, 1.0)
            if cg == 1:                                   # depthwise: one input channel per group
                mult_rows = np.repeat(a, og)
                ones_scale = a.copy()
            else:                                         # dense: a common unit, integer multipliers
                bound = cg * taps * xmax * max(float(np.abs(wint).max()), 1.0)
                e = int(np.clip(np.floor(51 - np.log2(bound)), 0, 30))
                unit = float(np.abs(a).max()) or 1.0
                m = np.rint(a / unit * 2.0 ** e)
                live = (ag.bits > 0) & (m == 0)
                m[live] = np.sign(a[live]) + (a[live] == 0)      # keep a live channel's step positive
                step = unit * 2.0 ** -e
                mg = m.reshape(groups, cg)
                wint = wint * np.repeat(mg, og, axis=0)[:, :, None]
                ones = ones * mg[:, :, None]
                mult_rows = np.full(n_out, step)
                ones_scale = np.full(groups, step)
                grid = GridParams(scale=np.where(ag.bits > 0, m * step * np.where(ag.half, 2.0, 1.0), ag.scale),
                                  zero_point=ag.zero_point, bits=ag.bits, fill=ag.fill, axis=ag.axis, qmax=ag.qmax)
        self.grid = grid
        self.row_scale = row_scale * mult_rows
        self.offset_scale = None if offset is None else offset * np.repeat(ones_scale, og)
        if offset is not None:       # one extra output row per group: the sum of the group's inputs
            wint = np.concatenate([wint.reshape(groups, og, cg, taps), ones[:, None]], axis=1)
            wint = wint.reshape(groups * (og + 1), cg, taps)
        bound = cg * taps * xmax * float(np.abs(wint).max() if wint.size else 0.0)
        small = bound < _EXACT[torch.float32] and w.dtype != torch.float64
        self.dtype = torch.float32 if small else torch.float64
        if bound >= _EXACT[torch.float64]:
            raise ValueError(f"layer {q.name}: integer sums up to {bound:.3g} are not exact in float64")
        self.weight = torch.as_tensor(wint.reshape((wint.shape[0],) + tuple(w.shape[1:])), dtype=self.dtype)
        self.groups, self.og = groups, og


class QuantizedLayer(nn.Module):
    """A quantized conv/linear: ``act_out(layer(act_in(x)))`` with the layer's weight and bias replaced.

    Where the input and the weight are both quantized (``act_site="input"``), the layer runs on the integer
    codes: the convolution of the activation codes with the integer weight codes is a sum of integers, exact in
    float32 while it stays below :math:`2^{24}` (else the layer accumulates in float64, exact below
    :math:`2^{52}`); the scales and the bias are applied once afterwards, by separate multiply and add. The
    result is therefore the same for any batch size, summation order and thread count. Per-channel activation
    steps of a dense layer are rounded to integer multiples of a common unit, :math:`2^{-e}` times the largest
    step with :math:`e` as large as float64 exactness allows (20-30 bits for the layers here), which keeps the
    sum integer; a depthwise layer needs no rounding. Elsewhere (the output site, a k-means codebook, a float
    weight) the layer computes with the dequantized weight in float64, so its sums round once, to the float64
    result, whatever their order (the same across batch sizes except with a probability of about
    :math:`10^{-12}` per value); a layer with neither a quantized input nor output (weights only) computes in
    the model's dtype.

    ``layer.weight`` holds the dequantized weight in every case (what reports and exporters read).

    ``act_bias`` (:mod:`aciq.quant.actbias`, the seed's ``-bca``) shifts the quantized output; its
    ``oracle`` form computes the shift from each batch it is given, so that form alone depends on the batch.
    """

    def __init__(self, layer: nn.Module, q: LayerQuant):
        super().__init__()
        with torch.no_grad():
            layer.weight = nn.Parameter(q.weight.to(layer.weight.dtype), requires_grad=False)
            if q.bias is not None:
                layer.bias = nn.Parameter(q.bias.to(layer.weight.dtype), requires_grad=False)
        self.layer = layer
        self.quant = q
        self.act_out = FakeQuant(q.act_out) if q.act_out is not None else None
        self.act_bias = None
        self.channel_axis = -1 if isinstance(layer, nn.Linear) else 1
        self.exact = runs_on_integers(q)
        own_forward = type(layer).forward not in (nn.Conv2d.forward, nn.Linear.forward)
        self._plain = None if own_forward else ("linear" if isinstance(layer, nn.Linear) else "conv")
        if self.exact:
            plan = _IntegerPlan(layer, q)
            q.act_in = plan.grid              # the grid that runs (dense per-channel steps on the common unit)
            self.act_in = ActCodes(plan.grid)
            self.register_buffer("int_weight", plan.weight)
            self.groups, self.og = plan.groups, plan.og
            self.register_buffer("row_scale", torch.as_tensor(plan.row_scale, dtype=plan.dtype))
            bias = torch.zeros(layer.weight.shape[0], dtype=torch.float64) if q.bias is None else q.bias.double()
            self.register_buffer("out_bias", bias.to(plan.dtype))
            self.has_offset = plan.offset_scale is not None
            if self.has_offset:
                self.register_buffer("offset_scale", torch.as_tensor(plan.offset_scale, dtype=plan.dtype))
        else:
            self.act_in = FakeQuant(q.act_in) if q.act_in is not None else None
            quantized_io = self.act_in is not None or self.act_out is not None
            # the quantized layer computes in float64 (its sums round once); the float64 copies of its
            # parameters are buffers outside the state dict, derived from the layer's own
            self.wide = quantized_io
            if quantized_io:
                self.register_buffer("weight64", layer.weight.detach().double(), persistent=False)
                b = None if layer.bias is None else layer.bias.detach().double()
                self.register_buffer("bias64", b, persistent=False)

    def set_bias(self, bias: torch.Tensor) -> None:
        """Replace the bias (the empirical bias correction measures it after the layer is built)."""
        with torch.no_grad():
            self.layer.bias = nn.Parameter(bias.to(self.layer.weight.dtype), requires_grad=False)
            if self.exact:
                self.out_bias = bias.to(self.out_bias.dtype).to(self.out_bias.device)
            elif self.wide:
                self.bias64 = bias.double().to(self.weight64.device)
        self.quant.bias = self.layer.bias.detach()

    def integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The accumulator of the integer path, before scales and bias (integers, float dtype)."""
        xi = self.act_in(x)
        w = self.int_weight
        if xi.dtype != w.dtype:
            xi = xi.to(w.dtype)
        # the layer's own geometry (padding, stride, groups) with the integer weight and no bias
        if self._plain == "conv":
            return self.layer._conv_forward(xi, w, None)
        if self._plain == "linear":
            return F.linear(xi, w)
        return functional_call(self.layer, {"weight": w, "bias": None}, (xi,))

    def finish(self, acc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The output from the accumulator of :meth:`integer_forward` (consumed: scaled in place)."""
        ax = self.channel_axis
        if self.has_offset:
            acc, sums = self._split(acc)
            y = acc * _channel_view(self.row_scale, acc, ax)
            y.add_(sums * _channel_view(self.offset_scale, acc, ax))
        else:     # in place: the accumulator is this call's own tensor; multiply and add round separately
            y = acc.mul_(_channel_view(self.row_scale, acc, ax))
        y.add_(_channel_view(self.out_bias, y, ax))
        return y.to(dtype)

    def forward(self, x):
        if self.exact:
            return self.finish(self.integer_forward(x), x.dtype)
        dtype = x.dtype
        if self.act_in is not None:
            x = self.act_in(x)
        if not self.wide:
            return self.layer(x)
        y = self._wide_forward(x.double())
        if self.act_out is not None:
            y_hat = self.act_out(y)
            y = y_hat if self.act_bias is None else self.act_bias(y, y_hat)
        return y.to(dtype)

    def _wide_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._plain == "conv":
            return self.layer._conv_forward(x, self.weight64, self.bias64)
        if self._plain == "linear":
            return F.linear(x, self.weight64, self.bias64)
        return functional_call(self.layer, {"weight": self.weight64, "bias": self.bias64}, (x,))

    def set_act_bias(self, module: nn.Module) -> None:
        """Attach the activation bias correction of the quantized output (:mod:`aciq.quant.actbias`)."""
        if self.act_out is None:
            raise ValueError(f"layer {self.quant.name}: the activation bias correction needs a quantized output")
        self.act_bias = module

    def _split(self, acc: torch.Tensor):
        """The weight rows' accumulators and each row's group input sum (the seed-form offset rows)."""
        g, og = self.groups, self.og
        if self.channel_axis == -1:
            parts = acc.unflatten(-1, (g, og + 1))
            main, sums = parts[..., :og], parts[..., og:]
            return main.flatten(-2), sums.expand_as(main).flatten(-2)
        parts = acc.unflatten(1, (g, og + 1))
        main, sums = parts[:, :, :og], parts[:, :, og:]
        return main.flatten(1, 2), sums.expand_as(main).flatten(1, 2)


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
        settle_input_grid(layer, q)       # the fake backend's grid, so both backends quantize alike
        self.pre = _static_padding(layer)
        if (type(layer) not in (nn.Conv2d, nn.Linear) and self.pre is None) \
                or getattr(layer, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"layer {name}: the kernels backend runs plain nn.Conv2d (zero padding), nn.Linear "
                             f"and convs that zero-pad with a fixed static_padding first, not "
                             f"{type(layer).__name__}")
        wg, ag = q.weight_grid, q.act_in
        if np.any(wg.bits == 0) or np.any(ag.bits == 0):
            raise ValueError(f"layer {name}: a channel has 0 bits; the kernels need 1..8 bits")
        if not (wg.is_gemmlowp and ag.is_gemmlowp):
            raise ValueError(f"layer {name}: the kernels run grids of 2^bits levels with integer zero points, not "
                             "mid-tread grids of any number of bins: use the fake backend")
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
