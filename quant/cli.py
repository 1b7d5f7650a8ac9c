"""``aciq evaluate``, ``sweep``, ``sensitivity`` and ``results``: registered in the ``aciq.cli`` entry-point group.

Each runs data-parallel under ``torchrun`` (:mod:`aciq.quant.distributed`) and logs to MLflow with ``--mlflow``
(:mod:`aciq.quant.tracking`).

Data per model:

* ``resnet20_fmnist``, ``mobilenet_fmnist``: Fashion-MNIST (``--data`` root, default the Debian package's
  folder). Calibration on ``--calib-images`` training images (seeded), evaluation on the 10 000 test images.
* ImageNet models with ``--data PATH``: an ImageFolder (ILSVRC2012 val: ``PATH/<synset>/*.JPEG`` or
  ``PATH/val/...``). Calibration on ``--calib-images`` images drawn (seeded) from the folder; they are
  removed from the evaluation set, so no scored image is ever used for statistics.
* ImageNet models with ``--data PATH`` naming a flat folder of unlabelled photos (``PATH/*.jpg|jpeg|png``):
  the same seeded, disjoint draw of ``--calib-images`` photos (eval preprocessing) for calibration; each
  other photo is scored through the eval preprocessing or, with ``--eval-crops K``, as ``K`` random crops
  (seed ``--seed`` + 1). Fidelity only (agreement, KL, SQNR against the float model); top-1 is absent.
* ``--calib photos`` with an ImageFolder or a flat folder: calibration on ``--calib-images`` crops of all 20
  foolbox photos (crop 1 of every photo, then crop 2, ...) and every image of ``--data`` scored: the protocol
  of a new user who calibrates on the photos at hand and deploys on others (a scored file with the bytes of a
  foolbox photo is refused).
* ImageNet models without ``--data`` (or ``--data photos``): the 20 labelled photos of foolbox's wheel;
  calibration on crops of photos 0-9, evaluation on photos 10-19.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time

import torch

from .config import (ACT_BIAS_CORRECTION, ACT_QUANTIZERS, ACT_SITES, ALLOC_BUDGETS, ALLOCATION_RULES,
                     BIAS_CORRECTION, BIAS_FORMS, CLIPPING_MODES, EXACT_PRIORS, PRESETS, WEIGHT_QUANTIZERS,
                     PerChannel, PerTensor, QuantConfig, preset)
from .zoo import FASHION_MNIST, MODELS

__all__ = ["register", "run", "sweep", "build_config"]

FLOAT = "float"
CALIB_SOURCES = ("data", "photos")


# --------------------------------------------------------------------------- config from options
def _opt_bits(text):
    if text.lower() == "none":
        return None
    return int(text)


def _gran(text, axis):
    return PerChannel(axis=axis) if text == "channel" else PerTensor()


_OVERRIDES = {
    # option dest -> (config field, converter)
    "weight_bits": ("weight_bits", None), "act_bits": ("act_bits", None),
    "weight_granularity": ("weight_granularity", lambda v: _gran(v, 0)),
    "act_granularity": ("act_granularity", lambda v: _gran(v, 1)),
    "weight_clipping": ("weight_clipping", None), "act_clipping": ("act_clipping", None),
    "kstd": ("kstd", None), "exact_prior": ("exact_prior", None),
    "act_bit_alloc": ("act_bit_alloc", lambda v: None if v == "none" else v),
    "weight_bit_alloc": ("weight_bit_alloc", lambda v: None if v == "none" else v),
    "act_avg_bits": ("act_avg_bits", None), "weight_avg_bits": ("weight_avg_bits", None),
    "alloc_budget": ("alloc_budget", None), "bias_correction": ("bias_correction", None),
    "bias_form": ("bias_form", None), "first_layer_bits": ("first_layer_bits", None),
    "last_layer_bits": ("last_layer_bits", None),
    "half_range": ("half_range", lambda v: _HALF_RANGE_NAMES[v]),
    "act_site": ("act_site", None), "pool_bits": ("pool_bits", None),
    "mse_candidates": ("mse_candidates", None), "weight_quantizer": ("weight_quantizer", None),
    "act_quantizer": ("act_quantizer", None), "act_bias_correction": ("act_bias_correction", None),
    "allow_oracle": ("allow_oracle", None),
}
GRANULARITIES = ("tensor", "channel")
_HALF_RANGE_NAMES = {"auto": "auto", "on": True, "off": False}   # option spelling -> HALF_RANGE value
_ALLOC_NAMES = tuple("none" if r is None else r for r in ALLOCATION_RULES)


def build_config(preset_name: str | None, overrides: dict) -> QuantConfig | None:
    """The preset (or the default config) with the options that were given; None for ``float``."""
    if preset_name == FLOAT:
        if any(v is not None for v in overrides.values()):
            raise ValueError("preset 'float' takes no quantization options")
        return None
    base = preset(preset_name) if preset_name else QuantConfig()
    changes = {}
    for dest, value in overrides.items():
        if value is None:
            continue
        field, conv = _OVERRIDES[dest]
        changes[field] = conv(value) if conv else value
    return base.replace(**changes) if changes else base


def _add_config_options(p):
    g = p.add_argument_group("quantization (override the preset)")
    g.add_argument("--preset", help=f"named config: {FLOAT}, " + ", ".join(sorted(PRESETS)))
    g.add_argument("-w", "--weight-bits", type=_opt_bits, help="1..8 or none")
    g.add_argument("-a", "--act-bits", type=_opt_bits, help="1..8 or none")
    g.add_argument("--weight-granularity", choices=GRANULARITIES)
    g.add_argument("--act-granularity", choices=GRANULARITIES)
    g.add_argument("--weight-clipping", choices=CLIPPING_MODES)
    g.add_argument("--act-clipping", choices=CLIPPING_MODES)
    g.add_argument("--weight-quantizer", choices=WEIGHT_QUANTIZERS,
                   help="midtread: the seed's -mtq (needs --weight-bit-alloc paper|optimal)")
    g.add_argument("--act-quantizer", choices=ACT_QUANTIZERS,
                   help="midtread: the seed's -mtq (per-channel activations, --act-bit-alloc paper|optimal)")
    g.add_argument("--kstd", type=float)
    g.add_argument("--exact-prior", choices=EXACT_PRIORS)
    g.add_argument("--act-bit-alloc", choices=_ALLOC_NAMES)
    g.add_argument("--weight-bit-alloc", choices=_ALLOC_NAMES)
    g.add_argument("--act-avg-bits", type=float)
    g.add_argument("--weight-avg-bits", type=float)
    g.add_argument("--alloc-budget", choices=ALLOC_BUDGETS)
    g.add_argument("--bias-correction", choices=BIAS_CORRECTION)
    g.add_argument("--bias-form", choices=BIAS_FORMS)
    g.add_argument("--act-bias-correction", choices=ACT_BIAS_CORRECTION,
                   help="the seed's -bca at conv outputs (--act-site output): calibration, or oracle (statistics of "
                        "the scored batches: not deployable, needs --allow-oracle)")
    g.add_argument("--allow-oracle", action="store_const", const=True, default=None,
                   help="accept --act-bias-correction oracle (reproduces the seed; results use the scored data)")
    g.add_argument("--first-layer-bits", type=_opt_bits)
    g.add_argument("--last-layer-bits", type=_opt_bits)
    g.add_argument("--half-range", choices=tuple(_HALF_RANGE_NAMES))
    g.add_argument("--act-site", choices=ACT_SITES)
    g.add_argument("--pool-bits", type=_opt_bits)
    g.add_argument("--mse-candidates", type=int)


def _add_data_options(p):
    p.add_argument("--data", help="ImageFolder path (ImageNet val), a flat folder of unlabelled photos, "
                   "Fashion-MNIST root, or 'photos'")
    p.add_argument("--calib-images", type=int, default=32, help="calibration images (default 32)")
    p.add_argument("--calib", choices=CALIB_SOURCES, default="data",
                   help="calibrate on images drawn from --data and left out of scoring (data, default), or on "
                        "crops of foolbox's 20 photos, scoring every image of --data (photos)")
    p.add_argument("--eval-crops", type=int, default=0, metavar="K",
                   help="flat photo folders: score K random crops of each photo instead of its eval "
                        "preprocessing (default 0: the eval preprocessing)")


def _add_run_options(p):
    _add_data_options(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, help="evaluate only the first N evaluation images")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backend", choices=("fake", "kernels"), default="fake")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for ImageFolder data")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--results", default="results/results.csv", help="CSV to append rows to ('' for none)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


# --------------------------------------------------------------------------- data
def _fmnist(spec, model_name, dist):
    from . import fashion_mnist as fm

    root = None if spec.data in (None, "") else spec.data
    try:
        train_x, _ = fm.load("train", root=root)
        test_x, test_y = fm.load("test", root=root)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    g = torch.Generator().manual_seed(spec.seed)
    idx = torch.randperm(len(train_x), generator=g)[:spec.calib_images]
    calib = fm.to_tensor(train_x[idx.numpy()])
    x, y = fm.to_tensor(test_x), torch.as_tensor(test_y)
    if spec.limit:
        x, y = x[:spec.limit], y[:spec.limit]
    from .evaluate import Loader

    return calib, Loader(dist.shard(x), dist.shard(y), spec.batch_size), f"fashion-mnist test ({len(x)})"


def _photos(spec, model_name, dist):
    from . import photos
    from .evaluate import Loader

    cal, ev = photos.split_photos(photos.load_photos(), n_calibration=10)
    calib = photos.crop_batch(cal, model_name=model_name, n_per_photo=max(1, math.ceil(spec.calib_images / 10)),
                              seed=spec.seed)[:spec.calib_images]
    x, y = photos.photo_batch(ev, model_name=model_name)
    if spec.limit:
        x, y = x[:spec.limit], y[:spec.limit]
    return calib, Loader(dist.shard(x), dist.shard(y), spec.batch_size), f"foolbox photos 10-19 ({len(x)})"


def _split(n: int, spec, what: str) -> tuple[list[int], list[int]]:
    """Seeded, disjoint (calibration, evaluation) indices of ``n`` images; no calibration image with
    ``--calib photos``; ``--limit`` cuts the evaluation list."""
    if spec.calib == "photos":
        calib_idx, eval_idx = [], list(range(n))
    else:
        if spec.calib_images >= n:
            raise ValueError(f"--calib-images {spec.calib_images} leaves no evaluation image in {what} ({n})")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed)).tolist()
        calib_idx = perm[:spec.calib_images]
        held = set(calib_idx)
        eval_idx = [i for i in range(n) if i not in held]
    if spec.limit:
        eval_idx = eval_idx[:spec.limit]
    return calib_idx, eval_idx


def _calib_photos(spec, model_name, scored):
    """``--calib photos``: ``--calib-images`` crops spread over all 20 foolbox photos, none of which may be
    among the ``scored`` files."""
    from . import photos

    calibration = photos.load_photos()
    photos.check_disjoint(calibration, scored)
    return photos.spread_crops(calibration, model_name=model_name, n=spec.calib_images, seed=spec.seed)


def _folder(spec, model_name, dist):
    from torch.utils.data import DataLoader, Subset

    from . import zoo
    from .evaluate import image_folder

    ds = image_folder(spec.data, zoo.preprocess(model_name))
    calib_idx, eval_idx = _split(len(ds), spec, spec.data)
    if spec.calib == "photos":
        calib = _calib_photos(spec, model_name, [ds.samples[i][0] for i in eval_idx])
    else:
        calib = torch.stack([ds[i][0] for i in calib_idx])
    loader = DataLoader(Subset(ds, dist.shard(eval_idx)), batch_size=spec.batch_size, shuffle=False,
                        num_workers=spec.workers)
    return calib, loader, f"{spec.data} ({len(eval_idx)})"


def _photo_folder(spec, model_name, dist):
    """A flat folder of unlabelled photos (:class:`aciq.quant.evaluate.PhotoFolder`)."""
    from torch.utils.data import DataLoader, Subset

    from . import zoo
    from .evaluate import PhotoFolder, collate_unlabelled
    from .photos import image_files

    files = image_files(spec.data)
    ds = PhotoFolder(files, model_name, crops=spec.eval_crops, seed=spec.seed + 1)
    calib_idx, eval_idx = _split(len(files), spec, spec.data)
    if spec.calib == "photos":
        calib = _calib_photos(spec, model_name, [files[i] for i in eval_idx])
    else:
        calib = torch.cat([PhotoFolder(files, model_name)[i] for i in calib_idx])
    loader = DataLoader(Subset(ds, dist.shard(eval_idx)), batch_size=max(1, spec.batch_size // ds.per_item),
                        shuffle=False, num_workers=spec.workers, collate_fn=collate_unlabelled)
    scored = f"{len(eval_idx)} photos" + (f" x {spec.eval_crops} crops" if spec.eval_crops else "")
    return calib, loader, f"{spec.data} ({scored}, unlabelled)"


def _check_data_options(spec, model_name) -> None:
    calib, crops = spec.calib, spec.eval_crops
    if calib not in CALIB_SOURCES:
        raise ValueError(f"--calib must be one of {CALIB_SOURCES}, got {calib!r}")
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 0:
        raise ValueError(f"--eval-crops must be >= 0, got {crops!r}")
    on_photos = spec.data in (None, "", "photos")
    fmnist = model_name in FASHION_MNIST
    if calib == "photos" and (fmnist or on_photos):
        raise ValueError("--calib photos calibrates an ImageNet model on foolbox's photos to score another "
                         "folder: give --data PATH (an ImageFolder or a flat folder of photos)"
                         + (f", not {model_name}" if fmnist else ""))
    if crops and (fmnist or on_photos):
        raise ValueError("--eval-crops applies to a flat folder of photos given with --data PATH")


def _data(spec, model_name, dist=None):
    """(calibration images, this rank's evaluation loader, description of the whole evaluation set)."""
    from .distributed import Dist
    from .evaluate import folder_kind

    dist = Dist() if dist is None else dist
    if isinstance(spec.calib_images, bool) or spec.calib_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {spec.calib_images}")
    _check_data_options(spec, model_name)
    try:
        if model_name in FASHION_MNIST:
            return _fmnist(spec, model_name, dist)
        if spec.data in (None, "", "photos"):
            return _photos(spec, model_name, dist)
        if folder_kind(spec.data) == "photos":
            return _photo_folder(spec, model_name, dist)
        if spec.eval_crops:
            raise ValueError(f"--eval-crops applies to a flat folder of photos; {spec.data} is an ImageFolder")
        return _folder(spec, model_name, dist)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None


# --------------------------------------------------------------------------- one evaluation
def _load(model_name, weights):
    from . import zoo

    try:
        return zoo.load_model(model_name, weights=weights)
    except (OSError, RuntimeError, ImportError) as exc:  # a missing file or package, a failed download: one line
        raise ValueError(str(exc)) from None


def _quantize(spec, model, config: QuantConfig, calib, device, dist):
    """The quantized model of ``config``: statistics made once (rank 0, or ``--stats-load``) and shared.

    Returns ``(qmodel, statistics, make_folded)``; ``make_folded()`` gives a fresh float copy with BatchNorm
    folded whose module names match ``qmodel`` (for the per-layer measurements).
    """
    from .api import collect_statistics, convert, prepare
    from .distributed import check_identical, share_statistics
    from .observe import Statistics

    batches = [calib[i:i + spec.batch_size].to(device) for i in range(0, len(calib), spec.batch_size)]
    if config.calibration == "sequential":
        return _quantize_sequential(spec, model, config, batches, dist)
    p = prepare(model, batches[0], config)

    def make():
        if getattr(spec, "stats_load", None):
            return Statistics.load(spec.stats_load)
        return collect_statistics(model, config, batches, prepared=p)

    stats = share_statistics(dist, make)
    if getattr(spec, "stats_save", None) and dist.is_main:
        stats.save(spec.stats_save)
    qmodel = convert(p, config, stats, backend=getattr(spec, "backend", "fake"), calibration_data=batches)
    check_identical(qmodel, dist)
    return qmodel, stats, (lambda: prepare(model, batches[0], config).model)


def _check_sequential_options(spec) -> None:
    if getattr(spec, "stats_load", None) or getattr(spec, "stats_save", None):
        raise ValueError("--stats-load/--stats-save: this preset calibrates sequentially (calibration='sequential', "
                         "the *-best presets): each layer is measured on the partly quantized model, so there are "
                         "no float-model statistics to save or load; drop the option")


def _quantize_sequential(spec, model, config: QuantConfig, batches, dist):
    """``_quantize`` for ``calibration='sequential'``: every rank runs :func:`aciq.quant.quantize` on the same
    calibration batches (deterministic, so the models are identical; checked); no statistics to share."""
    from .api import prepare, quantize
    from .distributed import check_identical

    _check_sequential_options(spec)
    qmodel = quantize(model, config, batches, backend=getattr(spec, "backend", "fake"))
    check_identical(qmodel, dist)
    return qmodel, None, (lambda: prepare(model, batches[0], config).model)


def _images(stats, calib) -> int:
    """Calibration images behind a model: its statistics' count, or all of ``calib`` (sequential presets)."""
    return len(calib) if stats is None else stats.images


def _score(spec, *, model_name, preset_name, config, qmodel, model, loader, data_desc, device, dist,
           calib_n, calib_s) -> dict:
    """Evaluate ``qmodel`` against ``model`` on (this rank's share of) ``loader``: the results row."""
    from .evaluate import evaluate

    result = evaluate(qmodel, None if config is None else model, loader, device=device,
                      progress=not spec.no_progress and dist.is_main, desc=f"{model_name} {preset_name or 'custom'}",
                      dist=dist)
    if config is None:
        result.update(agreement=100.0, mean_kl=0.0, logit_sqnr_db=math.inf, float_eval_s=result["eval_s"])
    return {"time": _dt.datetime.now().isoformat(timespec="seconds"), "model": model_name,
            "preset": preset_name or "custom", "config": "float" if config is None else config.describe(),
            "weight_bits": None if config is None else config.weight_bits,
            "act_bits": None if config is None else config.act_bits,
            "calib_images": calib_n, "calib_s": calib_s, "device": dist.describe(device),
            "batch_size": spec.batch_size, "backend": spec.backend, "data": data_desc, **result}


def run(spec, *, model_name: str, preset_name: str | None, config: QuantConfig | None, model=None,
        data=None, dist=None, device=None, record: bool = True, norms=None, keep: int = 0) -> dict:
    """Load, calibrate, convert, evaluate one (model, config); return the results row.

    ``dist`` (:class:`aciq.quant.distributed.Dist`): ``data`` holds this rank's shard, rank 0 makes the
    statistics for all, the metrics are reduced over the ranks, and only rank 0 records the row. ``device``
    overrides ``spec.device``. ``record``: append the row to ``spec.results`` (rank 0). ``norms``: a CSV path
    for the per-sample output norms of every layer (:mod:`aciq.quant.norms`). ``keep``: that many of the most
    sensitive layers (lowest measured SQNR, :mod:`aciq.quant.sensitivity`) stay at 8 bits.
    """
    from .distributed import Dist

    dist = Dist() if dist is None else dist
    device = dist.device(spec.device) if device is None else torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise ValueError(f"--keep-8bit must be a number of layers >= 0, got {keep!r}")
    if (norms or keep) and config is None:
        raise ValueError("--norms and --keep-8bit need a quantized preset, not float")
    calib, loader, data_desc = data if data is not None else _data(spec, model_name, dist)
    if model is None:
        model = _load(model_name, spec.weights)
    model = model.to(device).eval()
    t0 = time.perf_counter()
    if config is None:
        qmodel, calib_n = model, 0
    else:
        qmodel, stats, folded = _quantize(spec, model, config, calib, device, dist)
        calib_n = _images(stats, calib)
        if keep:
            from .sensitivity import high_precision, keep_layers

            ranking = _ranking(qmodel, folded(), calib, spec, device, dist)
            if keep > len(ranking):
                raise ValueError(f"--keep-8bit {keep}: {model_name} has {len(ranking)} quantized layers")
            high, _, _ = _quantize(spec, model, high_precision(config), calib, device, dist)
            qmodel = keep_layers(qmodel, high, [r["layer"] for r in ranking[:keep]])
    calib_s = time.perf_counter() - t0
    row = _score(spec, model_name=model_name, preset_name=preset_name, config=config, qmodel=qmodel, model=model,
                 loader=loader, data_desc=data_desc, device=device, dist=dist, calib_n=calib_n, calib_s=calib_s)
    if keep:
        row.update(preset=f"{row['preset']}+keep{keep}", config=f"{row['config']} keep8:{keep}", keep_8bit=keep)
    if norms:
        row["norms_csv"] = str(_write_norms(norms, qmodel, folded(), loader, device, dist))
    if record and getattr(spec, "results", None) and dist.is_main:
        from .evaluate import append_csv

        append_csv(spec.results, row)
    return row


def _ranking(qmodel, folded, calib, spec, device, dist) -> list[dict]:
    """The quantized layers, most sensitive first: SQNR measured on the calibration images on rank 0 (every
    rank holds the identical model), shared with the others."""
    from .sensitivity import layer_sqnr

    ranking = None
    if dist.is_main:
        batches = [calib[i:i + spec.batch_size].to(device) for i in range(0, len(calib), spec.batch_size)]
        sqnr = layer_sqnr(qmodel, folded.to(device), batches)
        order = sorted(sqnr, key=lambda n: (sqnr[n], list(sqnr).index(n)))
        ranking = [{"rank": i + 1, "layer": n, "sqnr_db": sqnr[n]} for i, n in enumerate(order)]
    return json.loads(dist.broadcast_bytes(json.dumps(ranking).encode() if dist.is_main else None))


def _write_norms(path, qmodel, folded, loader, device, dist):
    """Per-sample norms of this rank's images, gathered to rank 0 (image ids: positions in the whole set)."""
    import numpy as np

    from .distributed import gather_json
    from .norms import output_norms, write_norms_csv

    local = output_norms(qmodel, folded, loader, device=device)
    n = local["norm2_float"].shape[0]
    if not dist.active:
        return write_norms_csv(path, local)
    keys = ("norm2_float", "norm2_quant", "dist2")
    parts = gather_json({k: local[k].tolist() for k in keys} | {"n": n}, dist)
    if not dist.is_main:
        return path
    merged = {"layers": local["layers"]}
    for k in keys:
        merged[k] = np.concatenate([np.asarray(p[k], np.float64).reshape(p["n"], -1) for p in parts])
    ids = np.concatenate([r + np.arange(p["n"]) * dist.world_size for r, p in enumerate(parts)])
    return write_norms_csv(path, merged, image_ids=ids)


def _summary(row) -> str:
    def f(k, d=2):
        v = row.get(k)
        return "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
    return (f"{row['model']} {row['preset']} [{row['config']}]: top-1 {f('top1')}  top-5 {f('top5')}  "
            f"agreement {f('agreement')}%  KL {f('mean_kl', 4)}  SQNR {f('logit_sqnr_db')} dB  "
            f"n={row['n']}  calib {f('calib_s', 1)} s  eval {f('eval_s', 1)} s")


def _overrides(args) -> dict:
    return {k: getattr(args, k) for k in _OVERRIDES}


def _threads(args):
    """Every command's set-up: torch threads, and freed memory kept for reuse (:mod:`aciq.quant.memory`)."""
    from .memory import retain_freed_memory

    retain_freed_memory()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def _cmd_evaluate(args) -> int:
    from .distributed import session

    _threads(args)
    if args.stats_save and args.stats_load:
        raise ValueError("give --stats-save or --stats-load, not both")
    if args.model not in MODELS:
        raise ValueError(f"--model must be one of {list(MODELS)}, got {args.model!r}")
    config = build_config(args.preset, _overrides(args))
    with session(args.device) as dist:
        row = run(args, model_name=args.model, preset_name=args.preset, config=config, dist=dist, norms=args.norms)
    if dist.is_main:
        print(json.dumps(row, default=str) if args.json else _summary(row))
        _track(args, [(row, config)])
    return 0


def _bits_pair(text):
    try:
        w, a = text.lower().split("/")
        return _opt_bits(w), _opt_bits(a)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bits must look like W/A, e.g. 4/4 or 8/none, got {text!r}") from None


SWEEP_COLUMNS = (("model", "model"), ("preset", "preset"), ("weight_bits", "W"), ("act_bits", "A"),
                 ("top1", "top-1"), ("top5", "top-5"), ("agreement", "agree %"), ("mean_kl", "KL", 4),
                 ("logit_sqnr_db", "SQNR dB"), ("n", "n"), ("calib_s", "calib s", 1), ("eval_s", "eval s", 1))


def _sweep_plan(args) -> list[tuple[str, str, QuantConfig | None, int]]:
    """(model, preset, config, layers kept at 8 bits) of every row of the sweep, in order."""
    for m in args.models:
        if m not in MODELS:
            raise ValueError(f"--models: {m!r} is not one of {list(MODELS)}")
    if args.weights and len(args.models) != 1:
        raise ValueError("--weights needs exactly one model in --models")
    for name in args.presets:
        if name != FLOAT and name not in PRESETS:
            raise ValueError(f"--presets: {name!r} is not one of {[FLOAT] + sorted(PRESETS)}")
    if any(k < 0 for k in args.keep_8bit or []):
        raise ValueError(f"--keep-8bit must be >= 0, got {args.keep_8bit}")
    plan = []
    for m in args.models:
        for name in args.presets:
            for bits in (args.bits or [None]):
                if name == FLOAT and bits is not None and bits != args.bits[0]:
                    continue
                over = {} if bits is None or name == FLOAT else {"weight_bits": bits[0], "act_bits": bits[1]}
                config = build_config(name, over)
                for keep in ([0] if config is None else (args.keep_8bit or [0])):
                    plan.append((m, name, config, keep))
    return plan


def _sweep_kwargs(args, m, name, config, keep) -> dict:
    norms = None
    if args.norms and config is not None:
        from pathlib import Path

        w, a = config.weight_bits, config.act_bits
        norms = Path(args.norms) / f"norms-{m}-{name}-W{w}A{a}" f"{f'-keep{keep}' if keep else ''}.csv"
    return {"model_name": m, "preset_name": name, "config": config, "keep": keep, "norms": norms}


def _sweep_data_parallel(args, plan, dist) -> list[dict]:
    """Every row on every rank, the evaluation set sharded (rank 0 records)."""
    rows, loaded = [], {}
    for m, name, config, keep in plan:
        if m not in loaded:
            loaded = {m: (_data(args, m, dist), _load(m, args.weights))}
        data, model = loaded[m]
        rows.append(run(args, model=model, data=data, dist=dist, **_sweep_kwargs(args, m, name, config, keep)))
    return rows


def _sweep_row_parallel(args, plan, dist) -> list[dict]:
    """Row i on rank i mod W, on the whole evaluation set; the rows gathered (as JSON) in order, rank 0 records."""
    from .distributed import gather_json
    from .evaluate import append_csv

    mine, loaded = [], {}
    try:
        for i in range(dist.rank, len(plan), dist.world_size):
            m, name, config, keep = plan[i]
            if m not in loaded:
                loaded = {m: (_data(args, m), _load(m, args.weights))}
            data, model = loaded[m]
            row = run(args, model=model, data=data, device=dist.device(args.device), record=False,
                      **_sweep_kwargs(args, m, name, config, keep))
            mine.append([i, row])
        status = {"rows": mine}
    except ValueError as exc:   # tell the other ranks instead of leaving them waiting in the gather
        status = {"error": f"rank {dist.rank}: {exc}"}
    parts = gather_json(status, dist)
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        raise ValueError("; ".join(errors))
    rows = [row for _, row in sorted((i, row) for p in parts for i, row in p["rows"])]
    if args.results and dist.is_main:
        for row in rows:
            append_csv(args.results, row)
    return rows


def _sweep_rows(args) -> tuple[list[dict], list, object]:
    """Every row of the sweep of ``args`` (rank 0 holds them all), its plan and the session's ``Dist``."""
    from .distributed import session

    _threads(args)
    plan = _sweep_plan(args)
    with session(args.device) as dist:
        spread = _sweep_row_parallel if args.distribute == "rows" and dist.active else _sweep_data_parallel
        rows = spread(args, plan, dist)
    return rows, plan, dist


def _sweep_outputs(args, rows, plan) -> None:
    """``--markdown`` and ``--mlflow`` of a finished sweep (rank 0)."""
    from .evaluate import markdown_table

    if args.markdown:
        from pathlib import Path

        Path(args.markdown).write_text(markdown_table(rows, SWEEP_COLUMNS))
    _track(args, [(row, config) for row, (_, _, config, _) in zip(rows, plan)], artifacts=[args.markdown])


def _cmd_sweep(args) -> int:
    from .evaluate import markdown_table

    rows, plan, dist = _sweep_rows(args)
    if not dist.is_main:
        return 0
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        print(markdown_table(rows, SWEEP_COLUMNS), end="")
    _sweep_outputs(args, rows, plan)
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad arguments raise ValueError (with argparse's message) instead of exiting the process."""

    def error(self, message):
        raise ValueError(f"{self.prog}: {message}")


def sweep(argv) -> list[dict]:
    """``aciq sweep ARGV`` from Python: the rows it records, without a subprocess and without printing.

    ``argv`` is the command line after ``aciq sweep`` (a list of strings, as a shell would split it). The rows
    are the results rows of :func:`run`, in the order of the plan (models, then presets, then ``--bits``); the
    ``--results`` CSV, ``--markdown`` file and ``--mlflow`` runs are written as the command writes them.

    Raises
    ------
    ValueError
        Bad arguments (argparse's message), or any input the command rejects.

    Examples
    --------
    >>> sweep(["--models", "resnet20_fmnist", "--presets", "nope"])
    Traceback (most recent call last):
    ...
    ValueError: --presets: 'nope' is not one of [...]
    """
    if isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"argv must be a list of strings (the command line after 'aciq sweep'), got {argv!r}")
    parser = _Parser(prog="aciq")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *argv])
    rows, plan, dist = _sweep_rows(args)
    if dist.is_main:
        _sweep_outputs(args, rows, plan)
    return rows


