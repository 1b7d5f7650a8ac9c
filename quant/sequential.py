"""Sequential calibration: quantize the layers one at a time, each on what its quantized predecessors feed it.

The float calibration of the paper observes every site on the float model. Here the whole calibration set
goes through the model as one batch, and each conv/linear is quantized when that batch first reaches it:

1. the statistics of its input (moments, spread, candidate errors: all exact, the tensor is in memory) give
   its input grid, through the same :func:`~aciq.quant.plan.layer_spec` and :mod:`~aciq.quant.calibrate` as
   the float calibration;
2. its weights are quantized (:func:`~aciq.quant.weights.quantize_weights`), by second-order rounding with
   the Hessian of its *quantized* input where asked (computed from the integer codes, so exactly);
3. with ``bias_correction="empirical"`` its bias absorbs the difference between the float model's mean
   output per channel (a first, float pass over the calibration batches) and the quantized layer's, on
   quantized inputs: the correction covers the mean shift of weight and activation quantization alike
   (DFQ's empirical bias correction);
4. its quantized output goes on to the next layers.

Memory: the calibration set is one batch (tens to a few hundred images is what post-training calibration
uses). The result does not depend on how the caller batched the calibration data.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .calibrate import candidate_errors, needs_spread, site_grid
from .config import QuantConfig
from .fold import set_module
from .hessian import hessian, patch_rows, patches
from .modules import ActCodes, KernelLayer, QuantizedLayer, QuantizedOutput, code_unit
from .observe import Observer
from .plan import layer_spec, pool_spec
from .weights import quantize_weights

__all__ = ["calibrate", "float_output_means"]


def _channel_sums(y: torch.Tensor, axis: int) -> torch.Tensor:
    dims = tuple(d for d in range(y.ndim) if d != axis % y.ndim)
    return y.sum(dim=dims, dtype=torch.float64)


@torch.no_grad()
def float_output_means(p, batches: list) -> dict:
    """Mean output per channel of every layer of the (float) prepared model over ``batches``, float64."""
    sums, counts = {}, {}

    def hook(name, axis):
        def fn(module, args, out):
            sums[name] = sums.get(name, 0.0) + _channel_sums(out, axis)
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[axis]
        return fn

    handles = [p.model.get_submodule(n).register_forward_hook(
        hook(n, -1 if isinstance(p.model.get_submodule(n), nn.Linear) else 1)) for n in p.layers]
    device = next((q.device for q in p.model.parameters()), torch.device("cpu"))
    try:
        for x in batches:
            p.model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).cpu().numpy() for n in sums}


def _observe(site: str, x: torch.Tensor, cap, plan_spec):
    """Statistics of ``x`` for ``site``: moments, then (as the spec built from them asks) spread and errors."""
    obs = Observer(site, hist_bins=None, cap=cap)
    obs.record(x)
    spec = plan_spec(obs.stats)
    if spec is not None and needs_spread(spec):
        obs.phase, obs.hist_bins = 2, (spec.kl_bins if spec.clipping == "kl" else None)
        obs.record(x)
        obs.candidates = candidate_errors(obs.stats, spec)
        if obs.candidates:
            obs.phase = 3
            obs.record(x)
    return obs.stats, spec


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
    means = float_output_means(p, [x]) if config.bias_correction == "empirical" else {}
    report = {}

    def finish_layer(name, layer, x):
        site = f"{name}:input"
        stats, act = _observe(site, x, p.caps.get(name),
                              lambda s: layer_spec(p, name, config, {site: s}).act_in)
        spec = layer_spec(p, name, config, {site: stats})
        grid = site_grid(stats, act, axis=stats.axis) if act is not None else None
        h = rows = None
        if spec.rounding == "gptq":
            h = _quantized_hessian(layer, grid[0], x) if grid else hessian(layer, x)
            rows = patch_rows(layer, x)
        q = quantize_weights(layer, spec, in_mean=stats.mean, hessian=h, samples=rows)
        q.act_in = grid[0] if grid else None
        q.info["act_in"] = grid[1] if grid else None
        module = QuantizedLayer(layer, q).to(device)
        if spec.bias_correction != "empirical":
            report[name] = q.info
            return module, module(x)
        # the mean output from the exact accumulator: E[y] = row_scale E[acc] + bias
        if module.exact:
            acc = module.integer_forward(x)
            ax = module.channel_axis
            mean = (_channel_sums(acc, ax) / (acc.numel() // acc.shape[ax])) * module.row_scale.double() \
                + module.out_bias.double()
        else:
            y = module(x)
            ax = module.channel_axis
            mean = _channel_sums(y, ax) / (y.numel() // y.shape[ax])
        delta = means[name] - mean.cpu().numpy()
        bias = torch.zeros(len(delta), dtype=torch.float64) if q.bias is None else q.bias.double().cpu()
        module.set_bias(bias + torch.as_tensor(delta))
        q.info["bias_correction"] = {"mode": "empirical", "mean_abs_shift": float(np.abs(delta).mean())}
        report[name] = q.info
        return module, (module.finish(acc, x.dtype) if module.exact else module(x))

    def finish_pool(name, module, x):
        y = module(x)
        obs = Observer(f"{name}:pool", hist_bins=None)
        obs.record(y)
        out = QuantizedOutput(module, site_grid(obs.stats, pool_spec(obs.stats, config), axis=None)[0]).to(device)
        return out, out.act_out(y)

    pending = {}
    for name in p.layers:
        pending[name] = _Pending(name, p.model.get_submodule(name), finish_layer)
    for name in p.pools:
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
