"""The recipe narrowed to each site, once: what every layer's weights, input and output get.

A :class:`~aciq.quant.config.QuantConfig` says what is wanted for the whole model; :func:`make_plan` turns it
into one :class:`LayerSpec` per conv/linear (and one :class:`~aciq.quant.calibrate.SiteSpec` per quantized
pooling output) right after the first statistics pass, the only config-dependent decision that needs data being
whether a tensor is non-negative (``half_range="auto"``). Everything after that (the later statistics passes,
the sequential calibration, conversion) reads the plan, never the config.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .calibrate import SiteSpec
from .config import PerChannel, QuantConfig

__all__ = ["LayerSpec", "Plan", "make_plan", "layer_spec", "pool_spec", "observed_sites"]


@dataclass(frozen=True)
class LayerSpec:
    """How one conv/linear layer is quantized.

    ``weight``, ``act_in`` and ``act_out`` are the grids' specs (None: left in float); the rest says what is
    done to the weights: analytic (``mean``, ``mean+variance``) or ``empirical`` bias correction, the form of
    the analytic one, and nearest or second-order (``gptq``) rounding; and to the quantized output: the
    activation bias correction (``act_bias``: ``off``, ``calibration``, ``oracle``; conv outputs only) and
    whether a ReLU consumes that output (``relu``).
    """

    name: str
    weight: SiteSpec | None
    act_in: SiteSpec | None
    act_out: SiteSpec | None = None
    bias_correction: str = "off"
    bias_form: str = "seed"
    rounding: str = "nearest"
    quantizer: str = "uniform"
    gptq_damp: float = 0.01
    gptq_order: str = "descending"
    act_bias: str = "off"
    relu: bool = False

    @property
    def weights_off_grid(self) -> bool:
        return self.bias_correction in ("mean", "mean+variance") and self.bias_form == "seed"


@dataclass
class Plan:
    """Every layer's :class:`LayerSpec` (execution order) and the pooling outputs' specs."""

    layers: dict = field(default_factory=dict)      # layer name -> LayerSpec
    pools: dict = field(default_factory=dict)       # pool module name -> SiteSpec
    calibration: str = "float"

    def act_sites(self) -> dict:
        """``{site: SiteSpec}`` of every quantized activation site (``name:input``, ``name:output``,
        ``name:pool``)."""
        out = {}
        for name, spec in self.layers.items():
            if spec.act_in is not None:
                out[f"{name}:input"] = spec.act_in
            if spec.act_out is not None:
                out[f"{name}:output"] = spec.act_out
        out.update({f"{name}:pool": s for name, s in self.pools.items()})
        return out


def _layer_bits(p, name: str, config: QuantConfig, kind: str):
    """(bits, overridden): the config's bits, or the first/last layer's."""
    bits = config.weight_bits if kind == "weight" else config.act_bits
    if bits is None:
        return None, False
    if name == p.first and config.first_layer_bits is not None:
        return config.first_layer_bits, True
    if name == p.last and config.last_layer_bits is not None:
        return config.last_layer_bits, True
    return bits, False


def _act(p, name: str, where: str, stats, config: QuantConfig) -> SiteSpec | None:
    if (where == "input") != (config.act_site == "input"):
        return None
    bits, override = _layer_bits(p, name, config, "act")
    if bits is None:
        return None
    fused = where == "output" and p.fused.get(name, False)
    if config.half_range == "auto":
        half = fused or (where == "input" and bool(stats.min.min() >= 0))
    else:
        half = bool(config.half_range)
        fused = fused and half
    cap = p.caps.get(name) if (where == "input" and half and config.act_cap == "auto") else None
    quantizer = "uniform" if override else config.act_quantizer
    return SiteSpec(clipping=config.act_clipping, bits=bits, per_channel=isinstance(config.act_granularity,
                                                                                     PerChannel),
                    half=half, fused=fused, alloc=None if override else config.act_bit_alloc,
                    avg_bits=config.act_avg_bits, budget=config.alloc_budget, kstd=config.kstd,
                    exact_prior=config.exact_prior, mse_candidates=config.mse_candidates, kl_bins=config.kl_bins,
                    cap=cap, quantizer=quantizer)


def _weight(p, name: str, config: QuantConfig) -> SiteSpec | None:
    bits, override = _layer_bits(p, name, config, "weight")
    if bits is None:
        return None
    return SiteSpec(clipping=config.weight_clipping, bits=bits,
                    per_channel=isinstance(config.weight_granularity, PerChannel), half=False,
                    alloc=None if override else config.weight_bit_alloc, avg_bits=config.weight_avg_bits,
                    budget=config.alloc_budget, kstd=config.kstd, exact_prior=config.exact_prior,
                    mse_candidates=config.mse_candidates,
                    quantizer="midtread" if config.weight_quantizer == "midtread" and not override else "uniform")


def layer_spec(p, name: str, config: QuantConfig, stats: dict) -> LayerSpec:
    """The spec of layer ``name``; ``stats`` maps its sites (``name:input``, ``name:output``) to first-pass
    statistics (only their minimum is read, for ``half_range="auto"``)."""
    act_in = _act(p, name, "input", stats.get(f"{name}:input"), config)
    act_out = _act(p, name, "output", stats.get(f"{name}:output"), config) if config.act_site == "output" else None
    conv = isinstance(p.model.get_submodule(name), nn.Conv2d)      # the seed's -bca patched Conv2d only
    act_bias = config.act_bias_correction if (act_out is not None and conv) else "off"
    return LayerSpec(name=name, weight=_weight(p, name, config), act_in=act_in, act_out=act_out,
                     bias_correction=config.bias_correction, bias_form=config.bias_form,
                     rounding=config.weight_rounding, quantizer=config.weight_quantizer,
                     gptq_damp=config.gptq_damp, gptq_order=config.gptq_order, act_bias=act_bias,
                     relu=bool(p.fused.get(name, False)))


def pool_spec(stats, config: QuantConfig) -> SiteSpec:
    """Pooling outputs (``pool_bits``): min/max, per tensor, half range when non-negative."""
    half = bool(stats.min.min() >= 0) if config.half_range == "auto" else bool(config.half_range)
    return SiteSpec(clipping="minmax", bits=config.pool_bits, per_channel=False, half=half)


def observed_sites(p, config: QuantConfig) -> list[str]:
    """Every site the float statistics passes observe for ``config``.

    Inputs always (their means feed the on-grid bias correction), outputs at the output site, pooling outputs
    with ``pool_bits``.
    """
    sites = [f"{n}:input" for n in p.layers]
    if config.act_site == "output":
        sites += [f"{n}:output" for n in p.layers]
    if config.pool_bits:
        sites += [f"{n}:pool" for n in p.pools]
    return sites


def make_plan(p, config: QuantConfig, stats: dict) -> Plan:
    """The plan of a prepared model (:class:`aciq.quant.api.Prepared`) from first-pass ``stats``."""
    plan = Plan(calibration=config.calibration)
    for name in p.layers:
        plan.layers[name] = layer_spec(p, name, config, stats)
    for name in (p.pools if config.pool_bits else ()):
        plan.pools[name] = pool_spec(stats[f"{name}:pool"], config)
    return plan
