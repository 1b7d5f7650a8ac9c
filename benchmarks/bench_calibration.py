"""Calibration time of ACIQ (analytical clipping) vs the ``mse`` search calibrator, and the top-1 each gives.

ACIQ (``act_clipping="laplace"``) needs two passes over the calibration images (moments, then the mean
absolute deviation and histograms) and one closed-form alpha per site. The ``mse`` calibrator peers use
measures the error of ``mse_candidates`` = 100 windows (fractions k/100 of the min/max window) on every
calibration activation in a third pass and keeps the best. Both are timed on the same model, the same
calibration images and the same granularity (W4A4, weights min/max per output channel, activations per
tensor or per channel):

* ``quantize``: the whole :func:`aciq.quant.quantize` call (copy, BN folding, trace, statistics, grids,
  weight quantization, module swap);
* ``stats+grid``: the part that differs, the time spent inside ``collect_statistics`` (every pass over
  the calibration images) and ``site_grid`` (statistics -> grid, activations and weights), measured inside
  that same call by wrapping the two functions of :mod:`aciq.quant.api`.

Models: the Fashion-MNIST ResNet-20 (:func:`aciq.quant.resnet20.load_resnet20_fmnist`; a random
initialisation, without accuracy, if its weights are missing) calibrated on ``--images`` seeded training
images, and an ImageNet model at 224x224 (EfficientNet-Lite0 from :mod:`aciq.quant.zoo`, else torchvision
resnet18 with ``weights=None``) calibrated on the first ``--big-images`` foolbox photos (random normal
inputs if the photos are missing). The accuracy side is the ResNet-20 top-1 on the Fashion-MNIST test set.

Times are the median of ``--repeat`` calls, ACIQ and mse interleaved (the order alternates per repeat);
``--threads`` sets ``torch.set_num_threads`` (1 by default: the most stable on a shared machine). Timings
never gate CI.

Usage: ``python benchmarks/bench_calibration.py [--quick] [--repeat 3] [--images 32] [--big-images 1]
[--big efficientnet_lite0|resnet18|none] [--threads 1] [--eval-images 10000] [--profile] [--json OUT]``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics as stat
import time
from pathlib import Path

import numpy as np
import torch

import aciq.quant.api as qapi
from aciq.quant import PerChannel, preset, quantize

GRANULARITIES = ("per-tensor", "per-channel")
METHODS = ("aciq", "mse")


def config(method: str, granularity: str, candidates: int = 100):
    """W4A4, weights per output channel (min/max); activations ACIQ-Laplace or mse at ``granularity``."""
    changes = {"act_clipping": "laplace" if method == "aciq" else "mse", "mse_candidates": candidates}
    if granularity == "per-channel":
        changes["act_granularity"] = PerChannel(axis=1)
    return preset("w4a4-pt-aciq", **changes)


# --------------------------------------------------------------------------- models and data
def resnet20_case(n_images: int, seed: int, eval_images: int) -> dict:
    from aciq.quant import fashion_mnist
    from aciq.quant.resnet20 import load_resnet20_fmnist, resnet20

    note = []
    try:
        model, trained = load_resnet20_fmnist(), True
    except (FileNotFoundError, ValueError) as exc:
        torch.manual_seed(seed)
        model, trained = resnet20().eval(), False
        note.append(f"random init ({exc.__class__.__name__}: no trained weights)")
    try:
        images, _ = fashion_mnist.load("train")
        pick = np.random.default_rng(seed).choice(len(images), size=n_images, replace=False)
        calib = fashion_mnist.to_tensor(images[np.sort(pick)])
        test = fashion_mnist.load("test") if trained and eval_images > 0 else None
    except (FileNotFoundError, ValueError, OSError) as exc:
        calib = torch.randn(n_images, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
        test = None
        note.append(f"random calibration inputs (Fashion-MNIST: {exc})")
    if test is not None:
        x_test, y_test = test
        test = (fashion_mnist.to_tensor(x_test[:eval_images]), torch.as_tensor(y_test[:eval_images]))
    return {"model_name": "resnet20_fmnist" if trained else "resnet20 (random)", "model": model,
            "calib": calib, "test": test, "note": "; ".join(note)}


def big_case(name: str, n_images: int, seed: int) -> dict:
    note = []
    if name == "efficientnet_lite0":
        try:
            from aciq.quant.zoo import load_model

            model = load_model("efficientnet_lite0")
        except (ImportError, ValueError, FileNotFoundError) as exc:
            note.append(f"efficientnet_lite0 unavailable ({exc}); resnet18 instead")
            name = "resnet18"
    if name == "resnet18":
        import torchvision

        torch.manual_seed(seed)
        model = torchvision.models.resnet18(weights=None).eval()
    try:
        from aciq.quant.photos import load_photos, photo_batch

        calib, _ = photo_batch(load_photos()[:n_images], model_name=name)
    except (ImportError, ValueError, OSError) as exc:
        calib = torch.randn(n_images, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
        note.append(f"random calibration inputs (photos: {exc})")
    return {"model_name": name + (" (random)" if name == "resnet18" else ""), "model": model, "calib": calib,
            "test": None, "note": "; ".join(note)}


# --------------------------------------------------------------------------- timing
class _Timed:
    """Wrap ``aciq.quant.api.<name>`` for the duration of a ``with`` block; ``seconds`` accumulates."""

    def __init__(self, name: str):
        self.name, self.seconds, self.calls = name, 0.0, 0

    def __enter__(self):
        self.original = getattr(qapi, self.name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        setattr(qapi, self.name, wrapper)
        return self

    def __exit__(self, *exc):
        setattr(qapi, self.name, self.original)


def timed_quantize(model, cfg, calib):
    """One ``quantize`` call: (qmodel, total seconds, seconds in collect_statistics + site_grid)."""
    with _Timed("collect_statistics") as t_stats, _Timed("site_grid") as t_grid:
        start = time.perf_counter()
        qmodel = quantize(model, cfg, calib)
        total = time.perf_counter() - start
    part = t_stats.seconds + t_grid.seconds if t_stats.calls else float("nan")
    return qmodel, total, part


@torch.no_grad()
def top1(model, x, y, batch: int = 1000) -> float:
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return 100.0 * correct / len(x)


def run_case(case: dict, *, repeat: int, granularities, candidates: int, log=print) -> list[dict]:
    rows = []
    model, calib = case["model"], case["calib"]
    for gran in granularities:
        times = {m: {"quantize": [], "stats": []} for m in METHODS}
        qmodels = {}
        for r in range(repeat):
            for method in (METHODS if r % 2 == 0 else METHODS[::-1]):
                qmodel, total, part = timed_quantize(model, config(method, gran, candidates), calib)
                times[method]["quantize"].append(total)
                times[method]["stats"].append(part)
                qmodels.setdefault(method, qmodel)
                log(f"  {case['model_name']:<20} {gran:<11} {method:<4} repeat {r + 1}: quantize {total:7.2f} s, "
                    f"stats+grid {part:7.2f} s")
        row = {"model": case["model_name"], "granularity": gran, "images": int(case["calib"].shape[0]),
               "times_s": times, "note": case["note"]}
        for key in ("quantize", "stats"):
            a, m = stat.median(times["aciq"][key]), stat.median(times["mse"][key])
            row[f"t_aciq_{key}"], row[f"t_mse_{key}"], row[f"ratio_{key}"] = a, m, m / a
        row["top1_aciq"] = row["top1_mse"] = None
        if case["test"] is not None:
            x, y = case["test"]
            row["top1_aciq"] = top1(qmodels["aciq"], x, y)
            row["top1_mse"] = top1(qmodels["mse"], x, y)
            row["eval_images"] = int(len(x))
        rows.append(row)
    return rows


def aciq_without_histograms(case: dict, granularity: str = "per-tensor", repeat: int = 5):
    """What-if: ACIQ ``quantize`` times with the observers' histograms (used by ``kl`` only) on and off.

    Off replaces ``aciq.quant.api.Observer`` by ``Observer(site, hist_bins=None)`` for the call; the two run
    interleaved, ``repeat`` times each. Returns (median with, median without), or None if the api no longer
    builds its observers that way.
    """
    original = getattr(qapi, "Observer", None)
    if original is None:
        return None

    def no_hist(site, **kwargs):
        return original(site, hist_bins=None)

    times = {True: [], False: []}
    try:
        for _ in range(repeat):
            for hist in (True, False):
                qapi.Observer = original if hist else no_hist
                times[hist].append(timed_quantize(case["model"], config("aciq", granularity), case["calib"])[1])
    except TypeError:
        return None
    finally:
        qapi.Observer = original
    return stat.median(times[True]), stat.median(times[False])


def profile_aciq(case: dict, granularity: str = "per-tensor", top: int = 18) -> str:
    """cProfile of one ACIQ ``quantize`` call (sorted by own time)."""
    prof = cProfile.Profile()
    prof.enable()
    quantize(case["model"], config("aciq", granularity), case["calib"])
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------- report
def run(*, repeat=3, images=32, big="efficientnet_lite0", big_images=1, threads=1, eval_images=10000,
        seed=0, candidates=100, big_granularities=GRANULARITIES, log=print) -> dict:
    torch.set_num_threads(threads)
    report = {"threads": threads, "repeat": repeat, "seed": seed, "mse_candidates": candidates,
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "rows": [],
              "float_top1": None}
    case = resnet20_case(images, seed, eval_images)
    if case["test"] is not None:
        report["float_top1"] = top1(case["model"], *case["test"])
    cases = [(case, GRANULARITIES)]
    if big != "none":
        cases.append((big_case(big, big_images, seed), big_granularities))
    for c, grans in cases:
        report["rows"] += run_case(c, repeat=repeat, granularities=grans, candidates=candidates, log=log)
    report["_cases"] = cases
    return report


def _fmt(v, width):
    return f"{'n/a':>{width}}" if v is None else f"{v:{width}.2f}"


def print_report(report: dict) -> None:
    print(f"\ncalibration time, W4A4 (weights per channel, min/max), ACIQ-Laplace vs mse "
          f"({report['mse_candidates']} candidates); median of {report['repeat']}, "
          f"torch {report['torch']}, {report['threads']} thread(s)")
    if report["float_top1"] is not None:
        print(f"resnet20_fmnist float top-1 on the Fashion-MNIST test set: {report['float_top1']:.2f} %")
    head = (f"{'model':<20} {'granularity':<11} {'imgs':>4} | {'quantize(): t_aciq':>18} {'t_mse':>8} {'ratio':>6} "
            f"| {'stats+grid: t_aciq':>18} {'t_mse':>8} {'ratio':>6} | {'top1_aciq':>9} {'top1_mse':>8}")
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        print(f"{r['model']:<20} {r['granularity']:<11} {r['images']:>4} | {r['t_aciq_quantize']:>16.2f} s "
              f"{r['t_mse_quantize']:>6.2f} s {r['ratio_quantize']:>5.1f}x | {r['t_aciq_stats']:>16.2f} s "
              f"{r['t_mse_stats']:>6.2f} s {r['ratio_stats']:>5.1f}x | {_fmt(r['top1_aciq'], 9)} "
              f"{_fmt(r['top1_mse'], 8)}")
    notes = {r["model"]: r["note"] for r in report["rows"] if r["note"]}
    for model, note in notes.items():
        print(f"note: {model}: {note}")
    low = [r for r in report["rows"] if r["ratio_quantize"] < 20]
    if low:
        print(f"aim (ACIQ >= 20x faster) NOT met by quantize() in {len(low)} of {len(report['rows'])} rows")
    acc = [r for r in report["rows"] if r["top1_aciq"] is not None]
    for r in acc:
        gap = r["top1_aciq"] - r["top1_mse"]
        print(f"{r['model']} {r['granularity']}: top-1 ACIQ - mse = {gap:+.2f} points on {r['eval_images']} "
              f"images ({'within' if gap >= -0.3 else 'NOT within'} 0.3 points)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, 2000 test images, the ImageNet model per tensor only")
    parser.add_argument("--repeat", type=int, default=None, help="timed repeats per method (default 3)")
    parser.add_argument("--images", type=int, default=32, help="ResNet-20 calibration images (training set)")
    parser.add_argument("--big", choices=("efficientnet_lite0", "resnet18", "none"), default="efficientnet_lite0")
    parser.add_argument("--big-images", type=int, default=1, help="calibration photos of the ImageNet model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=None, help="Fashion-MNIST test images (default all)")
    parser.add_argument("--candidates", type=int, default=100, help="mse_candidates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of one ACIQ quantize()")
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    eval_images = args.eval_images if args.eval_images is not None else (2000 if args.quick else 10000)
    if repeat < 1 or args.images < 1 or args.big_images < 1 or args.threads < 1:
        parser.error("--repeat, --images, --big-images and --threads must be >= 1")
    report = run(repeat=repeat, images=args.images, big=args.big, big_images=args.big_images,
                 threads=args.threads, eval_images=eval_images, seed=args.seed, candidates=args.candidates,
                 big_granularities=("per-tensor",) if args.quick else GRANULARITIES)
    cases = report.pop("_cases")
    print_report(report)
    if args.profile:
        for case, _ in cases:
            print(f"\ncProfile of one ACIQ per-tensor quantize() on {case['model_name']} "
                  f"({case['calib'].shape[0]} images):")
            print(profile_aciq(case))
            t = aciq_without_histograms(case)
            row = next(r for r in report["rows"] if r["model"] == case["model_name"]
                       and r["granularity"] == "per-tensor")
            if t is not None:
                print(f"what-if, no histograms (only kl uses them): ACIQ per-tensor quantize() {t[1]:.2f} s "
                      f"instead of {t[0]:.2f} s (median of 5, interleaved); with the mse time above "
                      f"({row['t_mse_quantize']:.2f} s) the ratio would be {row['t_mse_quantize'] / t[1]:.1f}x "
                      f"instead of {row['t_mse_quantize'] / t[0]:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
