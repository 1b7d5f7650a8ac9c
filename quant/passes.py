"""The statistics passes over the float model: what the float calibration reads, and the sequential one's
activation grids and bias-correction targets.

Pass 1 records the moments of every observed site (and, where second-order rounding asks, each layer's input
Hessian; where the empirical bias correction asks, each layer's mean output after the activation it feeds);
then each config's plan (:func:`aciq.quant.plan.make_plan`) says which sites need pass 2 (spread, histograms)
and pass 3 (candidate errors), and only those passes run. One set of statistics serves several configs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .calibrate import candidate_errors, needs_spread
from .hessian import hessian, patch_rows
from .observe import Observer
from .plan import make_plan, observed_sites

__all__ = ["PassResult", "run_passes", "clamp_channels", "channel_sums"]


@dataclass
class PassResult:
    sites: dict                                        # site -> SiteStats
    hessians: dict = field(default_factory=dict)       # layer -> (groups, k, k)
    hessian_rows: dict = field(default_factory=dict)   # layer -> patches summed
    output_means: dict = field(default_factory=dict)   # layer -> mean output per channel (after its activation)


def channel_sums(y: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel sums of ``y`` (channels on ``axis``), float64."""
    dims = tuple(d for d in range(y.ndim) if d != axis % y.ndim)
    return y.sum(dim=dims, dtype=torch.float64)


def clamp_channels(y: torch.Tensor, bounds, axis: int) -> torch.Tensor:
    """``clamp(y, lo, hi)`` with scalar or per-channel (``axis``) bounds, ``hi`` possibly infinite."""
    lo, hi = bounds
    if np.ndim(lo) == 0 and np.ndim(hi) == 0:
        return y.clamp(min=lo, max=hi if np.isfinite(hi) else None)
    view = [1] * y.ndim
    view[axis] = -1
    t = lambda v: torch.as_tensor(np.broadcast_to(v, (y.shape[axis],)).copy(), dtype=y.dtype,  # noqa: E731
                                  device=y.device).reshape(view)
    return torch.maximum(torch.minimum(y, t(hi)), t(lo))


def _channel_axis(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


@torch.no_grad()
def run_passes(p, configs: list, batches: list, *, hessians: bool = True, output_means: bool = False) -> PassResult:
    """Observe the prepared float model ``p`` over ``batches`` for every config of ``configs``.

    ``hessians``: collect each layer's input Hessian where a config rounds with ``gptq``. ``output_means``:
    also each layer's mean output per channel, after the clamp-like activation that alone consumes it where
    there is one (``p.activations``): what the next layer sees, the target of the empirical bias correction.
    """
    sites = list(dict.fromkeys(s for c in configs for s in observed_sites(p, c)))
    observers = {}
    for s in sites:
        layer, _, where = s.rpartition(":")
        observers[s] = Observer(s, hist_bins=None, cap=p.caps.get(layer) if where == "input" else None)
    gptq = hessians and any(c.weight_rounding == "gptq" for c in configs)
    hess = {n: None for n in p.layers} if gptq else {}
    rows, sums, counts = {}, {}, {}
    handles = []
    for site, obs in observers.items():
        name, _, where = site.rpartition(":")
        module = p.model.get_submodule(name)
        if where == "input":
            def pre(m, args, o=obs, n=name):
                o.record(args[0])
                if o.phase == 1 and n in hess:
                    h = hessian(m, args[0])
                    hess[n] = h if hess[n] is None else hess[n] + h
                    rows[n] = rows.get(n, 0) + patch_rows(m, args[0])
            handles.append(module.register_forward_pre_hook(pre))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, o=obs: o.record(out)))
    phase = [1]
    if output_means:
        for name in p.layers:
            module = p.model.get_submodule(name)

            def post(m, args, out, n=name, axis=_channel_axis(module), bounds=p.activations.get(name)):
                if phase[0] != 1:
                    return
                y = out if bounds is None else clamp_channels(out, bounds, axis)
                sums[n] = sums.get(n, 0.0) + channel_sums(y, axis)
                counts[n] = counts.get(n, 0) + out.numel() // out.shape[axis]
            handles.append(module.register_forward_hook(post))
    device = next((q.device for q in p.model.parameters()), torch.device("cpu"))
    specs = {}
    try:
        for phase[0] in (1, 2, 3):
            if phase[0] == 2:
                silent = [s.rpartition(":")[0] for s, o in observers.items() if o.stats is None]
                if silent:
                    raise ValueError(f"layer {silent[0]} received no calibration input (the forward pass never "
                                     f"called it{'; also ' + ', '.join(silent[1:4]) if len(silent) > 1 else ''})"
                                     ": leave it in float with skip=")
                first = {s: o.stats for s, o in observers.items()}
                for c in configs:
                    for site, spec in make_plan(p, c, first).act_sites().items():
                        specs.setdefault(site, []).append(spec)
                for site, obs in observers.items():
                    wanted = [sp for sp in specs.get(site, ()) if needs_spread(sp)]
                    kl = [sp.kl_bins for sp in wanted if sp.clipping == "kl"]
                    obs.hist_bins = max(kl) if kl else None
                    obs.phase = 2 if wanted else 0
            if phase[0] == 3:
                for site, obs in observers.items():
                    obs.candidates = {}
                    for spec in specs.get(site, ()):
                        obs.candidates.update(candidate_errors(obs.stats, spec))
                    obs.phase = 3 if obs.candidates else 0
            if phase[0] > 1 and not any(o.phase == phase[0] for o in observers.values()):
                continue
            for x in batches:
                p.model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    return PassResult(sites={s: o.stats for s, o in observers.items()},
                      hessians={n: h for n, h in hess.items() if h is not None}, hessian_rows=rows,
                      output_means={n: (sums[n] / counts[n]).cpu().numpy() for n in sums})
