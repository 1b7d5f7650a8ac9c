"""k-means weight codebooks (``QuantConfig(weight_quantizer="kmeans")``): the seed's ``kmeans_quantization.py``.

Each output channel (``PerChannel(axis=0)``) or the whole weight (``PerTensor()``, as the seed) gets
:math:`2^M` levels fitted by 1-D k-means (:func:`aciq.theory.kmeans.kmeans_1d`); every weight becomes its
nearest level. The codes are integers ``0..2^M - 1`` (their entropy is reported by
:func:`aciq.quant.report.code_lengths`), but the levels are not on a uniform grid, so only the fake backend runs
them. The record of each layer compares the measured k-means error with the Lloyd-Max error of the Laplace and
Gaussian priors fitted to each channel (:func:`aciq.theory.kmeans.lloyd_max_comparison`).
"""
from __future__ import annotations

import numpy as np
import torch

from aciq.theory.kmeans import lloyd_max_comparison

__all__ = ["kmeans_weight"]


def kmeans_weight(w2d: torch.Tensor, *, bits: int, per_channel: bool) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Quantize the rows of ``w2d`` (``(O, K)``, one row per output channel) to k-means codebooks.

    Returns the quantized weights (dtype and device of ``w2d``), the codes ``(O, K)`` (uint8) and a JSON-able
    record: ``bits``, the mean k-means error and the Lloyd-Max errors of the fitted priors (means over
    codebooks), the iterations and whether every codebook converged.
    """
    rows = w2d.detach().cpu().double().numpy()
    data = rows if per_channel else rows.reshape(1, -1)
    cmp = lloyd_max_comparison(data, bits=bits, axis=0)
    res = cmp.kmeans
    w_hat = res.reconstruct().reshape(rows.shape)
    codes = res.codes.reshape(rows.shape).astype(np.uint8)
    info = {"quantizer": "kmeans", "bits": bits, "per_channel": per_channel, "iterations": res.iterations,
            "converged": res.converged, "mse": float(np.mean(cmp.kmeans_mse)),
            **{f"lloyd_max_mse_{p}": float(np.mean(v)) for p, v in cmp.lloyd_max_mse.items()}}
    return torch.as_tensor(w_hat, dtype=w2d.dtype, device=w2d.device), codes, info
