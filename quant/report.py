r"""How many bits the integer codes of a quantized model really need: entropy and Huffman code length.

For every quantized tensor (each layer's weight codes and, given data, each activation site's codes) one
histogram of the unsigned codes :math:`q \in \{0, \dots, q_{max}\}` (:math:`2^M - 1` on a gemmlowp grid,
:math:`\omega` on a mid-tread grid of :math:`\omega` bins) gives, with :math:`p_s` the
frequency of code :math:`s` (:mod:`aciq.theory.coding`),

.. math::

    H = -\sum_s p_s \log_2 p_s, \qquad \bar\ell = \sum_s p_s \ell_s \quad (\ell_s \text{ Huffman lengths}),
    \qquad H \le \bar\ell < H + 1 .

Pooling follows the seed (``utils/entropy.py``): **one histogram per tensor** of the raw codes, every
channel together (one codebook per layer), even when channels have different zero points or bit-widths,
so a code value means different levels in different channels. A per-channel codebook could only be shorter;
the pooled figure is what one shared table per tensor costs. ``bits`` is the nominal fixed width, the mean
over channels (0-bit channels count 0 and emit code 0; a mid-tread channel of :math:`\omega` bins needs
:math:`\lceil\log_2(\omega+1)\rceil`, the seed's ``-mtq`` + ``-me`` measure being the entropy).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from aciq.theory.coding import huffman_code_lengths

from .fake import codes as grid_codes
from .modules import KernelLayer, QuantizedLayer, QuantizedOutput

__all__ = ["code_lengths", "counts_summary"]

_LEVELS = 256  # codes of an 8-bit grid; every grid here has codes 0..255 at most


def counts_summary(counts) -> dict:
    """Entropy and Huffman average length (bits per code) of a histogram of codes, and its total ``n``.

    Examples
    --------
    >>> counts_summary([4, 2, 1, 1])     # p = 1/2, 1/4, 1/8, 1/8: both 1.75 bits
    {'entropy': 1.75, 'huffman': 1.75, 'n': 8}
    """
    c = np.asarray(counts, np.float64)
    n = float(c.sum())
    p = c[c > 0] / n
    entropy = float(-(p * np.log2(p)).sum()) + 0.0
    huffman = float(np.dot(c, huffman_code_lengths(c))) / n
    return {"entropy": entropy, "huffman": huffman, "n": int(n)}


def _nominal(bits) -> float:
    return float(np.mean(np.asarray(bits, np.float64)))


def _row(layer: str, kind: str, bits: float, counts: np.ndarray) -> dict:
    return {"layer": layer, "kind": kind, "bits": bits, **counts_summary(counts)}


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for kind in ("weight", "act_in", "act_out"):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        n = np.array([r["n"] for r in sel], np.float64)
        avg = {k: float(np.dot(n, [r[k] for r in sel]) / n.sum()) for k in ("bits", "entropy", "huffman")}
        out.append({"layer": "total", "kind": kind, **avg, "n": int(n.sum())})
    return out


def _batches(data) -> list[torch.Tensor]:
    from .api import as_batches  # the calibration-data reader: same accepted forms and checks

    try:
        return as_batches(data)
    except ValueError as exc:
        raise ValueError(str(exc).replace("calibration_data", "data")) from None


@torch.no_grad()
def code_lengths(qmodel: nn.Module, data=None) -> list[dict]:
    """Entropy and Huffman code length of every quantized tensor of ``qmodel``.

    Parameters
    ----------
    qmodel : torch.nn.Module
        A model returned by :func:`aciq.quant.quantize` (fake-quant or kernels backend).
    data : tensor or iterable of tensors / (tensor, label) pairs, optional
        Inputs to run; then every activation site (``act_in``: the input of a conv/linear, ``act_out``:
        the output of a conv/linear or a pooling module) is reported too, its codes pooled over all batches.

    Returns
    -------
    list of dict
        One row per tensor: ``layer`` (module name), ``kind`` (``"weight"``, ``"act_in"``, ``"act_out"``),
        ``bits`` (nominal width, mean over channels), ``entropy`` and ``huffman`` (bits per code), ``n``
        (codes counted); then one summary row per kind with ``layer="total"``: ``n``-weighted averages.

    Examples
    --------
    >>> import torch
    >>> from aciq.quant import quantize, preset
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                           torch.nn.Linear(8 * 6 * 6, 10))
    >>> qnet = quantize(net, preset("w4a4-naive"), torch.randn(4, 3, 8, 8))
    >>> rows = code_lengths(qnet, torch.randn(2, 3, 8, 8))
    >>> [(r["layer"], r["kind"]) for r in rows]
    [('0', 'weight'), ('0', 'act_in'), ('3', 'weight'), ('3', 'act_in'), ('total', 'weight'), ('total', 'act_in')]
    >>> all(r["entropy"] <= r["huffman"] <= r["bits"] + 1e-9 for r in rows)
    True
    """
    if not isinstance(qmodel, nn.Module):
        raise ValueError(f"qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    sites = []     # (layer, kind, grid, module to hook, pre-hook?) in model order
    weights = {}
    for name, m in qmodel.named_modules():
        if isinstance(m, (QuantizedLayer, KernelLayer)):
            q = m.quant
            if q.codes is not None:
                bits = q.weight_grid.bits if q.weight_grid is not None else q.info["weight"]["bits"]  # k-means
                weights[name] = _row(name, "weight", _nominal(bits),
                                     np.bincount(np.asarray(q.codes).ravel(), minlength=_LEVELS))
            if isinstance(m, QuantizedLayer) and m.act_in is not None:
                sites.append((name, "act_in", m.act_in.grid, m.act_in, False))
            elif isinstance(m, KernelLayer) and q.act_in is not None:
                sites.append((name, "act_in", q.act_in, m, True))
            if m.act_out is not None:
                sites.append((name, "act_out", m.act_out.grid, m.act_out, False))
        elif isinstance(m, QuantizedOutput):
            sites.append((name, "act_out", m.act_out.grid, m.act_out, False))
    if not weights and not sites:
        raise ValueError("qmodel has no quantized layers (make it with aciq.quant.quantize)")

    counts = {}
    if data is not None and sites:
        handles = []

        def record(key, grid):
            def fn(module, args, *_):
                q = grid_codes(args[0].detach(), grid, dtype=torch.int64)
                c = torch.bincount(q.flatten(), minlength=_LEVELS).cpu().numpy()
                counts[key] = counts.get(key, 0) + c
            return fn

        try:
            for layer, kind, grid, module, pre in sites:
                fn = record((layer, kind), grid)
                handles.append(module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn))
            device = next((p.device for p in qmodel.parameters()), torch.device("cpu"))
            for x in _batches(data):
                qmodel(x.to(device))
        finally:
            for h in handles:
                h.remove()

    rows = []
    for name, m in qmodel.named_modules():     # weights and activations of each layer together, model order
        if name in weights:
            rows.append(weights[name])
        for layer, kind, grid, _, _ in sites:
            if layer == name and (layer, kind) in counts:
                rows.append(_row(layer, kind, _nominal(grid.bits), counts[(layer, kind)]))
    return rows + _summary(rows)

