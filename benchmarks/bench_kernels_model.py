"""Whole models on the integer kernels (``backend="kernels"``) against fake-quant and float, on one device.

Models: EfficientNet-Lite0 (:mod:`aciq.quant.zoo`, its ImageNet weights when the package is installed) and a
ResNet-50-shaped network (torchvision ``resnet50(weights=None)``: the shapes are what the kernels see, the
values do not matter for speed), at batch 1, 8 and 64 (``--batches``). Presets that the kernels run: W4A4 per
tensor (``w4a4-pt-aciq``: integer accumulation) and W4A4 per-channel activations (``w4a4-naive``: mixed
accumulation). Each model is calibrated once on a few random images (on the CPU), then moved to ``--device``.

Per (model, preset, batch): the float model, the fake-quantized model and the kernels model run on the same
fixed batch, interleaved (the order rotates each round), ``--repeat`` rounds after a warm-up; on CUDA each
forward is timed with ``torch.cuda.synchronize()`` around it. Reported: median ms, the ratios
kernels/float and kernels/fake from the same run, and a sanity check of the kernels against fake-quant
(top-1 agreement and max |logit difference| on that batch). On CUDA the kernels model keeps every activation
on the device (KernelLayer passes CUDA tensors to the kernels through ``__cuda_array_interface__``).

Usage: ``python benchmarks/bench_kernels_model.py [--device cuda] [--models efficientnet_lite0 resnet50]
[--batches 1 8 64] [--presets ...] [--repeat 10] [--budget-s 300] [--json OUT]``. With ``--device cpu`` it
runs on the numba CPU backend (a smoke run: use small batches). Timings never gate CI.
"""
from __future__ import annotations

import argparse
import json
import statistics as stat
import time
from pathlib import Path

import torch

from aciq.quant import preset, quantize

MODELS = ("efficientnet_lite0", "resnet50")
PRESETS = ("w4a4-pt-aciq", "w4a4-naive")


def load(name: str):
    """(float model, input size) or None when the model's package is missing."""
    if name == "efficientnet_lite0":
        try:
            from aciq.quant.zoo import load_model

            return load_model("efficientnet_lite0"), (3, 224, 224)
        except (ImportError, ValueError, FileNotFoundError) as exc:
            print(f"skip efficientnet_lite0: {exc}")
            return None
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval(), (3, 224, 224)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_models(models: dict, x: torch.Tensor, repeat: int) -> dict:
    """Median seconds per forward of each model on ``x`` (interleaved, rotating, one warm-up round)."""
    device = x.device
    items = list(models.items())
    times = {k: [] for k in models}
    for r in range(-1, repeat):
        shift = max(r, 0) % len(items)
        for key, model in items[shift:] + items[:shift]:
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if r >= 0:
                times[key].append(time.perf_counter() - start)
    return {k: stat.median(v) for k, v in times.items()}


def run(*, device, models, batches, presets, repeat, budget_s, seed=0, log=print) -> list[dict]:
    t0 = time.time()
    rows = []
    for name in models:
        loaded = load(name)
        if loaded is None:
            continue
        model, shape = loaded
        g = torch.Generator().manual_seed(seed)
        calib = torch.randn(4, *shape, generator=g)
        for p in presets:
            log(f"calibrating {name} {p} ...")
            fake = quantize(model, preset(p), calib).to(device)
            kern = quantize(model, preset(p), calib, backend="kernels").to(device)
            flt = model.to(device)
            for b in batches:
                if time.time() - t0 > budget_s:
                    log(f"budget of {budget_s} s spent: stop")
                    return rows
                x = torch.randn(b, *shape, generator=g).to(device)
                with torch.no_grad():
                    yf, yk = fake(x), kern(x)
                times = time_models({"float": flt, "fake-quant": fake, "kernels": kern}, x, repeat)
                row = {"device": str(device), "model": name, "preset": p, "batch": b,
                       **{f"t_{k}_ms": 1e3 * v for k, v in times.items()},
                       "kernels_vs_float": times["kernels"] / times["float"],
                       "kernels_vs_fake": times["kernels"] / times["fake-quant"],
                       "fake_vs_float": times["fake-quant"] / times["float"],
                       "top1_agree": float((yf.argmax(1) == yk.argmax(1)).float().mean()),
                       "max_logit_diff": float((yf - yk).abs().max()),
                       "modes": sorted({m.mode for m in kern.modules() if hasattr(m, "mode")})}
                rows.append(row)
                log(json.dumps(row))
    return rows


def print_report(rows):
    print("\n# summary: whole models, median ms per forward, ratios from one run")
    head = (f"{'device':<7} {'model':<18} {'preset':<13} {'batch':>5} {'float':>8} {'fake':>8} {'kernels':>8} "
            f"{'k/float':>8} {'k/fake':>7} {'agree':>6} {'max|dz|':>8}  modes")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['device']:<7} {r['model']:<18} {r['preset']:<13} {r['batch']:>5} {r['t_float_ms']:>8.2f} "
              f"{r['t_fake-quant_ms']:>8.2f} {r['t_kernels_ms']:>8.2f} {r['kernels_vs_float']:>7.2f}x "
              f"{r['kernels_vs_fake']:>6.2f}x {r['top1_agree']:>6.2f} {r['max_logit_diff']:>8.3g}  "
              f"{','.join(r['modes'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=600.0, help="stop starting new runs after this")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu for a smoke run)")
    rows = run(device=device, models=args.models, batches=args.batches, presets=args.presets,
               repeat=args.repeat, budget_s=args.budget_s)
    print_report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