# --------------------------------------------------------------------------- layer sensitivity (-ct, -ep)
SENSITIVITY_COLUMNS = ("sweep", "keep", "bits", "model", "preset", "config", "top1", "top5", "agreement",
                       "mean_kl", "logit_sqnr_db", "n", "kept")
LAYER_COLUMNS = ("rank", "layer", "sqnr_db")


def _default_keeps(n_layers: int) -> list[int]:
    keeps = [0] + [1 << i for i in range(n_layers.bit_length()) if (1 << i) < n_layers]
    return keeps + [n_layers]


def _cmd_sensitivity(args) -> int:
    from pathlib import Path

    from .distributed import session
    from .evaluate import append_csv, markdown_table, write_csv
    from .sensitivity import high_precision, keep_layers, sensitivity_figure

    _threads(args)
    if args.model not in MODELS:
        raise ValueError(f"--model must be one of {list(MODELS)}, got {args.model!r}")
    config = build_config(args.preset, _overrides(args))
    if config is None:
        raise ValueError("--preset float has no layer to rank: give a quantized preset")
    for b in args.bits:
        if not 1 <= b <= 8:
            raise ValueError(f"--bits must lie in 1..8, got {b}")
    if any(k < 0 for k in args.keep or []):
        raise ValueError(f"--keep must be >= 0, got {args.keep}")
    preset_name = args.preset or "custom"
    base = dict(model_name=args.model, preset_name=preset_name)
    with session(args.device) as dist:
        device = dist.device(args.device)
        calib, loader, data_desc = _data(args, args.model, dist)
        model = _load(args.model, args.weights).to(device).eval()
        t0 = time.perf_counter()
        low, stats, folded = _quantize(args, model, config, calib, device, dist)
        ranking = _ranking(low, folded(), calib, args, device, dist)
        keeps = _default_keeps(len(ranking)) if args.keep is None else sorted(set(args.keep))
        if keeps[-1] > len(ranking):
            raise ValueError(f"--keep {keeps[-1]}: the model has {len(ranking)} quantized layers")
        high = _quantize(args, model, high_precision(config), calib, device, dist)[0] if keeps[-1] else None
        calib_s = time.perf_counter() - t0
        score = dict(model=model, loader=loader, data_desc=data_desc, device=device, dist=dist,
                     calib_n=_images(stats, calib), calib_s=calib_s)
        keep_rows, bits_rows = [], []
        for k in keeps:
            names = [r["layer"] for r in ranking[:k]]
            qm = keep_layers(low, high, names) if k else low
            row = _score(args, **{**base, "preset_name": f"{preset_name}+keep{k}"}, config=config, qmodel=qm, **score)
            row.update(sweep="keep", keep=k, bits=config.weight_bits, kept=";".join(names),
                       config=f"{row['config']} keep8:{k}")
            keep_rows.append(row)
        for b in args.bits:
            cfg = high_precision(config, b)
            t1 = time.perf_counter()
            qm, st, _ = _quantize(args, model, cfg, calib, device, dist)
            row = _score(args, **{**base, "preset_name": f"{preset_name}@{b}bit"}, config=cfg, qmodel=qm,
                         **{**score, "calib_n": _images(st, calib), "calib_s": time.perf_counter() - t1})
            row.update(sweep="bits", keep=0, bits=b, kept="")
            bits_rows.append(row)
    if not dist.is_main:
        return 0
    out = Path(args.out)
    stem = out / f"sensitivity-{args.model}-{preset_name}"
    rows = keep_rows + bits_rows
    paths = [write_csv(f"{stem}-layers.csv", ranking, LAYER_COLUMNS), write_csv(f"{stem}.csv", rows,
                                                                                 SENSITIVITY_COLUMNS)]
    fig = sensitivity_figure(keep_rows, bits_rows, title=f"{args.model} {preset_name}: layer sensitivity")
    fig.savefig(f"{stem}.png", dpi=150, metadata={"Software": None})
    paths.append(Path(f"{stem}.png"))
    if args.results:
        for row in rows:
            append_csv(args.results, row)
    if args.json:
        print(json.dumps({"layers": ranking, "rows": rows, "files": [str(p) for p in paths]}, default=str))
    else:
        print(markdown_table(ranking, (("rank", "rank"), ("layer", "layer"), ("sqnr_db", "SQNR dB"))), end="")
        print()
        print(markdown_table(rows, (("sweep", "sweep"), ("keep", "kept at 8 bits"), ("bits", "bits"),
                                    ("top1", "top-1"), ("agreement", "agree %"), ("mean_kl", "KL", 4),
                                    ("logit_sqnr_db", "SQNR dB"), ("n", "n"))), end="")
        for path in paths:
            print(path)
    _track(args, [(row, config if row["sweep"] == "keep" else high_precision(config, row["bits"]))
                  for row in rows], artifacts=paths, run_name=f"sensitivity {args.model} {preset_name}")
    return 0


