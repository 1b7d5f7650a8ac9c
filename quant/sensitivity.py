r"""Layer sensitivity: which layers lose most when quantized, and what keeping them at 8 bits buys.

The seed's ``-ct`` kept the "max-MSE" layers of hard-coded per-architecture lists at 8 bits and swept how many
(``SIM:114-125``), and ``-ep`` swept every layer from int8 down to int4; both crash on ``args.threshold``. Here:

* :func:`layer_sqnr` **measures** each layer's quantization error: the layer's float input (from the folded
  float model) goes through the float layer and through its quantized version (weights, input and output
  grids, bias correction, all of it), and the error energy is summed over the images,

  .. math:: \mathrm{SQNR}_\ell = 10\log_{10}\frac{\sum \lVert y_\ell\rVert^2}{\sum\lVert \hat y_\ell - y_\ell\rVert^2},

  so every layer is judged on the same (float) inputs and the ranking does not depend on what the other layers
  do. The lowest SQNR is the most sensitive layer.
* :func:`keep_layers` builds the mixed-precision model: the low-bit quantized model with the named layers
  replaced by their counterparts from the same recipe at 8 bits (:func:`high_precision`), each layer with its
  own weights *and* activation grids.
* :func:`sensitivity_figure` plots a keep-k sweep and a precision sweep.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import QuantConfig
from .fold import set_module
from .modules import KernelLayer, QuantizedLayer

__all__ = ["quantized_layers", "layer_sqnr", "high_precision", "keep_layers", "sensitivity_figure"]


def quantized_layers(qmodel: nn.Module) -> list[str]:
    """Names of the quantized conv/linear layers of ``qmodel``, in module order."""
    names = [n for n, m in qmodel.named_modules() if isinstance(m, (QuantizedLayer, KernelLayer))]
    if not names:
        raise ValueError("qmodel has no quantized layers (make it with aciq.quant.quantize)")
    return names


@torch.no_grad()
def layer_sqnr(qmodel: nn.Module, folded: nn.Module, data) -> dict[str, float]:
    """SQNR (dB) of every quantized layer of ``qmodel`` on the float inputs that ``folded`` gives it.

    Parameters
    ----------
    qmodel : torch.nn.Module
        A model from :func:`aciq.quant.quantize`.
    folded : torch.nn.Module
        The float model with BatchNorm folded, whose module names match ``qmodel`` (``prepare(...).model``).
    data : tensor or iterable of batches
        Images to measure on (the calibration images are fine: nothing is fitted here).

    Returns
    -------
    dict
        layer name -> SQNR in dB (``inf`` for an exact layer), in module order.
    """
    from .api import as_batches

    names = quantized_layers(qmodel)
    modules = dict(folded.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"folded has no modules {missing[:3]}: give the folded float model of qmodel")
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)

    def hook(name, qlayer):
        def fn(module, args, out):
            y_hat = qlayer(args[0])
            y, y_hat = out.double(), y_hat.double()
            signal[name] += float((y * y).sum())
            noise[name] += float(((y_hat - y) ** 2).sum())
        return fn

    handles = [modules[n].register_forward_hook(hook(n, qmodel.get_submodule(n))) for n in names]
    device = next((p.device for p in folded.parameters()), torch.device("cpu"))
    try:
        for x in as_batches(data):
            folded(x.to(device))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n in names:
        if noise[n] == 0.0:
            out[n] = math.inf
        elif signal[n] == 0.0:
            out[n] = -math.inf
        else:
            out[n] = 10.0 * math.log10(signal[n] / noise[n])
    return out


def high_precision(config: QuantConfig, bits: int = 8) -> QuantConfig:
    """The same recipe at ``bits`` for weights and activations (bit allocation averages follow).

    At 8 bits a mid-tread quantizer (at most 255 bins a channel) becomes the 8-bit gemmlowp grid, as on the
    first and last layers.
    """
    wide = bits > math.log2(255)
    return config.replace(weight_bits=None if config.weight_bits is None else bits,
                          act_bits=None if config.act_bits is None else bits,
                          weight_avg_bits=None, act_avg_bits=None,
                          weight_quantizer="uniform" if wide and config.weight_quantizer == "midtread"
                          else config.weight_quantizer,
                          act_quantizer="uniform" if wide else config.act_quantizer)


def keep_layers(low: nn.Module, high: nn.Module, names) -> nn.Module:
    """A copy of the quantized model ``low`` whose layers ``names`` are those of ``high`` (same model, other
    bits): each kept layer brings its weights, its input/output grids and its record."""
    names = list(names)
    available = set(quantized_layers(low))
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"keep: {unknown[:3]} are not quantized layers of the model")
    mixed = copy.deepcopy(low)
    report = dict(getattr(low, "aciq_report", {}))
    for n in names:
        set_module(mixed, n, copy.deepcopy(high.get_submodule(n)))
        if n in getattr(high, "aciq_report", {}):
            report[n] = high.aciq_report[n]
    mixed.aciq_report = report
    mixed.aciq_kept = tuple(names)
    return mixed


def sensitivity_figure(keep_rows: list[dict], bits_rows: list[dict], *, title: str = ""):
    """Top-1 and agreement against the number of layers kept at 8 bits, and against the bit-width."""
    from matplotlib.figure import Figure   # no pyplot: no global figure state, renders headless
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, rows, key, label in ((axes[0], keep_rows, "keep", "layers kept at 8 bits (most sensitive first)"),
                                 (axes[1], bits_rows, "bits", "bits (weights and activations)")):
        if not rows:
            ax.set_visible(False)
            continue
        xs = [r[key] for r in rows]
        for metric, style in (("top1", "o-"), ("agreement", "s--")):
            ys = [r.get(metric) for r in rows]
            if any(y is not None for y in ys):
                ax.plot(xs, [math.nan if y is None else y for y in ys], style, label=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(label)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend()
        if key == "bits":
            ax.invert_xaxis()
    if title:
        fig.suptitle(title)
    return fig
