"""The held-out check: calibrate on foolbox's 20 photos, score crops of photos no recipe was tuned on.

The recipes of :mod:`aciq.quant.embedded` are chosen on foolbox's 20 labelled ImageNet photos (two folds of 10)
and on EfficientNet-Lite0. Whether a recipe holds beyond them is measured here as a new user would meet it:

1. **calibrate** on ``calib_crops`` random crops of *each* of the 20 foolbox photos
   (:func:`aciq.quant.photos.crop_batch`, ``seed``), in batches of ``batch_size``, as the embedded protocol
   calibrates one fold;
2. **score** ``eval_crops`` random crops (``seed + 1``) of every photo of a held-out folder of unlabelled photos
   (:func:`aciq.quant.photos.load_folder`) against the float model: top-1 agreement, mean KL, logit SQNR
   (:class:`aciq.quant.metrics.Accumulator`), and the agreement of the worst photo (its crops only);
3. for every model (EfficientNet-Lite0/1/2, each at its own resolution and preprocessing,
   :func:`aciq.quant.zoo.preprocessing`) and every preset.

The held-out photos have no labels, so there is no top-1: only fidelity to the float model.

>>> rows = heldout_table("/path/to/photos", ["float", "w4a4-all"])   # doctest: +SKIP
>>> print(markdown(rows))                                             # doctest: +SKIP
"""
from __future__ import annotations

import time

import torch

from .evaluate import logits, markdown_table
from .metrics import Accumulator, agreement

__all__ = ["COLUMNS", "CSV_KEYS", "score_presets", "heldout_table", "markdown"]

COLUMNS = (("model", "model"), ("preset", "preset"), ("config", "config"), ("agreement", "agreement %"),
           ("worst_photo_agreement", "worst photo %", 1), ("mean_kl", "mean KL", 4),
           ("logit_sqnr_db", "logit SQNR dB"), ("n", "n"), ("calib_s", "calib s", 1), ("eval_s", "eval s", 1))
"""``(key, header[, digits])`` of the markdown table."""
CSV_KEYS = tuple(c[0] for c in COLUMNS) + ("photos", "crops_per_photo", "calibration", "data")
"""The CSV columns: the table's and ``photos``, ``crops_per_photo``, ``calibration``, ``data``."""


def _presets(presets) -> list[tuple[str, object]]:
    """``[(name, QuantConfig or None)]`` from names (``"float"``: None) or ``(name, QuantConfig)`` pairs."""
    from .config import PRESETS, QuantConfig, preset

    if isinstance(presets, str) or not presets:
        raise ValueError(f"presets must be a non-empty list of preset names, got {presets!r}")
    out = []
    for item in presets:
        if isinstance(item, str):
            if item != "float" and item not in PRESETS:
                raise ValueError(f"presets: {item!r} is not 'float' or one of {sorted(PRESETS)}")
            out.append((item, None if item == "float" else preset(item)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) \
                and isinstance(item[1], QuantConfig):
            out.append(item)
        else:
            raise ValueError(f"presets: {item!r} is neither a preset name nor a (name, QuantConfig) pair")
    return out


@torch.no_grad()
def score_presets(model, calibration: torch.Tensor, evaluation: torch.Tensor, presets, *, crops_per_photo: int,
                  batch_size: int = 16, progress: bool = False, desc: str = "") -> list[dict]:
    """Quantize ``model`` with each preset on ``calibration`` and score it on ``evaluation`` against ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The float model (left untouched).
    calibration, evaluation : torch.Tensor
        Preprocessed inputs ``[N, C, H, W]``; ``evaluation`` holds ``crops_per_photo`` consecutive crops of
        each photo (photo-major, as :func:`aciq.quant.photos.crop_batch` makes them).
    presets : sequence of str or (str, QuantConfig)
        Preset names (:data:`aciq.quant.config.PRESETS`), ``"float"`` (the float model itself), or
        ``(name, config)`` pairs (a recipe not registered as a preset).
    crops_per_photo : int
        Divides ``len(evaluation)``; gives the per-photo agreement.
    batch_size : int
        Calibration batches (16 as :mod:`aciq.quant.embedded`) and evaluation batches (4x this).

    Returns
    -------
    list of dict
        One row per preset: ``preset``, ``config``, ``agreement`` (%), ``worst_photo_agreement`` (%, the
        photo whose crops agree least), ``mean_kl``, ``logit_sqnr_db``, ``n`` (crops), ``photos``,
        ``crops_per_photo``, ``calib_s``, ``eval_s``.
    """
    from tqdm import tqdm

    from .api import quantize

    presets = _presets(presets)
    if isinstance(crops_per_photo, bool) or not isinstance(crops_per_photo, int) or crops_per_photo < 1 \
            or len(evaluation) % crops_per_photo:
        raise ValueError(f"crops_per_photo must be a positive int dividing len(evaluation) = {len(evaluation)}, "
                         f"got {crops_per_photo!r}")
    if len(calibration) == 0 or len(evaluation) == 0:
        raise ValueError("calibration and evaluation must hold at least one input each")
    model = model.eval()
    reference = logits(model, evaluation, batch_size=4 * batch_size)
    batches = [calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)]
    photos = len(evaluation) // crops_per_photo
    rows = []
    for name, config in tqdm(presets, desc=desc, disable=not progress, leave=False):
        t0 = time.perf_counter()
        qmodel = model if config is None else quantize(model, config, batches)
        t1 = time.perf_counter()
        out = reference if config is None else logits(qmodel, evaluation, batch_size=4 * batch_size)
        t2 = time.perf_counter()
        acc = Accumulator()
        acc.update(out, reference=reference)
        m = acc.compute()
        worst = min(agreement(reference[i:i + crops_per_photo], out[i:i + crops_per_photo])
                    for i in range(0, len(evaluation), crops_per_photo))
        rows.append({"preset": name, "config": "float" if config is None else config.describe(),
                     "agreement": m["agreement"], "worst_photo_agreement": 100.0 * worst / crops_per_photo,
                     "mean_kl": m["mean_kl"], "logit_sqnr_db": m["logit_sqnr_db"], "n": m["n"], "photos": photos,
                     "crops_per_photo": crops_per_photo, "calib_s": t1 - t0, "eval_s": t2 - t1})
    return rows