# --------------------------------------------------------------------------- experiment tracking
def _params(args, row: dict, config: QuantConfig | None) -> dict:
    """What identifies a row in MLflow: the config's fields and the run settings."""
    params = {"model": row["model"], "preset": row["preset"], "config": row["config"], "data": row["data"],
              "calib_images": row["calib_images"], "batch_size": row["batch_size"], "device": row["device"],
              "backend": row["backend"], "seed": getattr(args, "seed", None), "limit": getattr(args, "limit", None),
              "weights": getattr(args, "weights", None), "keep_8bit": row.get("keep_8bit", 0)}
    if config is not None:
        params.update({f"config.{k}": v for k, v in config.to_dict().items()})
    return params


def _track(args, pairs, *, artifacts=(), run_name=None) -> None:
    """Log ``(row, config)`` pairs to MLflow when ``--mlflow`` was given."""
    if getattr(args, "mlflow", None) is None:
        return
    from .tracking import log_rows

    log_rows([(row, _params(args, row, config)) for row, config in pairs], uri=args.mlflow,
             experiment=args.mlflow_experiment, artifacts=artifacts, run_name=run_name)


def _add_tracking_options(p) -> None:
    from .tracking import DEFAULT_URI

    g = p.add_argument_group("experiment tracking (optional: pip install 'aciq[tracking]')")
    g.add_argument("--mlflow", nargs="?", const=DEFAULT_URI, metavar="URI",
                   help=f"log the rows to MLflow (default store: ./{DEFAULT_URI}, a local file store)")
    g.add_argument("--mlflow-experiment", default="aciq", help="MLflow experiment name (default: aciq)")


