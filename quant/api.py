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

from . import sequential
from .actbias import ActBiasCorrection, calibrate_act_bias
from .calibrate import site_grid
from .clamp import ChannelClamp
from .config import QuantConfig
from .equalize import equalize, input_ranges
from .fold import fold_and_trace, set_module
from .modules import KernelLayer, LayerQuant, QuantizedLayer, QuantizedOutput
from .observe import Statistics
from .pairs import find_pairs
from .passes import run_passes
from .plan import make_plan, observed_sites
from .trace import LAYER_TYPES, POOL_TYPES, RELU_TYPES, trace
from .weights import quantize_weights

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
    pools: list                                  # pooling modules (quantized where a config sets pool_bits)
    fused: dict = field(default_factory=dict)    # layer -> a ReLU consumes its output
    folded: list = field(default_factory=list)
    first: str | None = None
    last: str | None = None
    caps: dict = field(default_factory=dict)     # layer -> the known upper bound of its input (ReLU6, clamp)
    activations: dict = field(default_factory=dict)  # layer -> (lo, hi) of the clamp-like activation it feeds
    equalization: object = None                  # the EqualizationReport, when the config equalizes

    def shapes(self) -> dict:
        return {n: tuple(self.model.get_submodule(n).weight.shape) for n in self.layers}

    def copy(self) -> "Prepared":
        """An independent copy (conversion swaps modules in place: one copy per config)."""
        return copy.deepcopy(self)


def _check_config(config) -> None:
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a QuantConfig (see aciq.quant.PRESETS), got {type(config).__name__}")


def _cap_of(module: nn.Module):
    """The upper bound a module puts on its (non-negative) output, or None."""
    if isinstance(module, nn.ReLU6):
        return 6.0
    if isinstance(module, nn.Hardtanh) and module.min_val >= 0:
        return float(module.max_val)
    return None


def _input_caps(tr, names: dict, layers: list, report=None) -> dict:
    """The known bound of each layer's input: a ReLU6/Hardtanh producer's, or (after equalization) the upper
    bounds of the clamp site that feeds it (one per channel)."""
    caps = {}
    for n in layers:
        found = [c for c in (_cap_of(names[p]) for p in tr.producers(n)) if c is not None]
        if found:
            caps[n] = min(found)
    for r in (report.pairs if report is not None else ()):
        pair = r.pair
        clamp = names.get(pair.act)
        if isinstance(clamp, ChannelClamp):
            lo = getattr(clamp, f"lo_{pair.act_call}").double().cpu().numpy()
            hi = getattr(clamp, f"hi_{pair.act_call}").double().cpu().numpy()
            if np.all(lo == 0) and np.all(np.isfinite(hi)):
                caps[pair.second] = hi
            else:
                caps.pop(pair.second, None)
    return caps


def _equalize(m: nn.Module, config: QuantConfig, example: torch.Tensor, calibration_data):
    ranges = None
    if config.equalize == "activations" or config.absorb_bias:
        if calibration_data is None:
            raise ValueError(f"equalize={config.equalize!r}{' with absorb_bias' if config.absorb_bias else ''} "
                             "reads the activation ranges of the calibration data: give calibration_data")
        links = find_pairs(m, example[:1])
        ranges = input_ranges(m, calibration_data, [q.second for q in links.pairs])
    return equalize(m, example, rule=config.equalize, act_ranges=ranges, absorb_bias=config.absorb_bias)


