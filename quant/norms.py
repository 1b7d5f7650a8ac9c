r"""Per-sample output norms of every layer (the seed's ``-ms``), float against quantized.

For every scored image :math:`n` and every quantized conv/linear layer :math:`\ell`, with :math:`y` the output
of the float model (BatchNorm folded, so the same tensor as the quantized layer's) and :math:`\hat y` the
output of the quantized model on the same image:

* ``norm2_float`` :math:`= \lVert y_{n,\ell}\rVert^2`, ``norm2_quant`` :math:`= \lVert \hat y_{n,\ell}\rVert^2`;
* ``dist2`` :math:`= \lVert \hat y_{n,\ell} - y_{n,\ell}\rVert^2`: how far the quantized network has drifted from
  the float one by that layer (errors of the layers before it included, unlike
  :func:`aciq.quant.sensitivity.layer_sqnr`).

The seed wrote :math:`\lVert y\rVert^2` of its simulated (quantized) outputs to ``distance.csv``; here the CSV is
long-format: one line per (image, layer). Memory: the float outputs of every layer for one batch.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .sensitivity import quantized_layers

__all__ = ["NORM_COLUMNS", "output_norms", "write_norms_csv"]

NORM_COLUMNS = ("image", "layer", "norm2_float", "norm2_quant", "dist2")


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.double().flatten(1).pow(2).sum(1)


@torch.no_grad()
def output_norms(qmodel: nn.Module, folded: nn.Module, loader, *, device="cpu") -> dict:
    """Squared norms of every quantized layer's output, float and quantized, per image of ``loader``.

    Parameters
    ----------
    qmodel : torch.nn.Module
        A model from :func:`aciq.quant.quantize`.
    folded : torch.nn.Module
        The float model with BatchNorm folded, module names matching ``qmodel`` (``prepare(...).model``).
    loader : iterable
        Batches of images, or ``(images, labels)`` pairs.

    Returns
    -------
    dict
        ``layers`` (names, module order) and ``norm2_float``, ``norm2_quant``, ``dist2``: float64 arrays
        ``(images, layers)``.
    """
    names = quantized_layers(qmodel)
    fmods = dict(folded.named_modules())
    missing = [n for n in names if n not in fmods]
    if missing:
        raise ValueError(f"folded has no modules {missing[:3]}: give the folded float model of qmodel")
    device = torch.device(device)
    qmodel, folded = qmodel.to(device).eval(), folded.to(device).eval()
    ref: dict[str, torch.Tensor] = {}
    cols = {k: {n: [] for n in names} for k in ("norm2_float", "norm2_quant", "dist2")}

    def keep(name):
        def fn(module, args, out):
            ref[name] = out.detach()
        return fn

    def compare(name):
        def fn(module, args, out):
            y, y_hat = ref.pop(name), out.detach()
            cols["norm2_float"][name].append(_per_sample(y).cpu())
            cols["norm2_quant"][name].append(_per_sample(y_hat).cpu())
            cols["dist2"][name].append(_per_sample(y_hat.double() - y.double()).cpu())
        return fn

    handles = [fmods[n].register_forward_hook(keep(n)) for n in names]
    handles += [qmodel.get_submodule(n).register_forward_hook(compare(n)) for n in names]
    try:
        for batch in loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(device)
            folded(x)
            qmodel(x)
            if ref:
                raise ValueError(f"layers {sorted(ref)[:3]} ran in the float model but not in the quantized one")
    finally:
        for h in handles:
            h.remove()
    out = {"layers": names}
    for k, per_layer in cols.items():
        parts = [torch.cat(per_layer[n]).numpy() if per_layer[n] else np.zeros(0) for n in names]
        out[k] = np.stack(parts, axis=1) if parts[0].size else np.zeros((0, len(names)))
    return out


def write_norms_csv(path, norms: dict, *, image_ids=None) -> Path:
    """Write ``norms`` (:func:`output_norms`) as ``image,layer,norm2_float,norm2_quant,dist2`` lines.

    ``image_ids`` numbers the images (default ``0..N-1``), e.g. their positions in the whole evaluation set.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = norms["norm2_float"].shape[0]
    ids = np.arange(n) if image_ids is None else np.asarray(image_ids)
    if ids.shape != (n,):
        raise ValueError(f"image_ids must have one id per image ({n}), got shape {ids.shape}")
    order = np.argsort(ids, kind="stable")
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(NORM_COLUMNS)
        for i in order:
            for j, layer in enumerate(norms["layers"]):
                w.writerow([int(ids[i]), layer, *(f"{norms[k][i, j]:.9g}" for k in NORM_COLUMNS[2:])])
    return path