def _cmd_results(args) -> int:
    _threads(args)
    from .embedded import EXPERIMENTS, run_all

    only = args.only or list(EXPERIMENTS)
    t0 = time.perf_counter()
    paths, timings = run_all(args.out, only=only, grid=args.grid, progress=not args.no_progress,
                             cache=not args.no_cache)
    done = [t for t in timings if not t["cached"]]
    spent = {k: sum(t[k] for t in done) for k in ("statistics", "calibrate", "evaluate")}
    print(f"{len(done)} rows computed, {len(timings) - len(done)} from the cache, in "
          f"{time.perf_counter() - t0:.0f} s with {torch.get_num_threads()} torch threads (shared statistics "
          f"{spent['statistics']:.0f} s, calibration {spent['calibrate']:.0f} s, evaluation {spent['evaluate']:.0f} s)",
          file=sys.stderr)
    for p in paths:
        print(p)
    return 0


def _cmd_model_figures(args) -> int:
    from .figures import save_model_figures
    from .zoo import MODELS

    for m in args.model:
        if m not in MODELS:
            raise ValueError(f"--model: {m!r} is not one of {list(MODELS)}")
    if args.weights and len(args.model) != 1:
        raise ValueError("--weights needs exactly one model in --model")
    if not 1 <= args.weight_bits <= 8:
        raise ValueError(f"--weight-bits must be in 1..8, got {args.weight_bits}")
    rows = [{"model": m, "path": str(p)} for m in args.model
            for p in save_model_figures(m, args.out, weights=args.weights, weight_bits=args.weight_bits,
                                        formats=args.formats)]
    print(json.dumps(rows) if args.json else "\n".join(r["path"] for r in rows))
    return 0


