"""One layer's weights on their grid: clipping and bit allocation, nearest or second-order rounding, the
analytic bias correction (eq. 12, 13). Both calibration modes call :func:`quantize_weights`.

Every number comes from :mod:`aciq.theory`: the grid from :mod:`aciq.quant.calibrate`, the rounding from
:func:`aciq.theory.gptq_round`, the correction from :func:`aciq.theory.correction_terms`.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from aciq.theory import correction_terms

from .calibrate import candidate_errors, site_grid
from .fake import GridParams
from .fake import codes as grid_codes
from .fake import dequantize
from .modules import LayerQuant
from .observe import Observer
from .plan import LayerSpec

__all__ = ["quantize_weights", "bias_inputs", "weight_groups"]


def _weight_stats(w2d: torch.Tensor, spec, name: str):
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


def bias_inputs(layer: nn.Module, in_mean: np.ndarray) -> np.ndarray:
    """Expected sum of the inputs each output channel sees (calibration means; padding ignored)."""
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return np.full(w.shape[0], in_mean.sum())
    groups = layer.groups
    per_group = in_mean.reshape(groups, -1).sum(1) * (w.shape[2] * w.shape[3])
    return np.repeat(per_group, w.shape[0] // groups)


def weight_groups(layer: nn.Module) -> int:
    return layer.groups if isinstance(layer, nn.Conv2d) else 1


def _gptq_codes(w2d: np.ndarray, grid: GridParams, hessian: np.ndarray, spec: LayerSpec, layer: nn.Module,
                name: str) -> np.ndarray:
    """Codes of second-order rounding, group by group (a depthwise conv has one Hessian per channel)."""
    n, k = w2d.shape
    groups = weight_groups(layer)
    if hessian is None:
        raise ValueError(f"layer {name}: weight_rounding='gptq' needs the layer's input Hessian, and the "
                         "statistics hold none (collect them with this config)")
    if hessian.shape != (groups, k, k):
        raise ValueError(f"layer {name}: the Hessian has shape {hessian.shape}, the layer needs "
                         f"{(groups, k, k)} (statistics of another model?)")
    from aciq.theory import gptq_round

    res = gptq_round(w2d.reshape(groups, n // groups, k), hessian, scale=grid.scale, zero_point=grid.zero_point,
                     bits=grid.bits, fill=grid.fill, damp=spec.gptq_damp, order=spec.gptq_order, name=name)
    return np.asarray(res.codes).reshape(n, k)


def quantize_weights(layer: nn.Module, spec: LayerSpec, *, in_mean: np.ndarray | None = None,
                     hessian: np.ndarray | None = None, samples: int | None = None) -> LayerQuant:
    """The weight grid, codes, dequantized weight and bias of ``layer`` (activation grids are set later).

    ``in_mean``: the calibration mean of the layer's input per channel (the on-grid correction moves its
    offset into the bias); ``hessian``: :math:`X^T X` per group, for ``rounding="gptq"``, from ``samples``
    rows of :math:`X`. With fewer samples than inputs per output (a classifier seeing one row per image) the
    compensation is underdetermined: it would fit the calibration images, so the layer keeps nearest rounding
    (the report says so).
    """
    name = spec.name
    w = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach().double().clone()
    info = {}
    if spec.weight is None:
        return LayerQuant(name, weight_grid=None, codes=None, weight=w, bias=layer.bias, scale_factor=None,
                          act_in=None, act_out=None, info=info)
    w2d = w.reshape(w.shape[0], -1).double()
    if spec.quantizer == "kmeans":             # a non-uniform codebook per channel: no grid
        from .kmeans import kmeans_weight

        grid = None
        w_hat, q_t, info["weight"] = kmeans_weight(w2d, bits=spec.weight.bits, per_channel=spec.weight.per_channel)
        q_t = torch.as_tensor(q_t)
    else:
        stats = _weight_stats(w2d, spec.weight, name)
        grid, info["weight"] = site_grid(stats, spec.weight, axis=0)
    k = w2d.shape[1] // weight_groups(layer)
    underdetermined = spec.rounding == "gptq" and samples is not None and samples < k
    if underdetermined:
        info["rounding"] = f"nearest (the Hessian has {samples} samples for {k} inputs: underdetermined)"
    if grid is None:
        pass
    elif spec.rounding == "gptq" and not underdetermined:
        q = _gptq_codes(w2d.cpu().numpy(), grid, hessian, spec, layer, name)
        q_t = torch.as_tensor(q, dtype=torch.uint8, device=w2d.device)
        info["rounding"] = "gptq"
    else:
        q_t = grid_codes(w2d, grid, dtype=torch.uint8)     # 0..255 (bits <= 8)
    if grid is not None:
        w_hat = dequantize(q_t, grid, dtype=w2d.dtype)
    q = q_t.cpu().numpy()
    scale_factor, row_offset = None, None
    if spec.bias_correction in ("mean", "mean+variance"):
        terms = correction_terms(w2d.cpu().numpy(), w_hat.cpu().numpy(), mode=spec.bias_correction,
                                 form="seed", axis=0)
        xi = torch.as_tensor(terms.scale_factor, dtype=w_hat.dtype, device=w_hat.device)
        offset = torch.as_tensor(terms.offset, dtype=w_hat.dtype, device=w_hat.device)
        scale_factor = terms.scale_factor
        if spec.bias_form == "seed":
            w_hat = xi[:, None] * w_hat + offset[:, None]
            row_offset = terms.offset
        else:  # on-grid: xi scales the channel's step; the offset times E[sum of inputs] joins the bias
            w_hat = xi[:, None] * w_hat
            if in_mean is None:
                raise ValueError(f"layer {name}: the on-grid bias correction needs the input means")
            shift = torch.as_tensor(terms.offset * bias_inputs(layer, in_mean), dtype=torch.float64,
                                    device=w_hat.device)
            bias = shift if bias is None else bias + shift
        info["bias_correction"] = {"mode": spec.bias_correction, "form": spec.bias_form,
                                   "mean_abs_offset": float(np.abs(terms.offset).mean()),
                                   "mean_scale_factor": float(np.mean(terms.scale_factor))}
    return LayerQuant(name, weight_grid=grid, codes=q, weight=w_hat.reshape(w.shape).to(w.dtype),
                      bias=None if bias is None else bias.to(w.dtype), scale_factor=scale_factor,
                      act_in=None, act_out=None, info=info, row_offset=row_offset)