def prepare(model: nn.Module, example: torch.Tensor, config: QuantConfig, *,
            calibration_data=None) -> Prepared:
    """Fold a copy of ``model`` and trace it on ``example`` (two forwards of one image); equalize it if the
    config says so (the ``activations`` rule and bias absorption read ``calibration_data``).

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
    example = example.to(device)
    folded, tr = fold_and_trace(m, example[:1])
    eq = None
    if config.equalize is not None:
        eq = _equalize(m, config, example, calibration_data)
        tr = trace(m, example[:1])
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
    fused = {n: any(_relu_like(names[c]) for c in tr.consumers(n)) for n in layers}
    pools = [n for n in tr.order(POOL_TYPES) if n not in config.skip]
    return Prepared(model=m, layers=layers, pools=pools, fused=fused, folded=folded, first=first, last=last,
                    caps=_input_caps(tr, names, layers, eq), equalization=eq,
                    activations={n: a for n in layers if (a := _output_activation(tr, names, n)) is not None})


def _output_activation(tr, names: dict, layer: str):
    """``(lo, hi)`` of the activation that alone consumes ``layer``'s output (a ReLU, ReLU6, Hardtanh or clamp
    site, per channel for a clamp), or None."""
    outs = {c.output for c in tr.calls if c.name == layer and c.output is not None}
    users = [c for c in tr.calls if c.name != layer and outs.intersection(c.inputs)]
    users = [c for c in users if not isinstance(names[c.name], nn.Identity)]
    if len(users) != 1:
        return None
    call = users[0]
    module = names[call.name]
    if isinstance(module, ChannelClamp):
        k = [c for c in tr.calls if c.name == call.name].index(call) % module.sites
        return (getattr(module, f"lo_{k}").double().cpu().numpy(), getattr(module, f"hi_{k}").double().cpu().numpy())
    if isinstance(module, nn.ReLU):
        return 0.0, float("inf")
    if isinstance(module, nn.Hardtanh):
        return float(module.min_val), float(module.max_val)
    return None


def _relu_like(module: nn.Module) -> bool:
    """A ReLU, or a clamp whose every lower bound is 0 (an equalized ReLU/ReLU6): its input may be quantized
    with the half range at the producer's output (the seed's fused ReLU)."""
    if isinstance(module, RELU_TYPES):
        return True
    if isinstance(module, ChannelClamp):
        return all(bool((getattr(module, f"lo_{k}") == 0).all()) for k in range(module.sites))
    return False


# --------------------------------------------------------------------------- statistics
def _device(model: nn.Module) -> torch.device:
    return next((q.device for q in model.parameters()), torch.device("cpu"))


def collect_statistics(model: nn.Module, config, calibration_data, *, prepared: Prepared | None = None) -> Statistics:
    """Statistics of every site of ``model`` (folded) over ``calibration_data``, on the float model.

    ``config`` may be a list of configs (float calibration, the same ``skip`` and equalization): the
    statistics then serve each of them (every grid, error and Hessian any of them reads), from the same
    passes over the data.
    """
    configs = list(config) if isinstance(config, (list, tuple)) else [config]
    if not configs:
        raise ValueError("config: give a QuantConfig or a non-empty list of them")
    for c in configs:
        _check_config(c)
        if c.calibration != "float":
            raise ValueError("collect_statistics observes the float model: calibration='sequential' configs "
                             "measure their statistics while they quantize (use quantize())")
        if _prepare_key(c) != _prepare_key(configs[0]):
            raise ValueError("config: the configs of one statistics collection must share skip, equalize and "
                             f"absorb_bias ({_prepare_key(c)} vs {_prepare_key(configs[0])})")
    batches = as_batches(calibration_data)
    p = prepared if prepared is not None else prepare(model, batches[0], configs[0], calibration_data=batches)
    res = run_passes(p, configs, batches)
    return Statistics(sites=res.sites, layers=p.shapes(), images=sum(int(b.shape[0]) for b in batches),
                      hessians=res.hessians, hessian_rows=res.hessian_rows)


def _prepare_key(config: QuantConfig) -> tuple:
    """What :func:`prepare` reads of a config: configs that agree on it share a prepared model."""
    return (tuple(config.skip), config.equalize, config.absorb_bias)


# --------------------------------------------------------------------------- convert
def _attach(p: Prepared, name: str, q: LayerQuant, backend: str) -> nn.Module:
    layer = p.model.get_submodule(name)
    new = KernelLayer(layer, q) if backend == "kernels" else QuantizedLayer(layer, q)
    new.to(layer.weight.device)     # the buffers are made on the CPU; follow the model
    set_module(p.model, name, new)
    return new


def _check_backend(config: QuantConfig, backend: str) -> None:
    if backend not in ("fake", "kernels"):
        raise ValueError(f"backend must be 'fake' or 'kernels', got {backend!r}")
    if backend == "kernels" and config.act_site != "input":
        raise ValueError("backend='kernels' quantizes activations as they load: it needs act_site='input'")
    if backend == "kernels" and config.weight_quantizer == "kmeans":
        raise ValueError("backend='kernels' runs uniform integer grids: weight_quantizer='kmeans' needs the "
                         "fake backend")
    if backend == "kernels" and "midtread" in (config.weight_quantizer, config.act_quantizer):
        raise ValueError("backend='kernels' runs grids of 2**bits levels: the mid-tread quantizer "
                         "(weight_quantizer / act_quantizer='midtread') needs the fake backend")
    if backend == "kernels" and config.weights_off_grid:
        raise ValueError("backend='kernels' needs integer weights: use bias_form='on-grid' (the seed form moves "
                         "weights off the grid)")


def _site_grid(site: str, stats, spec):
    try:
        return site_grid(stats, spec, axis=stats.axis)
    except ValueError as exc:
        raise ValueError(f"site {site}: {exc}") from None


def _finish(model: nn.Module, config: QuantConfig, report: dict, folded: list) -> nn.Module:
    model.aciq_config = config
    model.aciq_report = report
    model.aciq_folded = folded
    return model


def _attach_act_bias(p: Prepared, plan, report: dict, calibration_data) -> None:
    """The activation bias corrections (``-bca``) of the quantized conv outputs; calibrated on
    ``calibration_data`` (the ``calibration`` form) once every layer is quantized."""
    specs = {n: s for n, s in plan.layers.items() if s.act_bias != "off"}
    for name, spec in specs.items():
        module = p.model.get_submodule(name)
        channels = module.layer.weight.shape[0]
        corr = ActBiasCorrection(channels, mode=spec.act_bias, relu=spec.relu, axis=1, name=name)
        module.set_act_bias(corr.to(_device(p.model)))
        report[name]["act_bias_correction"] = corr.record()
    if not specs or calibration_data is None:
        return
    for name, rec in calibrate_act_bias(p.model, as_batches(calibration_data)).items():
        report[name]["act_bias_correction"] = rec


def convert(p: Prepared, config: QuantConfig, statistics: Statistics, *, backend: str = "fake",
            calibration_data=None) -> nn.Module:
    """Swap every layer of the prepared copy for its quantized version (float-model statistics).

    ``calibration_data`` is read only by ``act_bias_correction="calibration"``, whose shifts are measured on
    the quantized model.
    """
    _check_backend(config, backend)
    if config.act_bias_correction == "calibration" and calibration_data is None:
        raise ValueError("act_bias_correction='calibration' runs the quantized model on the calibration data: "
                         "give calibration_data")
    if config.calibration != "float":
        raise ValueError("convert() reads float-model statistics; calibration='sequential' quantizes while it "
                         "observes: use quantize() (or aciq.quant.sequential.calibrate)")
    statistics.check_model(p.shapes())
    sites = observed_sites(p, config)
    missing = [s for s in sites if s not in statistics.sites]
    if missing:
        raise ValueError(f"statistics lack sites {missing[:3]} that this config quantizes "
                         f"(collected with act_site/pool_bits different from this config?)")
    stats = statistics.sites
    plan = make_plan(p, config, stats)
    grids = {site: _site_grid(site, stats[site], spec) for site, spec in plan.act_sites().items()}
    report = {}
    for name, spec in plan.layers.items():
        q = quantize_weights(p.model.get_submodule(name), spec, in_mean=stats[f"{name}:input"].mean,
                             hessian=statistics.hessians.get(name), samples=statistics.hessian_rows.get(name))
        gi, go = grids.get(f"{name}:input"), grids.get(f"{name}:output")
        q.act_in = gi[0] if gi else None
        q.act_out = go[0] if go else None
        q.info.update({"act_in": gi[1] if gi else None, "act_out": go[1] if go else None})
        _attach(p, name, q, backend)
        report[name] = q.info
    for name in plan.pools:
        module = QuantizedOutput(p.model.get_submodule(name), grids[f"{name}:pool"][0])
        set_module(p.model, name, module.to(_device(p.model)))
    _attach_act_bias(p, plan, report, calibration_data)
    return _finish(p.model, config, report, p.folded)


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
    p = prepare(model, batches[0], config, calibration_data=None if calibration_data is None else batches)
    if config.calibration == "sequential":
        if statistics is not None:
            raise ValueError("calibration='sequential' measures each layer's statistics on the partly quantized "
                             "model: statistics= applies to calibration='float' only")
        _check_backend(config, backend)
        report = sequential.calibrate(p, config, batches, backend=backend)
        return _finish(p.model, config, report, p.folded)
    if statistics is None:
        statistics = collect_statistics(model, config, batches, prepared=p)
    return convert(p, config, statistics, backend=backend,
                   calibration_data=None if calibration_data is None else batches)

