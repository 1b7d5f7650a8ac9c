r"""Fold BatchNorm into the conv or linear layer that feeds it (inference form).

With :math:`\gamma, \beta, \mu, \sigma^2, \epsilon` of the BN and :math:`k_o = \gamma_o/\sqrt{\sigma_o^2+\epsilon}`:

.. math::

    W_o \leftarrow k_o W_o, \qquad b_o \leftarrow k_o (b_o - \mu_o) + \beta_o

for every output channel :math:`o` (any ``groups``, depthwise included: the seed skipped grouped convs). The
BN becomes ``nn.Identity``. A BN is folded only when the trace shows that its input is the output of a conv
(or linear) called once, consumed by that BN alone; the folded model is then checked against the original on
the example input. The trace cannot see functional uses (``y = bn(conv(x)) + conv_out``): if the folded
model's output differs, the pairs are retried one at a time and a pair that changes the output is left
unfolded.
"""
from __future__ import annotations

import torch
from torch import nn

from .trace import BN_TYPES, LAYER_TYPES, trace

__all__ = ["fold_batchnorm", "fold_and_trace", "set_module"]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``new``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@torch.no_grad()
def _fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    k = gamma / torch.sqrt(var + bn.eps)
    w = layer.weight.double()
    layer.weight.copy_((w * k.reshape([-1] + [1] * (w.ndim - 1))).to(layer.weight.dtype))
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
    new_bias = (k * (b - mean) + beta).to(layer.weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        layer.bias.copy_(new_bias)


def _flat(out) -> torch.Tensor:
    """A model output (a tensor, or a tuple/list/dict of them, e.g. Inception's) as one flat float tensor."""
    if isinstance(out, torch.Tensor):
        return out.detach().flatten().double()
    if isinstance(out, dict):
        out = list(out.values())
    parts = [_flat(o) for o in out if isinstance(o, (torch.Tensor, tuple, list, dict))]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def _close(out, ref, rtol: float) -> tuple[bool, float, float]:
    """Same non-finite pattern and max |out - ref| <= rtol * max |ref| over the finite entries."""
    out, ref = _flat(out), _flat(ref)
    fin = torch.isfinite(ref)
    if not torch.equal(fin, torch.isfinite(out)):
        return False, float("nan"), 0.0
    if not fin.any():
        return True, 0.0, 0.0
    err = (out[fin] - ref[fin]).abs().max().item()
    tol = rtol * max(ref[fin].abs().max().item(), 1e-6)
    return err <= tol, err, tol


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor, *, rtol: float = 1e-3) -> list[tuple[str, str]]:
    """Fold every foldable BN of ``model`` in place; return the ``(layer, bn)`` name pairs folded.

    ``model`` must be in eval mode (BN running statistics). The folded model's output on ``example`` must
    stay within ``rtol`` of the original's scale; a pair that breaks this (its conv output is also used by a
    functional op the trace cannot see) is left unfolded.
    """
    return fold_and_trace(model, example, rtol=rtol)[0]


@torch.no_grad()
def fold_and_trace(model: nn.Module, example: torch.Tensor, *, rtol: float = 1e-3):
    """:func:`fold_batchnorm`, returning ``(pairs, trace of the folded model)``: two forwards in all (the trace
    before folding gives the reference output, the trace after it the output that is checked)."""
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()) to fold BatchNorm")
    tr = trace(model, example)
    ref = tr.output
    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, BN_TYPES) or not module.track_running_stats or tr.count(name) != 1:
            continue
        producers = tr.producers(name)
        if len(producers) != 1:
            continue
        layer_name = producers[0]
        layer = model.get_submodule(layer_name)
        if (not isinstance(layer, LAYER_TYPES) or tr.count(layer_name) != 1
                or tr.consumers(layer_name) != [name]
                or layer.weight.shape[0] != module.num_features):
            continue
        pairs.append((layer_name, name))
    if not pairs:
        return pairs, tr

    saved = {}

    def apply(pair):
        layer_name, bn_name = pair
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        saved[pair] = (layer.weight.detach().clone(), None if layer.bias is None else layer.bias.detach().clone(),
                       layer.bias is None, bn)
        _fold_pair(layer, bn)
        set_module(model, bn_name, nn.Identity())

    def undo(pair):
        layer_name, bn_name = pair
        weight, bias, had_none, bn = saved.pop(pair)
        layer = model.get_submodule(layer_name)
        layer.weight.copy_(weight)
        if had_none:
            layer.bias = None
        else:
            layer.bias.copy_(bias)
        set_module(model, bn_name, bn)

    for pair in pairs:
        apply(pair)
    after = trace(model, example)
    if _close(after.output, ref, rtol)[0]:
        return pairs, after
    for pair in pairs:        # some fold is wrong: keep only the pairs that leave the output unchanged
        undo(pair)
    kept = []
    for pair in pairs:
        apply(pair)
        if _close(model(example), ref, rtol)[0]:
            kept.append(pair)
        else:
            undo(pair)
    after = trace(model, example)
    ok, err, tol = _close(after.output, ref, rtol)
    if not ok:  # pragma: no cover - each kept pair was checked on its own
        raise ValueError(f"BatchNorm folding changed the model output by {err:.3g} (> {tol:.3g}); "
                         f"pairs folded: {kept}")
    return kept, after
