"""Calibrate, then convert: ``qmodel = quantize(model, config, calibration_data)``.

1. ``prepare``: copy the model (the caller's stays untouched), fold BatchNorm, trace one forward to find every
   conv/linear (execution order: first and last layer), the ReLUs that consume their outputs (the seed's
   fused ReLU) and the pooling modules.
2. ``collect_statistics``: observers on every site, over all calibration images, in 1-3 passes
   (:mod:`aciq.quant.observe`). Saved/loaded as JSON + npz.
3. ``convert``: each site's grid from :mod:`aciq.quant.calibrate` (which asks :mod:`aciq.theory`), weights
   quantized once (per output channel, bit allocation, bias correction), modules swapped.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
import numpy as np
import torch
from torch import nn

from aciq.theory import correction_terms

from .calibrate import SiteSpec, candidate_errors, site_grid
from .config import PerChannel, QuantConfig
from .fake import codes as grid_codes
from .fake import dequantize
from .fold import fold_batchnorm, set_module
from .modules import KernelLayer, LayerQuant, QuantizedLayer, QuantizedOutput
from .observe import Observer, Statistics
from .trace import LAYER_TYPES, POOL_TYPES, RELU_TYPES, trace

__all__ = ["quantize", "prepare", "collect_statistics", "convert", "Prepared", "as_batches"]


# --------------------------------------------------------------------------- data
def _batch_input(batch, i):
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"calibration_data batch {i} is a {type(x).__name__}, expected a tensor "
                         "(or a (tensor, label) pair)")
    if not torch.is_floating_point(x):
        raise ValueError(f"calibration_data batch {i} has dtype {x.dtype}, expected a float tensor")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"calibration_data batch {i} has shape {tuple(x.shape)}, expected (N>=1, ...)")
    if not torch.isfinite(x).all():
        raise ValueError(f"calibration_data batch {i} contains NaN or Inf")
    return x


def as_batches(calibration_data) -> list[torch.Tensor]:
    """The calibration inputs as a list of batches (a tensor, or an iterable of tensors / (x, y) pairs)."""
    if calibration_data is None:
        raise ValueError("calibration_data is required (a tensor, a list of batches or a DataLoader)")
    if isinstance(calibration_data, torch.Tensor):
        calibration_data = [calibration_data]
    batches = [_batch_input(b, i) for i, b in enumerate(calibration_data)]
    if not batches:
        raise ValueError("calibration_data is empty: give at least one batch of images")
    return batches


# --------------------------------------------------------------------------- prepare
@dataclass
class Prepared:
    """The folded copy and what the trace found."""

    model: nn.Module
    layers: list                                 # conv/linear names in first-call order (not skipped)
    pools: list
    fused: dict = field(default_factory=dict)    # layer -> a ReLU consumes its output
    folded: list = field(default_factory=list)
    first: str | None = None
    last: str | None = None

    def shapes(self) -> dict:
        return {n: tuple(self.model.get_submodule(n).weight.shape) for n in self.layers}


def _check_config(config) -> None:
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a QuantConfig (see aciq.quant.PRESETS), got {type(config).__name__}")


def prepare(model: nn.Module, example: torch.Tensor, config: QuantConfig) -> Prepared:
    """Fold a copy of ``model`` and trace it on ``example``.

    The first layer is the first conv/linear called, the last the last ``nn.Linear`` called (else the last
    layer), both found before ``config.skip`` is applied: skipping the first conv leaves it in float and
    gives no other layer the ``first_layer_bits``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_config(config)
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    device = next((p.device for p in m.parameters()), torch.device("cpu"))
    example = example[:1].to(device)
    folded = fold_batchnorm(m, example)
    tr = trace(m, example)
    names = dict(m.named_modules())
    for s in config.skip:
        if s not in names:
            raise ValueError(f"skip: the model has no module named {s!r}")
    for name in names:
        mod = names[name]
        if isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) \
                and name not in config.skip and tr.count(name):
            raise ValueError(f"module {name}: {type(mod).__name__} is not supported (Conv2d and Linear are); "
                             "leave it in float with skip=")
    all_layers = tr.order(LAYER_TYPES)
    if not all_layers:
        raise ValueError("model has no nn.Conv2d or nn.Linear reached by a forward pass: nothing to quantize")
    linears = [n for n in all_layers if isinstance(names[n], nn.Linear)]
    first, last = all_layers[0], (linears[-1] if linears else all_layers[-1])
    layers = [n for n in all_layers if n not in config.skip]
    if not layers:
        raise ValueError(f"skip: every conv/linear layer is skipped ({all_layers[:5]}...): nothing to quantize")
    fused = {n: any(isinstance(names[c], RELU_TYPES) for c in tr.consumers(n)) for n in layers}
    pools = [n for n in tr.order(POOL_TYPES) if n not in config.skip] if config.pool_bits else []
    return Prepared(model=m, layers=layers, pools=pools, fused=fused, folded=folded, first=first, last=last)