def _grids() -> tuple:
    from .embedded import GRIDS

    return tuple(GRIDS)


def _experiments() -> tuple:
    from .embedded import EXPERIMENTS

    return tuple(EXPERIMENTS)
def _add_export(subparsers) -> None:
    """``aciq export``: quantize one model and write it as a QDQ ONNX file (:func:`aciq.quant.export_onnx`)."""

    def cmd(args) -> int:
        _threads(args)
        from .distributed import Dist
        from .export import export_onnx
        from .zoo import MODELS

        if args.model not in MODELS:
            raise ValueError(f"--model must be one of {list(MODELS)}, got {args.model!r}")
        config = build_config(args.preset, _overrides(args))
        if config is None:
            raise ValueError("--preset float quantizes nothing: there is no integer model to export")
        calib, loader, data_desc = _data(args, args.model)
        model = _load(args.model, args.weights)
        qmodel = _quantize(args, model, config, calib, torch.device("cpu"), Dist())[0]
        info = export_onnx(qmodel, calib[:2], args.out, opset=args.opset, int4=not args.no_int4, form=args.form)
        row = {"model": args.model, "preset": args.preset or "custom", "config": config.describe(),
               **info.to_dict()}
        if args.check:
            from .onnx_check import compare_onnx

            x = torch.cat([b[0] for b in loader])
            row["check"] = {"data": data_desc, **compare_onnx(qmodel, info.path, x, threads=args.threads).to_dict()}
        if args.json:
            print(json.dumps(row, default=str))
        else:
            print(f"{args.model} {row['preset']} [{row['config']}] -> {info.path} (opset {info.opset}, containers "
                  f"{', '.join(info.containers())})")
            if args.check:
                c = row["check"]
                print(f"ONNX Runtime vs aciq on {c['n']} inputs ({c['data']}): top-1 agreement {c['agreement']:.2f} % "
                      f"({c['disagreements']} differ), max |logit diff| {c['max_logit_diff']:.4g}")
        return 0

    p = subparsers.add_parser("export", help="quantize one model and write it as a QDQ ONNX file",
                              description="quantize one model and write it as a QDQ ONNX file: integer weights "
                              "with per-channel scales, QuantizeLinear/DequantizeLinear activations")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--model", required=True, help="one of the zoo's models (see aciq evaluate)")
    p.add_argument("--weights", help="a local state-dict file (loaded with weights_only=True)")
    p.add_argument("--stats-load", help="use statistics saved earlier (aciq evaluate --stats-save)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=21, help="ONNX opset (default 21; >= 21 for UINT4 weights)")
    p.add_argument("--no-int4", action="store_true", help="4-bit weights in UINT8 instead of UINT4")
    p.add_argument("--form", choices=("qdq", "integer"), default="qdq",
                   help="qdq (default): DequantizeLinear with the real scales before every conv; integer: "
                        "unit-scale DequantizeLinear, integer-valued convs, then one Mul by the output scales, so "
                        "ONNX Runtime computes what aciq computes (see aciq.quant.export_onnx)")
    p.add_argument("--check", action="store_true",
                   help="run the file in ONNX Runtime on the evaluation data and report its agreement with aciq")
    _add_data_options(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, help="--check on only the first N evaluation images")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for ImageFolder data")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    _add_config_options(p)
    p.set_defaults(func=cmd)


def register(subparsers) -> None:
    """Add ``evaluate``, ``sweep``, ``sensitivity``, ``results`` and ``model-figures`` to the ``aciq`` command."""
    p = subparsers.add_parser("evaluate", help="quantize one model and score it against its float original",
                              description="quantize one model and score it against its float original")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--model", required=True, help=", ".join(MODELS))
    p.add_argument("--weights", help="a local state-dict file (loaded with weights_only=True)")
    p.add_argument("--stats-save", help="save the calibration statistics (<stem>.json + <stem>.npz)")
    p.add_argument("--stats-load", help="use statistics saved earlier instead of collecting them")
    p.add_argument("--norms", metavar="CSV", help="also write the per-sample output norms of every layer, float "
                   "and quantized, and their distance (the seed's -ms)")
    _add_run_options(p)
    _add_config_options(p)
    _add_tracking_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser("sweep", help="presets x bit-widths x models into one CSV and a markdown table",
                              description="presets x bit-widths x models into one CSV and a markdown table")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--presets", nargs="+", required=True)
    p.add_argument("--bits", nargs="+", type=_bits_pair, help="W/A pairs overriding the presets' bits, e.g. 4/4 4/8")
    p.add_argument("--weights", help="a local state-dict file (one model only)")
    p.add_argument("--markdown", help="also write the markdown table to this file")
    p.add_argument("--keep-8bit", nargs="+", type=int, metavar="K",
                   help="for every quantized row, also rows with the K most sensitive layers at 8 bits")
    p.add_argument("--norms", metavar="DIR", help="also write each quantized row's per-layer output norms here")
    p.add_argument("--distribute", choices=("data", "rows"), default="data",
                   help="under torchrun: shard the evaluation set of every row (data, default) or give each "
                        "rank whole rows (rows)")
    _add_run_options(p)
    _add_tracking_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = subparsers.add_parser("sensitivity", help="rank layers by measured error; sweep layers kept at 8 bits "
                              "and int8 -> int4 (the seed's -ct, -ep)",
                              description="rank the layers by measured quantization error (SQNR of each layer on "
                              "its float input), then score the model with the k most sensitive layers at 8 bits "
                              "and at every bit-width of --bits; writes CSVs and a plot")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--model", required=True, help=", ".join(MODELS))
    p.add_argument("--weights", help="a local state-dict file (loaded with weights_only=True)")
    p.add_argument("--keep", nargs="+", type=int, metavar="K",
                   help="numbers of layers kept at 8 bits (default 0, 1, 2, 4, ... and all)")
    p.add_argument("--bits", nargs="+", type=int, default=[8, 7, 6, 5, 4],
                   help="bit-widths of the precision sweep, weights and activations (default 8 7 6 5 4)")
    p.add_argument("--out", default="results", help="folder for the CSVs and the plot (default: results/)")
    _add_run_options(p)
    _add_config_options(p)
    _add_tracking_options(p)
    p.set_defaults(func=_cmd_sensitivity)

    p = subparsers.add_parser("results", help="the embedded experiments' results tables (no ImageNet needed)",
                              description="the embedded experiments' results tables (no ImageNet needed)")
    p.add_argument("--json", action="store_true", help="(no effect: the tables are files)")
    p.add_argument("--out", default="figures", help="output folder (default: figures/)")
    p.add_argument("--only", nargs="+", choices=_experiments())
    p.add_argument("--grid", choices=_grids(), default="table",
                   help="table: the paper's rows and the best recipes (default); full: also the seed's and the "
                        "per-tensor calibrators' rows; quick: three rows on fewer images (a smoke run)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute every row (default: reuse the rows finished under OUT/.cache/results)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=_cmd_results)

    p = subparsers.add_parser("model-figures", help="figures of a model's weights (the seed's bias-error figure)",
                              description="figures of a model's weights: per output channel, the mean error of "
                              "its quantized weights before and after bias correction (seed: resnet101_bias_err)")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--model", nargs="+", required=True, help="one or more of the zoo models")
    p.add_argument("--weights", help="a local state-dict file (one model only; torchvision models need it offline)")
    p.add_argument("--weight-bits", type=int, default=4, help="weight bits (default 4, as the seed)")
    p.add_argument("--out", default="figures", help="output folder (default: figures/)")
    p.add_argument("--formats", nargs="+", default=["png"], help="file formats, e.g. png pdf svg")
    p.set_defaults(func=_cmd_model_figures)
    _add_export(subparsers)
