"""CPU speed of the fused quantized op (numba backend) vs torch float conv/linear.

ResNet-50 layer shapes at batch 1 and 32. For every shape, in the same run and
with the same thread count:

* ``torch``: ``F.conv2d`` / ``F.linear`` in float32 (oneDNN/MKL);
* ``integer``: the numba fused op, per-tensor 8-bit unsigned activations,
  4-bit packed weights, int32-exact accumulation, bias + ReLU epilogue;
* ``mixed``: per-channel activation scales and a 2/4/8-bit mix, 4-bit weights.

The numba times include everything the op does per call (quantizing the float32
input, the GEMM, the epilogue, NCHW output); weights are prepared once (a
``QuantConv2d`` / ``QuantLinear`` layer), as torch's are. ``ratio`` is torch time
/ numba time (1.0 = as fast as torch float; the aim is >= 0.5). Timings are
medians of interleaved repeats after a warm-up call (which also compiles); the
bracket after a ratio is the 25th-75th percentile of the per-round ratios (the
spread on a shared machine). Compare within a row, not across runs.

Usage::

    python benchmarks/bench_kernels_cpu.py            # all shapes, batch 1 and 32
    python benchmarks/bench_kernels_cpu.py --quick    # fewer shapes / repeats
    python benchmarks/bench_kernels_cpu.py --threads 1 2   # one table per thread count
    python benchmarks/bench_kernels_cpu.py --json out.json   (or --json - for stdout)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F

from aciq.kernels import ActQuant, Epilogue, QuantConv2d, QuantLinear, quantize_weights

# name, kind, C_in, C_out, kernel, stride, padding, H (= W) of the input
SHAPES = [
    ("conv1 7x7/2 3->64 @224", "conv", 3, 64, 7, 2, 3, 224),
    ("3x3 64->64 @56", "conv", 64, 64, 3, 1, 1, 56),
    ("1x1 256->64 @56", "conv", 256, 64, 1, 1, 0, 56),
    ("3x3 512->512 @7", "conv", 512, 512, 3, 1, 1, 7),
    ("fc 2048->1000", "linear", 2048, 1000, 1, 1, 0, 1),
]
QUICK = {"3x3 64->64 @56", "3x3 512->512 @7", "fc 2048->1000"}


def _round_times(fns, *, min_reps: int, budget_s: float) -> np.ndarray:
    """Wall times ``[round, contender]``, run interleaved (one call of each per round).

    Interleaving spreads the noise of a shared machine evenly over the contenders,
    and the per-round ratios give the spread of a ratio.
    """
    for fn in fns:
        fn()  # warm-up (compiles the first time)
    times = [[] for _ in fns]
    t_end = time.perf_counter() + budget_s
    while len(times[0]) < min_reps or (time.perf_counter() < t_end and len(times[0]) < 50):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return np.array(times).T


def _layers(kind, cin, cout, k, s, p, rng):
    if kind == "conv":
        wf = rng.normal(0, 0.05, size=(cout, cin, k, k)).astype(np.float32)
    else:
        wf = rng.normal(0, 0.05, size=(cout, cin)).astype(np.float32)
    bias = rng.normal(0, 0.1, size=cout).astype(np.float32)
    act_int = ActQuant.per_tensor(0.02, zero_point=0, bits=8, signed=False, k=cin)
    act_mix = ActQuant(scale=rng.uniform(0.01, 0.05, cin).astype(np.float32), zero_point=0,
                       bits=rng.choice([2, 4, 8], cin), signed=False)
    w = quantize_weights(wf, bits=4)
    ep = Epilogue(bias=bias, relu=True)
    if kind == "conv":
        make = lambda act, mode: QuantConv2d(w, act, stride=s, padding=p, kernel_size=(k, k),  # noqa: E731
                                             epilogue=ep, mode=mode, backend="cpu")
    else:
        make = lambda act, mode: QuantLinear(w, act, epilogue=ep, mode=mode, backend="cpu")  # noqa: E731
    return wf, bias, make(act_int, "integer"), make(act_mix, "mixed")


def run(quick: bool, threads: int):
    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows = []
    min_reps, budget = (3, 0.5) if quick else (5, 2.0)
    for name, kind, cin, cout, k, s, p, hw in SHAPES:
        if quick and name not in QUICK:
            continue
        wf, bias, lay_int, lay_mix = _layers(kind, cin, cout, k, s, p, rng)
        for batch in (1, 32):
            if quick and batch == 32 and hw >= 56:
                continue
            if kind == "conv":
                x = np.abs(rng.normal(size=(batch, cin, hw, hw))).astype(np.float32)
                xt, wt, bt = torch.from_numpy(x), torch.from_numpy(wf), torch.from_numpy(bias)
                ref = lambda: F.relu(F.conv2d(xt, wt, bt, stride=s, padding=p))  # noqa: E731
                flops = 2 * batch * cout * cin * k * k * ((hw + 2 * p - k) // s + 1) ** 2
            else:
                x = np.abs(rng.normal(size=(batch, cin))).astype(np.float32)
                xt, wt, bt = torch.from_numpy(x), torch.from_numpy(wf), torch.from_numpy(bias)
                ref = lambda: F.relu(F.linear(xt, wt, bt))  # noqa: E731
                flops = 2 * batch * cout * cin
            ts = _round_times([ref, lambda: lay_int(x), lambda: lay_mix(x)],
                              min_reps=min_reps, budget_s=budget)
            t_torch, t_int, t_mix = np.median(ts, axis=0)
            r_int, r_mix = ts[:, 0] / ts[:, 1], ts[:, 0] / ts[:, 2]
            rows.append(dict(shape=name, batch=batch, threads=threads, gflop=flops / 1e9,
                             torch_ms=1e3 * t_torch, integer_ms=1e3 * t_int, mixed_ms=1e3 * t_mix,
                             ratio_integer=t_torch / t_int, ratio_mixed=t_torch / t_mix,
                             # spread: 25th-75th percentile of the per-round ratios
                             ratio_integer_iqr=[float(v) for v in np.percentile(r_int, [25, 75])],
                             ratio_mixed_iqr=[float(v) for v in np.percentile(r_mix, [25, 75])],
                             rounds=len(ts)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count()],
                    help="thread counts (torch and numba alike); one table each")
    ap.add_argument("--json", metavar="PATH", help="write the rows as JSON ('-' = stdout)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = [r for t in args.threads for r in run(args.quick, t)]
    meta = dict(threads=args.threads, cpu=platform.processor() or platform.machine(),
                torch=torch.__version__, numba=numba.__version__,
                seconds=round(time.perf_counter() - t0, 1))
    if args.json:
        text = json.dumps(dict(meta=meta, rows=rows), indent=2)
        if args.json == "-":
            print(text)
            return
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    hdr = (f"{'shape':<24} {'batch':>5} {'GFLOP':>7} {'torch ms':>9} {'int ms':>9} "
           f"{'mixed ms':>9} {'ratio int [IQR]':>20} {'ratio mix [IQR]':>20}")

    def fmt(r, key):
        lo, hi = r[key + "_iqr"]
        return f"{r[key]:.2f} [{lo:.2f}-{hi:.2f}]"

    for threads in args.threads:
        print(f"# numba fused op vs torch float, {threads} thread(s) "
              "(ratio = torch time / numba time)")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            if r["threads"] != threads:
                continue
            print(f"{r['shape']:<24} {r['batch']:>5} {r['gflop']:>7.3f} {r['torch_ms']:>9.2f} "
                  f"{r['integer_ms']:>9.2f} {r['mixed_ms']:>9.2f} {fmt(r, 'ratio_integer'):>20} "
                  f"{fmt(r, 'ratio_mixed'):>20}")
    print(f"# {meta}")


if __name__ == "__main__":
    main()