# --------------------------------------------------------------------------- site specs
def _layer_bits(p: Prepared, name: str, config: QuantConfig, kind: str):
    bits = config.weight_bits if kind == "weight" else config.act_bits
    if bits is None:
        return None, False
    if name == p.first and config.first_layer_bits is not None:
        return config.first_layer_bits, True
    if name == p.last and config.last_layer_bits is not None:
        return config.last_layer_bits, True
    return bits, False


def _act_spec(p: Prepared, site: str, stats, config: QuantConfig) -> SiteSpec | None:
    layer, _, where = site.rpartition(":")
    if where == "pool":
        return SiteSpec(clipping="minmax", bits=config.pool_bits, per_channel=False,
                        half=bool(stats.min.min() >= 0) if config.half_range == "auto" else bool(config.half_range))
    if (where == "input") != (config.act_site == "input"):
        return None
    bits, override = _layer_bits(p, layer, config, "act")
    if bits is None:
        return None
    fused = where == "output" and p.fused.get(layer, False)
    if config.half_range == "auto":
        half = fused or (where == "input" and bool(stats.min.min() >= 0))
    else:
        half = bool(config.half_range)
        fused = fused and half
    per_channel = isinstance(config.act_granularity, PerChannel)
    return SiteSpec(clipping=config.act_clipping, bits=bits, per_channel=per_channel, half=half, fused=fused,
                    alloc=None if override else config.act_bit_alloc, avg_bits=config.act_avg_bits,
                    budget=config.alloc_budget, kstd=config.kstd, exact_prior=config.exact_prior,
                    mse_candidates=config.mse_candidates)


def _weight_spec(p: Prepared, name: str, config: QuantConfig) -> SiteSpec | None:
    bits, override = _layer_bits(p, name, config, "weight")
    if bits is None:
        return None
    return SiteSpec(clipping=config.weight_clipping, bits=bits,
                    per_channel=isinstance(config.weight_granularity, PerChannel), half=False,
                    alloc=None if override else config.weight_bit_alloc, avg_bits=config.weight_avg_bits,
                    budget=config.alloc_budget, kstd=config.kstd, exact_prior=config.exact_prior,
                    mse_candidates=config.mse_candidates)


def _spec_key(spec: SiteSpec) -> dict:
    return {"clipping": spec.clipping, "bits": spec.bits, "per_channel": spec.per_channel,
            "half": spec.half, "fused": spec.fused, "candidates": spec.mse_candidates}


# --------------------------------------------------------------------------- statistics
def _sites(p: Prepared, config: QuantConfig) -> list[str]:
    sites = [f"{n}:input" for n in p.layers]  # always: input means feed the on-grid bias correction
    if config.act_site == "output":
        sites += [f"{n}:output" for n in p.layers]
    sites += [f"{n}:pool" for n in p.pools]
    return sites


@torch.no_grad()
def _run_passes(p: Prepared, config: QuantConfig, batches: list, sites: list[str]) -> dict:
    hist = config.kl_bins if config.act_clipping == "kl" else None  # only the kl calibrator reads histograms
    observers = {s: Observer(s, hist_bins=hist) for s in sites}
    handles = []
    for site, obs in observers.items():
        name, _, where = site.rpartition(":")
        module = p.model.get_submodule(name)
        if where == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, o=obs: o.record(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, o=obs: o.record(out)))
    device = next((q.device for q in p.model.parameters()), torch.device("cpu"))
    todo = {}
    try:
        for phase in (1, 2, 3):
            if phase == 3:
                for site, obs in observers.items():
                    spec = _act_spec(p, site, obs.stats, config)
                    obs.candidates = candidate_errors(obs.stats, spec) if spec is not None else {}
                    if obs.candidates:
                        todo[site] = _spec_key(spec)
                if not todo:
                    break
            for obs in observers.values():
                obs.phase = phase if (phase < 3 or obs.candidates) else 0
            for x in batches:
                p.model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    stats = {s: o.stats for s, o in observers.items()}
    return stats, todo


