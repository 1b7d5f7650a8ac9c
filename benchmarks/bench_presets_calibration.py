"""Calibration time of whole presets: :func:`aciq.quant.quantize` per preset, as ratios to the first one.

The model and calibration data are those of an embedded results table (:mod:`aciq.quant.embedded`): for
EfficientNet-Lite0 the first fold's 80 calibration crops (8 of each of 10 foolbox photos) in batches of 16, for
the Fashion-MNIST models the 64 seeded training images. One warm-up call (numba compilation, caches), then
``--repeat`` rounds, every preset once per round in the same order; the report gives each preset's fastest
round and its ratio to the first preset's fastest (``--threads`` torch threads). Timings never gate CI.

Usage: ``python benchmarks/bench_presets_calibration.py [--model efficientnet_lite0] [--presets w4a4-all
w4a8-best w4a4-best w8a4-best] [--repeat 2] [--threads 2] [--json OUT]``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from aciq.quant import PRESETS, preset, quantize
from aciq.quant.embedded import EXPERIMENTS
from aciq.quant.memory import retain_freed_memory

DEFAULT_PRESETS = ("w4a4-all", "w4a8-best", "w4a4-best", "w8a4-best")


def run(model_name: str, presets, *, repeat: int, threads: int, log=print) -> list[dict]:
    torch.set_num_threads(threads)
    exp = EXPERIMENTS[model_name]
    model = exp.load()
    calibration = exp.folds(model, False, 0)[0].calibration
    log(f"{model_name}: {sum(len(b) for b in calibration)} calibration images, warm-up ...")
    quantize(model, preset("w4a4-naive"), calibration[:1])
    times = {name: [] for name in presets}
    for r in range(repeat):
        for name in presets:
            start = time.perf_counter()
            quantize(model, preset(name), calibration)
            times[name].append(time.perf_counter() - start)
        log(f"round {r + 1}/{repeat}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items()))
    base = min(times[presets[0]])
    return [{"model": model_name, "preset": name, "threads": threads, "best_s": min(t), "rounds_s": t,
             "ratio": min(t) / base} for name, t in times.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(EXPERIMENTS), default="efficientnet_lite0")
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    args = parser.parse_args(argv)
    for p in args.presets:
        if p not in PRESETS:
            parser.error(f"--presets: {p!r} is not a preset")
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be at least 1")
    retain_freed_memory()
    rows = run(args.model, args.presets, repeat=args.repeat, threads=args.threads)
    print(f"\nquantize() time, fastest of {args.repeat} rounds, {args.threads} torch thread(s), "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for r in rows:
        print(f"{r['preset']:<16} {r['best_s']:7.1f} s  {r['ratio']:5.2f}x of {rows[0]['preset']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