def _models(models) -> list[tuple[str, object]]:
    """``[(zoo name, nn.Module or None)]`` from names or ``(name, model)`` pairs; ImageNet RGB models only."""
    from torch import nn

    from . import zoo

    if isinstance(models, str) or not models:
        raise ValueError(f"models must be a non-empty list of model names or (name, model) pairs, got {models!r}")
    out = []
    for item in models:
        if isinstance(item, str):
            name, model = item, None
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) \
                and isinstance(item[1], nn.Module):
            name, model = item
        else:
            raise ValueError(f"models: {item!r} is neither a model name nor a (name, torch.nn.Module) pair")
        if name not in zoo.MODELS:
            raise ValueError(f"models: {name!r} is not one of {zoo.MODELS}")
        if zoo.input_size(name)[0] != 3 or zoo.num_classes(name) != 1000:
            raise ValueError(f"models: {name!r} is not an ImageNet RGB model (the held-out photos are ImageNet-like)")
        out.append((name, model))
    return out


def heldout_table(folder, presets, *, models=("efficientnet_lite0",), calib_crops: int = 8, eval_crops: int = 8,
                  seed: int = 0, batch_size: int = 16, calibration_photos=None, progress: bool = True) -> list[dict]:
    """Rows of the held-out check (see the module docstring): every model x every preset.

    Parameters
    ----------
    folder : str or path
        A flat folder of unlabelled photos (``.jpg``, ``.jpeg``, ``.png``; :func:`aciq.quant.photos.load_folder`).
    presets : sequence of str or (str, QuantConfig)
        As :func:`score_presets`.
    models : sequence of str or (str, torch.nn.Module)
        Zoo names (:func:`aciq.quant.zoo.load_model` loads the published weights) or ``(name, model)`` pairs:
        ``model`` is used with the preprocessing of ``name`` (an ImageNet RGB model of the zoo).
    calib_crops, eval_crops : int
        Random crops of each calibration photo (seed ``seed``) and of each held-out photo (seed ``seed + 1``).
    calibration_photos : sequence of Photo, optional
        Defaults to the 20 foolbox photos (:func:`aciq.quant.photos.load_photos`).
    progress : bool
        tqdm bars.

    Returns
    -------
    list of dict
        The rows of :func:`score_presets` with ``model``, ``calibration`` and ``data`` added.

    Raises
    ------
    ValueError
        An unknown or non-ImageNet model, an unknown preset; a folder that is missing, holds no photo, a file
        that cannot be read, or a copy of a calibration photo (:func:`aciq.quant.photos.check_disjoint`).
    """
    from . import photos as ph
    from .zoo import load_model

    _presets(presets)   # checked before any photo is read
    models = _models(models)
    heldout = ph.load_folder(folder)
    calib_photos = ph.load_photos() if calibration_photos is None else list(calibration_photos)
    ph.check_disjoint(calib_photos, heldout)
    described = (f"{len(calib_photos)} {'foolbox ' if calibration_photos is None else ''}photos x "
                 f"{calib_crops} crops")
    rows = []
    for name, model in models:
        model = load_model(name) if model is None else model
        calibration = ph.crop_batch(calib_photos, model_name=name, n_per_photo=calib_crops, seed=seed)
        evaluation = ph.crop_batch(heldout, model_name=name, n_per_photo=eval_crops, seed=seed + 1)
        for row in score_presets(model, calibration, evaluation, presets, crops_per_photo=eval_crops,
                                 batch_size=batch_size, progress=progress, desc=name):
            rows.append({"model": name, **row, "calibration": described, "data": str(folder)})
    return rows


def markdown(rows) -> str:
    """The rows of :func:`heldout_table` as a markdown table (:data:`COLUMNS`)."""
    return markdown_table(rows, COLUMNS)