def collect_statistics(model: nn.Module, config: QuantConfig, calibration_data, *,
                       prepared: Prepared | None = None) -> Statistics:
    """Statistics of every site of ``model`` (folded) over ``calibration_data``."""
    _check_config(config)
    batches = as_batches(calibration_data)
    p = prepared if prepared is not None else prepare(model, batches[0], config)
    stats, error_specs = _run_passes(p, config, batches, _sites(p, config))
    return Statistics(sites=stats, layers=p.shapes(), images=sum(int(b.shape[0]) for b in batches),
                      extra={"error_specs": error_specs, "config": config.to_dict()})


# --------------------------------------------------------------------------- weights
def _weight_stats(w2d: torch.Tensor, spec: SiteSpec, name: str):
    obs = Observer(f"{name}.weight", hist_bins=None)
    rows = w2d.detach().double()   # (O, K): one row per output channel
    for phase in (1, 2):
        obs.phase = phase
        obs.record_rows(rows, axis=0, ndim=2)
    obs.candidates = candidate_errors(obs.stats, spec)
    if obs.candidates:
        obs.phase = 3
        obs.record_rows(rows, axis=0, ndim=2)
    return obs.stats


def _bias_inputs(layer: nn.Module, in_mean: np.ndarray) -> np.ndarray:
    """Expected sum of the inputs each output channel sees (calibration means; padding ignored)."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return np.full(w.shape[0], in_mean.sum())
    groups = layer.groups
    per_group = in_mean.reshape(groups, -1).sum(1) * (w.shape[2] * w.shape[3])
    return np.repeat(per_group, w.shape[0] // groups)


def _quantize_weight(p: Prepared, name: str, config: QuantConfig, in_stats) -> LayerQuant | None:
    layer = p.model.get_submodule(name)
    spec = _weight_spec(p, name, config)
    w = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach().double().clone()
    info = {}
    if spec is None:
        return LayerQuant(name, weight_grid=None, codes=None, weight=w, bias=layer.bias, scale_factor=None,
                          act_in=None, act_out=None, info=info)
    w2d = w.reshape(w.shape[0], -1).double()
    if config.weight_quantizer == "kmeans":             # a non-uniform codebook per channel: no grid
        from .kmeans import kmeans_weight

        grid = None
        w_hat, q, info["weight"] = kmeans_weight(w2d, bits=spec.bits, per_channel=spec.per_channel)
    else:
        stats = _weight_stats(w2d, spec, name)
        grid, info["weight"] = site_grid(stats, spec, axis=0)
        q_t = grid_codes(w2d, grid, dtype=torch.uint8)     # 0..255 (bits <= 8)
        w_hat = dequantize(q_t, grid, dtype=w2d.dtype)     # == fake_quantize(w2d, grid)
        q = q_t.cpu().numpy()
    scale_factor = None
    if config.bias_correction != "off":
        terms = correction_terms(w2d.cpu().numpy(), w_hat.cpu().numpy(), mode=config.bias_correction,
                                 form="seed", axis=0)
        xi = torch.as_tensor(terms.scale_factor, dtype=w_hat.dtype, device=w_hat.device)
        offset = torch.as_tensor(terms.offset, dtype=w_hat.dtype, device=w_hat.device)
        if config.bias_form == "seed":
            w_hat = xi[:, None] * w_hat + offset[:, None]
        else:  # on-grid: xi scales the channel's step; the offset times E[sum of inputs] joins the bias
            w_hat = xi[:, None] * w_hat
            scale_factor = terms.scale_factor
            shift = torch.as_tensor(terms.offset * _bias_inputs(layer, in_stats.mean), dtype=torch.float64,
                                    device=w_hat.device)
            bias = shift if bias is None else bias + shift
        info["bias_correction"] = {"mode": config.bias_correction, "form": config.bias_form,
                                   "mean_abs_offset": float(np.abs(terms.offset).mean()),
                                   "mean_scale_factor": float(np.mean(terms.scale_factor))}
    return LayerQuant(name, weight_grid=grid, codes=q, weight=w_hat.reshape(w.shape).to(w.dtype),
                      bias=None if bias is None else bias.to(w.dtype), scale_factor=scale_factor,
                      act_in=None, act_out=None, info=info)


# --------------------------------------------------------------------------- convert
def convert(p: Prepared, config: QuantConfig, statistics: Statistics, *, backend: str = "fake") -> nn.Module:
    """Swap every layer of the prepared copy for its quantized version."""
    if backend not in ("fake", "kernels"):
        raise ValueError(f"backend must be 'fake' or 'kernels', got {backend!r}")
    statistics.check_model(p.shapes())
    sites = _sites(p, config)
    missing = [s for s in sites if s not in statistics.sites]
    if missing:
        raise ValueError(f"statistics lack sites {missing[:3]} that this config quantizes "
                         f"(collected with act_site/pool_bits different from this config?)")
    stats = statistics.sites
    for site in sites:
        spec = _act_spec(p, site, stats[site], config)
        if spec is not None and spec.clipping in ("mse", "mix"):
            want = statistics.extra.get("error_specs", {}).get(site)
            if want != _spec_key(spec):
                raise ValueError(f"statistics for site {site} hold no {spec.clipping} errors for this config "
                                 f"(file: {want}, config: {_spec_key(spec)}); collect them with this config")
    grids = {}
    for site in sites:
        spec = _act_spec(p, site, stats[site], config)
        if spec is not None:
            axis = stats[site].axis
            grids[site] = site_grid(stats[site], spec, axis=axis)
    if backend == "kernels" and config.act_site != "input":
        raise ValueError("backend='kernels' quantizes activations as they load: it needs act_site='input'")
    if backend == "kernels" and config.weight_quantizer == "kmeans":
        raise ValueError("backend='kernels' runs uniform integer grids: weight_quantizer='kmeans' needs the "
                         "fake backend")
    if backend == "kernels" and config.bias_correction != "off" and config.bias_form == "seed":
        raise ValueError("backend='kernels' needs integer weights: use bias_form='on-grid' (the seed form moves "
                         "weights off the grid)")
    model = p.model
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    report = {}
    for name in p.layers:
        q = _quantize_weight(p, name, config, stats[f"{name}:input"])
        gi, go = grids.get(f"{name}:input"), grids.get(f"{name}:output")
        q.act_in = gi[0] if gi else None
        q.act_out = go[0] if go else None
        q.info.update({"act_in": gi[1] if gi else None, "act_out": go[1] if go else None})
        layer = model.get_submodule(name)
        if backend == "kernels":
            new = KernelLayer(layer, q)
        else:
            new = QuantizedLayer(layer, q)
        new.to(layer.weight.device)     # the FakeQuant buffers are made on the CPU; follow the model
        set_module(model, name, new)
        report[name] = q.info
    for name in p.pools:
        site = f"{name}:pool"
        set_module(model, name, QuantizedOutput(model.get_submodule(name), grids[site][0]).to(device))
    model.aciq_config = config
    model.aciq_report = report
    model.aciq_folded = p.folded
    return model


def quantize(model: nn.Module, config: QuantConfig, calibration_data=None, *, statistics=None,
             backend: str = "fake", example: torch.Tensor | None = None) -> nn.Module:
    """A quantized copy of ``model`` (the float model is left untouched).

    Parameters
    ----------
    model : torch.nn.Module
        A float CNN (eval mode is set on the copy).
    config : QuantConfig
        The recipe (:data:`aciq.quant.PRESETS` holds named ones).
    calibration_data : tensor or iterable of tensors / (tensor, label) pairs
        The calibration images; statistics come from these only, never from the batches later scored.
    statistics : Statistics or path, optional
        Statistics collected earlier (:meth:`Statistics.save`); then ``calibration_data`` may be omitted if
        ``example`` (one input batch, for the trace) is given.
    backend : {"fake", "kernels"}
        Fake-quantized torch modules (CPU or CUDA), or the integer kernels of :mod:`aciq.kernels`.

    Examples
    --------
    >>> import torch
    >>> from aciq.quant import quantize, preset
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8 * 6 * 6, 10))
    >>> calib = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    >>> qnet = quantize(net, preset("w4a4-all"), calib)
    >>> qnet(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """
    _check_config(config)
    if statistics is not None and not isinstance(statistics, Statistics):
        statistics = Statistics.load(statistics)
    if statistics is not None and calibration_data is None:
        if example is None:
            raise ValueError("with statistics and no calibration_data, give example= (one input batch)")
        batches = [_batch_input(example, 0)]
    else:
        batches = as_batches(calibration_data)
    p = prepare(model, batches[0], config)
    if statistics is None:
        statistics = collect_statistics(model, config, batches, prepared=p)
    return convert(p, config, statistics, backend=backend)

