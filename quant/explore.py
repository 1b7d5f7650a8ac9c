"""Measured tensors for the explorer (``notebooks/00-explore.ipynb``): what a layer sees and how each
calibrator clips it.

:func:`layer_inputs` samples the input of every conv/linear layer over calibration images (for the MSE
panel of :class:`aciq.theory.explore.Explorer`); :func:`site_views` gives, per layer input, the statistics
of :func:`aciq.quant.collect_statistics` (per tensor) and the window of every calibrator from
:func:`aciq.quant.calibrate.site_window`, exactly as :func:`aciq.quant.quantize` would compute them, drawn
by :func:`aciq.theory.figures.site_histogram`. The numbers come from the library; these functions only
collect them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .api import as_batches, collect_statistics, prepare
from .calibrate import SiteSpec, _scale, site_window
from .config import PerTensor, QuantConfig

__all__ = ["CALIBRATORS", "SiteView", "site_views", "layer_inputs"]

CALIBRATORS = ("minmax", "laplace", "gauss", "kstd", "exact", "kl", "mse")
"""The calibrators :func:`site_views` compares (``mix`` only picks among the first three)."""


@dataclass(frozen=True)
class SiteView:
    """One layer input, per tensor: its histogram, fitted scales and every calibrator's window.

    ``hist`` counts :math:`|x|` on ``edges`` (or :math:`x > 0` when ``half``, a non-negative input);
    ``scales`` maps each prior to the scale ACIQ uses (b or sigma, of the positive part when ``half``);
    ``windows`` maps a calibrator to its ``(lo, hi)`` at ``bits``.
    """

    site: str
    bits: int
    half: bool
    hist: np.ndarray
    edges: np.ndarray
    mean: float
    scales: dict
    windows: dict

    def figure(self):
        """:func:`aciq.theory.figures.site_histogram` of this site."""
        from aciq.theory.figures import site_histogram

        return site_histogram(self.hist, self.edges, half_range=self.half, mean=self.mean, scales=self.scales,
                              windows=self.windows,
                              title=f"{self.site}: {self.bits}-bit activations per tensor, each calibrator's window")


def site_views(model: torch.nn.Module, calibration_data, *, bits: int = 4, calibrators=CALIBRATORS,
               kstd: float = 2.0, kl_bins: int = 2048, mse_candidates: int = 100) -> dict[str, SiteView]:
    """Every conv/linear input of ``model`` (BatchNorm folded) with each calibrator's window at ``bits``.

    Two collections of statistics over ``calibration_data`` (one with the ``kl`` histograms, one with the
    ``mse`` candidate errors; every other calibrator reads the moments both have), per tensor, with the
    first and last layers at ``bits`` too. Half range as ``quantize`` decides it: a non-negative input.
    """
    unknown = set(calibrators) - set(CALIBRATORS)
    if unknown:
        raise ValueError(f"calibrators: unknown {sorted(unknown)}; known: {list(CALIBRATORS)}")
    batches = as_batches(calibration_data)
    config = QuantConfig(weight_bits=None, act_bits=bits, act_granularity=PerTensor(), act_clipping="kl",
                         first_layer_bits=None, last_layer_bits=None, kstd=kstd, kl_bins=kl_bins,
                         mse_candidates=mse_candidates)
    prepared = prepare(model, batches[0], config)
    with_hist = collect_statistics(model, config, batches, prepared=prepared)
    with_errors = None
    if "mse" in calibrators:
        with_errors = collect_statistics(model, config.replace(act_clipping="mse"), batches, prepared=prepared)
    views = {}
    for site, stats in with_hist.sites.items():
        s = stats.tensor()
        half = bool(s.min.min() >= 0)
        windows = {}
        for mode in calibrators:
            spec = SiteSpec(clipping=mode, bits=bits, per_channel=False, half=half, kstd=kstd,
                            mse_candidates=mse_candidates)
            source = with_errors.sites[site].tensor() if mode == "mse" else s
            lo, hi = site_window(source, mode, np.array([bits]), spec)
            windows[mode] = (float(np.ravel(lo)[0]), float(np.ravel(hi)[0]))
        hist = s.hist_pos if half else s.hist_abs
        spec = SiteSpec(clipping="laplace", bits=bits, per_channel=False, half=half)
        views[site] = SiteView(site=site, bits=bits, half=half, hist=hist,
                               edges=np.linspace(0.0, s.hist_top(half), hist.size + 1), mean=float(s.mean[0]),
                               scales={p: float(_scale(s, p, spec)[0]) for p in ("laplace", "gauss")},
                               windows=windows)
    return views


@torch.no_grad()
def layer_inputs(model: torch.nn.Module, calibration_data, *, layers=None, max_values: int = 20_000,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded random sample of ``max_values`` values of the input of each conv/linear layer.

    ``layers`` picks some (names as in ``model.named_modules()``), default all, in execution order. The
    values are drawn uniformly from every element the layer sees over ``calibration_data``.
    """
    if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1:
        raise ValueError(f"max_values must be a positive integer, got {max_values!r}")
    batches = as_batches(calibration_data)
    prepared = prepare(model, batches[0], QuantConfig())
    names = prepared.layers if layers is None else list(layers)
    missing = sorted(set(names) - set(prepared.layers))
    if missing:
        raise ValueError(f"layers: the model has no conv/linear layer named {missing[:5]}")
    seen = {name: [] for name in names}
    handles = [prepared.model.get_submodule(name).register_forward_pre_hook(
        lambda m, args, out=seen[name]: out.append(args[0].detach().float().cpu().reshape(-1))) for name in names]
    device = next((p.device for p in prepared.model.parameters()), torch.device("cpu"))
    try:
        for x in batches:
            prepared.model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        values = torch.cat(seen.pop(name)).numpy()
        if values.size > max_values:
            values = values[np.sort(rng.choice(values.size, max_values, replace=False))]
        out[name] = values.astype(np.float64)
    return out
