"""``aciq evaluate``, ``aciq sweep`` and ``aciq results``: registered in the ``aciq.cli`` entry-point group.

Data per model:

* ``resnet20_fmnist``, ``mobilenet_fmnist``: Fashion-MNIST (``--data`` root, default the Debian package's
  folder). Calibration on ``--calib-images`` training images (seeded), evaluation on the 10 000 test images.
* ImageNet models with ``--data PATH``: an ImageFolder (ILSVRC2012 val: ``PATH/<synset>/*.JPEG`` or
  ``PATH/val/...``). Calibration on ``--calib-images`` images drawn (seeded) from the folder; they are
  removed from the evaluation set, so no scored image is ever used for statistics.
* ImageNet models without ``--data`` (or ``--data photos``): the 20 labelled photos of foolbox's wheel;
  calibration on crops of photos 0-9, evaluation on photos 10-19.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import time

import torch

from .config import PRESETS, PerChannel, PerTensor, QuantConfig, preset

__all__ = ["register", "run", "build_config"]

FLOAT = "float"


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
    "half_range": ("half_range", lambda v: {"auto": "auto", "on": True, "off": False}[v]),
    "act_site": ("act_site", None), "pool_bits": ("pool_bits", None),
    "mse_candidates": ("mse_candidates", None),
}


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
    g.add_argument("--weight-granularity", choices=("tensor", "channel"))
    g.add_argument("--act-granularity", choices=("tensor", "channel"))
    modes = ("minmax", "laplace", "gauss", "mix", "kstd", "kl", "mse", "exact")
    g.add_argument("--weight-clipping", choices=modes)
    g.add_argument("--act-clipping", choices=modes)
    g.add_argument("--kstd", type=float)
    g.add_argument("--exact-prior", choices=("laplace", "gauss"))
    g.add_argument("--act-bit-alloc", choices=("none", "paper", "optimal"))
    g.add_argument("--weight-bit-alloc", choices=("none", "paper", "optimal"))
    g.add_argument("--act-avg-bits", type=float)
    g.add_argument("--weight-avg-bits", type=float)
    g.add_argument("--alloc-budget", choices=("bins", "bits"))
    g.add_argument("--bias-correction", choices=("off", "mean", "mean+variance"))
    g.add_argument("--bias-form", choices=("seed", "on-grid"))
    g.add_argument("--first-layer-bits", type=_opt_bits)
    g.add_argument("--last-layer-bits", type=_opt_bits)
    g.add_argument("--half-range", choices=("auto", "on", "off"))
    g.add_argument("--act-site", choices=("input", "output"))
    g.add_argument("--pool-bits", type=_opt_bits)
    g.add_argument("--mse-candidates", type=int)


def _add_run_options(p):
    p.add_argument("--data", help="ImageFolder path (ImageNet val), Fashion-MNIST root, or 'photos'")
    p.add_argument("--calib-images", type=int, default=32, help="calibration images (default 32)")
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
def _fmnist(spec, model_name):
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

    return calib, Loader(x, y, spec.batch_size), f"fashion-mnist test ({len(x)})"


def _photos(spec, model_name):
    from . import photos
    from .evaluate import Loader

    cal, ev = photos.split_photos(photos.load_photos(), n_calibration=10)
    calib = photos.crop_batch(cal, model_name=model_name, n_per_photo=max(1, math.ceil(spec.calib_images / 10)),
                              seed=spec.seed)[:spec.calib_images]
    x, y = photos.photo_batch(ev, model_name=model_name)
    if spec.limit:
        x, y = x[:spec.limit], y[:spec.limit]
    return calib, Loader(x, y, spec.batch_size), f"foolbox photos 10-19 ({len(x)})"


def _folder(spec, model_name):
    from torch.utils.data import DataLoader, Subset

    from . import zoo
    from .evaluate import image_folder

    ds = image_folder(spec.data, zoo.preprocess(model_name))
    n = len(ds)
    if spec.calib_images >= n:
        raise ValueError(f"--calib-images {spec.calib_images} leaves no evaluation image in {spec.data} ({n})")
    g = torch.Generator().manual_seed(spec.seed)
    perm = torch.randperm(n, generator=g).tolist()
    calib_idx = perm[:spec.calib_images]
    held = set(calib_idx)
    eval_idx = [i for i in range(n) if i not in held]
    if spec.limit:
        eval_idx = eval_idx[:spec.limit]
    calib = torch.stack([ds[i][0] for i in calib_idx])
    loader = DataLoader(Subset(ds, eval_idx), batch_size=spec.batch_size, shuffle=False,
                        num_workers=spec.workers)
    return calib, loader, f"{spec.data} ({len(eval_idx)})"


def _data(spec, model_name):
    if isinstance(spec.calib_images, bool) or spec.calib_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {spec.calib_images}")
    from .zoo import FASHION_MNIST

    try:
        if model_name in FASHION_MNIST:
            return _fmnist(spec, model_name)
        if spec.data in (None, "", "photos"):
            return _photos(spec, model_name)
        return _folder(spec, model_name)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None


# --------------------------------------------------------------------------- one evaluation
def _load(model_name, weights):
    from . import zoo

    try:
        return zoo.load_model(model_name, weights=weights)
    except (OSError, RuntimeError) as exc:  # a missing file, a failed download: one clear line
        raise ValueError(str(exc)) from None


def run(spec, *, model_name: str, preset_name: str | None, config: QuantConfig | None, model=None,
        data=None) -> dict:
    """Load, calibrate, convert, evaluate one (model, config); return the results row."""
    from .api import collect_statistics, convert, prepare
    from .evaluate import evaluate
    from .observe import Statistics

    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    calib, loader, data_desc = data if data is not None else _data(spec, model_name)
    if model is None:
        model = _load(model_name, spec.weights)
    device = torch.device(spec.device)
    model = model.to(device).eval()
    t0 = time.perf_counter()
    if config is None:
        qmodel, calib_n = model, 0
    else:
        batches = [calib[i:i + spec.batch_size].to(device) for i in range(0, len(calib), spec.batch_size)]
        p = prepare(model, batches[0], config)
        if getattr(spec, "stats_load", None):
            stats = Statistics.load(spec.stats_load)
        else:
            stats = collect_statistics(model, config, batches, prepared=p)
        if getattr(spec, "stats_save", None):
            stats.save(spec.stats_save)
        qmodel = convert(p, config, stats, backend=spec.backend)
        calib_n = stats.images
    calib_s = time.perf_counter() - t0
    result = evaluate(qmodel, None if config is None else model, loader, device=device,
                      progress=not spec.no_progress, desc=f"{model_name} {preset_name or 'custom'}")
    if config is None:
        result.update(agreement=100.0, mean_kl=0.0, logit_sqnr_db=math.inf, float_eval_s=result["eval_s"])
    row = {"time": _dt.datetime.now().isoformat(timespec="seconds"), "model": model_name,
           "preset": preset_name or "custom", "config": "float" if config is None else config.describe(),
           "weight_bits": None if config is None else config.weight_bits,
           "act_bits": None if config is None else config.act_bits,
           "calib_images": calib_n, "calib_s": calib_s, "device": str(device), "batch_size": spec.batch_size,
           "backend": spec.backend, "data": data_desc, **result}
    if getattr(spec, "results", None):
        from .evaluate import append_csv

        append_csv(spec.results, row)
    return row


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
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def _cmd_evaluate(args) -> int:
    _threads(args)
    if args.stats_save and args.stats_load:
        raise ValueError("give --stats-save or --stats-load, not both")
    from .zoo import MODELS

    if args.model not in MODELS:
        raise ValueError(f"--model must be one of {list(MODELS)}, got {args.model!r}")
    config = build_config(args.preset, _overrides(args))
    row = run(args, model_name=args.model, preset_name=args.preset, config=config)
    print(json.dumps(row, default=str) if args.json else _summary(row))
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


def _cmd_sweep(args) -> int:
    _threads(args)
    from . import zoo
    from .evaluate import markdown_table

    for m in args.models:
        if m not in zoo.MODELS:
            raise ValueError(f"--models: {m!r} is not one of {list(zoo.MODELS)}")
    if args.weights and len(args.models) != 1:
        raise ValueError("--weights needs exactly one model in --models")
    for name in args.presets:
        if name != FLOAT and name not in PRESETS:
            raise ValueError(f"--presets: {name!r} is not one of {[FLOAT] + sorted(PRESETS)}")
    rows = []
    for m in args.models:
        data = _data(args, m)
        model = _load(m, args.weights)
        for name in args.presets:
            for bits in (args.bits or [None]):
                if name == FLOAT and bits is not None and bits != args.bits[0]:
                    continue
                over = {} if bits is None or name == FLOAT else {"weight_bits": bits[0], "act_bits": bits[1]}
                config = build_config(name, over)
                rows.append(run(args, model_name=m, preset_name=name, config=config, model=model, data=data))
    if args.json:
        print(json.dumps(rows, default=str))
    else:
        print(markdown_table(rows, SWEEP_COLUMNS), end="")
    if args.markdown:
        from pathlib import Path

        Path(args.markdown).write_text(markdown_table(rows, SWEEP_COLUMNS))
    return 0


def _cmd_results(args) -> int:
    _threads(args)
    from .embedded import EXPERIMENTS, run_all

    only = args.only or list(EXPERIMENTS)
    paths = run_all(args.out, only=only, quick=args.quick, progress=not args.no_progress)
    for p in paths:
        print(p)
    return 0


def register(subparsers) -> None:
    """Add ``evaluate``, ``sweep`` and ``results`` to the ``aciq`` command."""
    p = subparsers.add_parser("evaluate", help="quantize one model and score it against its float original",
                              description="quantize one model and score it against its float original")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--model", required=True, help="resnet18, resnet50, resnet101, vgg16, vgg16_bn, inception_v3, "
                   "mobilenet_v2, efficientnet_lite0, resnet20_fmnist, mobilenet_fmnist")
    p.add_argument("--weights", help="a local state-dict file (loaded with weights_only=True)")
    p.add_argument("--stats-save", help="save the calibration statistics (<stem>.json + <stem>.npz)")
    p.add_argument("--stats-load", help="use statistics saved earlier instead of collecting them")
    _add_run_options(p)
    _add_config_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = subparsers.add_parser("sweep", help="presets x bit-widths x models into one CSV and a markdown table",
                              description="presets x bit-widths x models into one CSV and a markdown table")
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--presets", nargs="+", required=True)
    p.add_argument("--bits", nargs="+", type=_bits_pair, help="W/A pairs overriding the presets' bits, e.g. 4/4 4/8")
    p.add_argument("--weights", help="a local state-dict file (one model only)")
    p.add_argument("--markdown", help="also write the markdown table to this file")
    _add_run_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = subparsers.add_parser("results", help="the embedded experiments' results tables (no ImageNet needed)",
                              description="the embedded experiments' results tables (no ImageNet needed)")
    p.add_argument("--json", action="store_true", help="(no effect: the tables are files)")
    p.add_argument("--out", default="figures", help="output folder (default: figures/)")
    p.add_argument("--only", nargs="+", choices=("efficientnet_lite0", "resnet20_fmnist"))
    p.add_argument("--quick", action="store_true", help="fewer images and presets (a smoke run)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=_cmd_results)
