"""How long the ImageNet run of notebooks/05-imagenet-table.ipynb takes, per model, on this machine.

The run (:func:`aciq.quant.table1.protocol` with an ImageNet folder) is, per model, one ``aciq sweep``: the float
row, then every quantized preset (10 rows of the paper's Table 1, plus the seed README's 4 runs for ResNet-50),
each calibrated on 32 images and scored on the 49 968 other validation images, every batch through the float
model (the reference of the agreement, KL and SQNR) and the quantized one.

Measured here, per model (torchvision architecture, random initial weights: the time does not depend on
the values), on random input at the model's size: the float forward and the ``w4a4-all`` forward per image
(activations per channel, bit allocation: the costlier kind; the W4A8 rows quantize activations per tensor),
and the ``w4a4-all`` calibration (:func:`aciq.quant.quantize` on 32 images). The estimate per model is
``rows * (calibration + N * (t_float + t_quant)) + N * t_float`` with ``N = 49 968``. Image decoding and
resizing are left out (DataLoader workers run them beside the model).

On the CPU the times are CPU seconds of this process (``time.process_time``, one torch thread by default), so
that other processes on a shared machine inflate them little: the estimate is in core-hours, to divide by the
cores a run would use. On CUDA they are wall seconds (synchronized).

Usage: ``python benchmarks/bench_table1.py [--device cpu|cuda] [--threads 1] [--batch 8] [--repeat 3]
[--models ...] [--json OUT]``. Timings never gate CI.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics as stat
import time

import torch

from aciq.quant import preset, quantize
from aciq.quant.paper import SEED_MODEL, TABLE1_MODELS
from aciq.quant.table1 import IMAGENET_CALIB, presets
from aciq.quant.zoo import input_size, load_model

N_SCORED = 50_000 - IMAGENET_CALIB


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _clock(device) -> float:
    return time.perf_counter() if device.type == "cuda" else time.process_time()


@torch.no_grad()
def _per_image(model, x, repeat, device) -> float:
    model(x)                       # warm-up
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = _clock(device)
        model(x)
        _sync(device)
        times.append(_clock(device) - t0)
    return stat.median(times) / len(x)


def measure(name, *, device, batch, repeat) -> dict:
    torch.manual_seed(0)
    model = load_model(name, pretrained=False).to(device)
    size = input_size(name)
    x = torch.randn(batch, *size, device=device)
    calib = torch.randn(IMAGENET_CALIB, *size, device=device)
    t_float = _per_image(model, x, repeat, device)
    t0 = _clock(device)
    qmodel = quantize(model, preset("w4a4-all"), [calib[i:i + batch] for i in range(0, len(calib), batch)])
    _sync(device)
    calib_s = _clock(device) - t0
    t_quant = _per_image(qmodel, x, repeat, device)
    rows = len(presets(name)) - 1          # quantized rows; the float row is added below
    total = rows * (calib_s + N_SCORED * (t_float + t_quant)) + N_SCORED * t_float
    return {"model": name, "rows": rows + 1, "float_ms_per_image": 1e3 * t_float,
            "w4a4_all_ms_per_image": 1e3 * t_quant, "calib_s": calib_s, "estimate_h": total / 3600}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(TABLE1_MODELS), choices=TABLE1_MODELS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock = "wall" if device.type == "cuda" else "CPU"
    print(f"device {device}, {torch.get_num_threads()} thread(s), batch {args.batch}, {clock} time, load "
          f"{os.getloadavg()[0]:.1f}; {N_SCORED} scored images per row; {SEED_MODEL} also runs the seed README's "
          f"rows")
    print(f"{'model':14s} {'rows':>4s} {'float ms/img':>12s} {'w4a4-all ms/img':>15s} {'calib s':>8s} "
          f"{'estimate h':>10s}")
    rows = []
    for name in args.models:
        r = measure(name, device=device, batch=args.batch, repeat=args.repeat)
        rows.append(r)
        print(f"{name:14s} {r['rows']:4d} {r['float_ms_per_image']:12.1f} {r['w4a4_all_ms_per_image']:15.1f} "
              f"{r['calib_s']:8.1f} {r['estimate_h']:10.1f}", flush=True)
    print(f"all six: {sum(r['estimate_h'] for r in rows):.1f} h; load {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
