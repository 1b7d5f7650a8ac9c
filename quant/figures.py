r"""Figures of a real model's weights, each a function that returns a :class:`matplotlib.figure.Figure`.

:func:`bias_error_figure` is the seed's ``resnet101_bias_err.png`` (``bias_correction.ipynb``), for any model:
every output channel :math:`c` of every conv, quantized per channel at ``weight_bits`` on the gemmlowp grid the
quantizer really uses (step :math:`\Delta_c`), shows

* top, the seed's quantity: :math:`|\mathbb{E} W_c| / \Delta_c`, the channel mean in bins (the seed divided by
  ``range/16``; the step of a 4-bit grid over the range is ``range/15``);
* bottom, the mean error quantization leaves, :math:`\mathbb{E}(W_c - Q(W_c)) / \Delta_c` in bins, before and
  after bias correction (eq. 12, 13; :func:`aciq.theory.correction_terms` through the quantizer).

The red line is half a bin, the largest mean rounding error. The numbers come from the same code path as
:func:`aciq.quant.quantize` (``prepare`` folds BatchNorm; each layer's weights are quantized by the function
``convert`` uses), so the figure shows what the quantizer does. ``aciq model-figures`` saves them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from .api import prepare
from .plan import layer_spec
from .weights import quantize_weights
from .config import PerChannel, QuantConfig

__all__ = ["BiasErrorData", "bias_error_data", "bias_error_figure", "MODEL_FIGURES", "save_model_figures"]


@dataclass(frozen=True)
class BiasErrorData:
    """Per output channel, over the layers in ``layers`` (``layer_index[i]`` is channel ``i``'s layer):
    ``step`` (the grid's :math:`\\Delta_c`), ``mean_bins`` (:math:`|E W_c| / \\Delta_c`), ``error_before`` and
    ``error_after`` (:math:`E(W_c - Q(W_c)) / \\Delta_c`, signed, without and with ``correction``)."""

    title: str
    weight_bits: int
    correction: str
    layers: tuple
    layer_index: np.ndarray
    step: np.ndarray
    mean_bins: np.ndarray
    error_before: np.ndarray
    error_after: np.ndarray


def bias_error_data(model: nn.Module, example: torch.Tensor, *, weight_bits: int = 4, clipping: str = "minmax",
                    correction: str = "mean", include_linear: bool = False, title: str | None = None
                    ) -> BiasErrorData:
    """The numbers of :func:`bias_error_figure` (module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        A float model (copied and folded; left untouched).
    example : torch.Tensor
        One input batch for the trace that finds the layers and folds BatchNorm (its values do not matter).
    weight_bits : int
        1..8, every layer alike (no 8-bit first/last layer).
    clipping : str
        The weight clipping mode (:class:`aciq.quant.QuantConfig`); the seed's notebook used ``minmax``.
    correction : {"mean", "mean+variance"}
        The bias correction compared with none.
    include_linear : bool
        Also the linear layers (the seed plots the convs only).
    """
    if correction not in ("mean", "mean+variance"):
        raise ValueError(f"correction must be 'mean' or 'mean+variance', got {correction!r}")
    base = QuantConfig(weight_bits=weight_bits, act_bits=None, weight_granularity=PerChannel(axis=0),
                       weight_clipping=clipping, first_layer_bits=None, last_layer_bits=None)
    corrected = base.replace(bias_correction=correction, bias_form="seed")
    p = prepare(model, example, base)
    types = (nn.Conv2d, nn.Linear) if include_linear else (nn.Conv2d,)
    layers = [n for n in p.layers if isinstance(p.model.get_submodule(n), types)]
    if not layers:
        raise ValueError(f"model has no {' or '.join(t.__name__ for t in types)} layer reached by a forward pass")
    parts = {k: [] for k in ("index", "step", "mean", "before", "after")}
    for i, name in enumerate(layers):
        w = p.model.get_submodule(name).weight.detach().double()
        w2d = w.reshape(w.shape[0], -1)
        layer = p.model.get_submodule(name)
        plain = quantize_weights(layer, layer_spec(p, name, base, {}))
        fixed = quantize_weights(layer, layer_spec(p, name, corrected, {}))
        step = np.asarray(plain.weight_grid.scale, np.float64)
        before = (w2d - plain.weight.double().reshape(w2d.shape)).mean(1).cpu().numpy()
        after = (w2d - fixed.weight.double().reshape(w2d.shape)).mean(1).cpu().numpy()
        parts["index"].append(np.full(w.shape[0], i))
        parts["step"].append(step)
        parts["mean"].append(np.abs(w2d.mean(1).cpu().numpy()) / step)
        parts["before"].append(before / step)
        parts["after"].append(after / step)
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return BiasErrorData(title=title or type(model).__name__, weight_bits=weight_bits, correction=correction,
                         layers=tuple(layers), layer_index=cat["index"], step=cat["step"], mean_bins=cat["mean"],
                         error_before=cat["before"], error_after=cat["after"])


def bias_error_figure(data: BiasErrorData) -> Figure:
    """The seed's ``resnet101_bias_err`` figure from :func:`bias_error_data` (two panels, one point per channel)."""
    x = np.arange(data.step.shape[0])
    fig = Figure(figsize=(8.0, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    grid = f"{data.weight_bits}-bit per-channel grid"
    top.plot(x, data.mean_bins, ".", ms=2, color="C0", label=r"$|\mathrm{E}\,W_c| / \Delta_c$ (mean channel value)")
    top.set(ylabel="bins", yscale="log",
            title=f"{data.title}: {len(data.layers)} layers, {x.size} output channels, {grid}")
    bottom.plot(x, np.abs(data.error_before), ".", ms=2, color="C1", label="quantized, no correction")
    bottom.plot(x, np.abs(data.error_after), ".", ms=2, color="C2",
                label=f"after {data.correction} bias correction (largest {np.abs(data.error_after).max():.1e})")
    bottom.set(xlabel="output channel (layers in forward order)",
               ylabel=r"$|\mathrm{E}(W_c - Q(W_c))| / \Delta_c$ (bins)")
    for ax in (top, bottom):
        ax.axhline(0.5, color="r", ls="--", lw=1, label="half a bin (largest rounding bias)")
        starts = np.flatnonzero(np.diff(data.layer_index)) + 0.5
        for s in starts[::max(1, len(starts) // 40)]:   # at most ~40 layer boundaries, faint
            ax.axvline(s, color="0.85", lw=0.5, zorder=0)
        ax.legend(fontsize=7, loc="upper right", markerscale=4)
    return fig


# --------------------------------------------------------------------------- saving
def _example(name: str) -> torch.Tensor:
    from .zoo import input_size

    return torch.zeros(1, *input_size(name))


MODEL_FIGURES = {"bias-error": (bias_error_data, bias_error_figure)}
"""Figure name -> (data function, figure function) of :func:`save_model_figures`."""


def save_model_figures(name: str, out, *, weights=None, weight_bits: int = 4, formats=("png",)) -> list[Path]:
    """Every model figure of zoo model ``name`` (``weights``: a state-dict file) into ``out``, as
    ``<figure>-<model>.<fmt>`` (``bias-error-resnet20-fmnist.png``); returns the written paths.

    Raises ``ValueError`` for an unknown model and, naming the file, for weights that are missing or do not
    fit (``aciq.quant.zoo.load_model``); without ``weights``, a torchvision model's download that fails.
    """
    from .zoo import load_model

    try:
        model = load_model(name, weights=weights)
    except (OSError, RuntimeError) as exc:      # a missing file, a failed download: one clear message
        raise ValueError(str(exc)) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig_name, (data_fn, figure_fn) in MODEL_FIGURES.items():
        fig = figure_fn(data_fn(model, _example(name), weight_bits=weight_bits, title=name))
        for fmt in formats:
            path = out / f"{fig_name}-{name.replace('_', '-')}.{fmt}"
            fig.savefig(path, dpi=150, metadata={"Software": None} if fmt == "png" else None)
            paths.append(path)
    return paths
