"""Sequential calibration: quantize the layers one at a time, each on what its quantized predecessors feed it.

The float calibration of the paper observes every site on the float model. Here the whole calibration set
first goes through the float model once (:func:`aciq.quant.passes.run_passes`: the activation statistics, and
each layer's mean output after the activation it feeds), then through the model again as one batch, and each
conv/linear is quantized when that batch first reaches it:

1. its input grid comes from the float statistics, as in the float calibration. (Measured on EfficientNet-Lite0
   with 4-bit activations: statistics of the partly quantized stream carry the upstream quantization noise,
   which widens every clipping window downstream; agreement fell from 87.5 to 82.5 %.)
2. its weights are quantized (:func:`~aciq.quant.weights.quantize_weights`), by second-order rounding with
   the Hessian of its *quantized* input where asked (computed from the integer codes, so exactly);
3. with ``bias_correction="empirical"`` its bias absorbs the difference between the float model's mean
   output per channel and the quantized layer's, on its quantized input: the correction covers the mean shift
   of weight and activation quantization alike (DFQ's empirical bias correction). Where the layer feeds a
   ReLU, ReLU6 or clamp, the means compared are those *after* that activation, what the next layer sees: with
   coarse grids the quantized pre-activation is much noisier than the float one, and a clamp turns noise into
   a mean shift, so matching pre-activation means leaves the next layer's input biased (measured on
   EfficientNet-Lite0 at W8A4: 7.5 % agreement matching pre-activation means, 83.8 % after the activation);
4. its quantized output goes on to the next layers.

Memory: the calibration set is one batch (tens to a few hundred images is what post-training calibration
uses). The result does not depend on how the caller batched the calibration data.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .calibrate import site_grid
from .config import QuantConfig
from .fold import set_module
from .hessian import hessian, patch_rows, patches
from .modules import ActCodes, KernelLayer, QuantizedLayer, QuantizedOutput, code_unit
from .passes import channel_sums, run_passes
from .plan import layer_spec, pool_spec
from .weights import quantize_weights

__all__ = ["calibrate", "activation_shift"]


def _quantized_hessian(layer: nn.Module, grid, x: torch.Tensor) -> np.ndarray:
    """:math:`X^T X` per group of the quantized input, from its integer codes (exact sums), then scaled by the
    grid's step per input channel."""
    codes = ActCodes(grid).to(x.device)(x).double()
    p = patches(layer, codes)
    h = torch.bmm(p.transpose(1, 2), p).cpu().numpy()
    a = code_unit(grid)
    if np.ndim(a) == 0:
        return h * float(a) ** 2
    groups, k = h.shape[0], h.shape[1]
    per_col = np.repeat(a.reshape(groups, -1), k // (a.shape[0] // groups), axis=1)     # (groups, k)
    return h * per_col[:, :, None] * per_col[:, None, :]


def activation_shift(y: torch.Tensor, bounds, target: np.ndarray, axis: int, *, samples: int = 1 << 16,
                     steps: int = 50) -> np.ndarray:
    r"""Per channel, the shift :math:`d` with :math:`\operatorname{mean}(\operatorname{clamp}(y + d, lo, hi))
    = ` ``target``: bisection (the mean is non-decreasing in :math:`d`), on at most ``samples`` evenly strided
    values of each channel of ``y`` (channels on ``axis``); ``bounds`` scalars or per channel, ``hi`` may be
    infinite. A target outside ``[lo, hi]`` is moved to the nearest bound.

    Examples
    --------
    >>> y = torch.tensor([[-1.0, 0.0, 1.0, 2.0]]).T          # one channel on axis 1
    >>> d = activation_shift(y, (0.0, 6.0), np.array([1.5]), axis=1)
    >>> round(float(d[0]), 9), float(torch.clamp(y + float(d[0]), 0, 6).mean())
    (1.0, 1.5)
    """
    rows = y.detach().movedim(axis, 0).reshape(y.shape[axis], -1)
    sample = rows[:, ::max(1, rows.shape[1] // samples)].cpu().numpy()
    v = torch.from_numpy(np.sort(sample, axis=1).astype(np.float64))     # numpy sorts ~7x faster than torch
    c, n = v.shape
    lo, hi = (torch.as_tensor(np.array(np.broadcast_to(np.asarray(b, np.float64), (c,))))[:, None] for b in bounds)
    tgt = torch.minimum(torch.maximum(torch.as_tensor(np.asarray(target, np.float64))[:, None], lo), hi)
    # the mean is piecewise linear in d: on the sorted values with prefix sums, each evaluation is a search
    prefix = torch.cat([torch.zeros(c, 1, dtype=v.dtype), torch.cumsum(v, 1)], 1)
    finite = torch.isfinite(hi)

    def mean(d):
        k_lo = torch.searchsorted(v, lo - d)                  # values clamped to lo
        k_hi = torch.searchsorted(v, hi - d, right=True)      # values at most hi - d: not clamped to hi
        middle = prefix.gather(1, k_hi) - prefix.gather(1, k_lo) + (k_hi - k_lo) * d
        top = torch.where(finite, (n - k_hi) * torch.where(finite, hi, 0.0), 0.0)
        return (k_lo * lo + middle + top) / n

    a = lo - v[:, -1:]                                    # every value on lo: the mean is lo <= target
    b = torch.where(finite, hi - v[:, :1],                # every value on hi: the mean is hi >= target
                    (tgt - prefix[:, -1:] / n).abs() + (v[:, -1:] - v[:, :1]) + (tgt - lo).abs() + 1.0)
    for _ in range(steps):
        m = (a + b) / 2
        up = mean(m) < tgt
        a, b = torch.where(up, m, a), torch.where(up, b, m)
    return ((a + b) / 2)[:, 0].numpy()


class _Pending(nn.Module):
    """Stands in for a layer until the calibration batch reaches it; then quantizes it (once)."""

    def __init__(self, name: str, layer: nn.Module, finish):
        super().__init__()
        self.name, self.layer, self.finish = name, layer, finish
        self.done = None

    def forward(self, x):
        if self.done is not None:
            return self.done(x)
        self.done, y = self.finish(self.name, self.layer, x)
        return y


@torch.no_grad()
def calibrate(p, config: QuantConfig, batches: list, *, backend: str = "fake") -> dict:
    """Quantize the prepared model ``p`` in place, layer by layer; return the per-layer report."""
    device = next((q.device for q in p.model.parameters()), torch.device("cpu"))
    x = torch.cat([b.to(device) for b in batches])     # one batch: nothing depends on the caller's batching
    empirical = config.bias_correction == "empirical"
    float_pass = run_passes(p, [config], [x], hessians=False, output_means=empirical)
    stats = float_pass.sites
    report = {}

    def finish_layer(name, layer, x):
        spec = layer_spec(p, name, config, stats)
        site = stats[f"{name}:input"]
        grid = site_grid(site, spec.act_in, axis=site.axis) if spec.act_in is not None else None
        h = rows = None
        if spec.rounding == "gptq":
            h = _quantized_hessian(layer, grid[0], x) if grid else hessian(layer, x)
            rows = patch_rows(layer, x)
        q = quantize_weights(layer, spec, in_mean=site.mean, hessian=h, samples=rows)
        q.act_in = grid[0] if grid else None
        q.info["act_in"] = grid[1] if grid else None
        module = QuantizedLayer(layer, q).to(device)
        if not empirical:
            report[name] = q.info
            return module, module(x)
        ax, bounds = module.channel_axis, p.activations.get(name)
        target = float_pass.output_means[name]
        bias = torch.zeros(len(target), dtype=torch.float64) if q.bias is None else q.bias.double().cpu()
        if bounds is not None:       # match the mean after the activation the layer feeds
            delta = activation_shift(module(x), bounds, target, ax)
            module.set_bias(bias + torch.as_tensor(delta))
            y = module(x)
        elif module.exact:           # the mean output from the exact accumulator: E[y] = row_scale E[acc] + bias
            acc = module.integer_forward(x)
            mean = channel_sums(acc, ax) / (acc.numel() // acc.shape[ax]) * module.row_scale.double() \
                + module.out_bias.double()
            delta = target - mean.cpu().numpy()
            module.set_bias(bias + torch.as_tensor(delta))
            y = module.finish(acc, x.dtype)
        else:
            y = module(x)
            delta = target - (channel_sums(y, ax) / (y.numel() // y.shape[ax])).cpu().numpy()
            module.set_bias(bias + torch.as_tensor(delta))
            y = module(x)
        q.info["bias_correction"] = {"mode": "empirical", "after_activation": bounds is not None,
                                     "mean_abs_shift": float(np.abs(delta).mean())}
        report[name] = q.info
        return module, y

    def finish_pool(name, module, x):
        site = stats[f"{name}:pool"]
        out = QuantizedOutput(module, site_grid(site, pool_spec(site, config), axis=None)[0]).to(device)
        return out, out(x)

    pending = {}
    for name in p.layers:
        pending[name] = _Pending(name, p.model.get_submodule(name), finish_layer)
    for name in (p.pools if config.pool_bits else ()):
        pending[name] = _Pending(name, p.model.get_submodule(name), finish_pool)
    for name, w in pending.items():
        set_module(p.model, name, w)
    try:
        p.model(x)
    finally:
        for name, w in pending.items():
            set_module(p.model, name, w.done if w.done is not None else w.layer)
    unreached = [n for n, w in pending.items() if w.done is None]
    if backend == "kernels":
        for name in p.layers:
            if pending[name].done is not None:
                done = pending[name].done
                set_module(p.model, name, KernelLayer(done.layer, done.quant).to(device))
    if unreached:
        raise ValueError(f"layer {unreached[0]} received no calibration input (the forward pass never called "
                         f"it{'; also ' + ', '.join(unreached[1:4]) if len(unreached) > 1 else ''}): "
                         "leave it in float with skip=")
    return report
