"""GPU benchmark of the fused clip-quantize-GEMM kernel (aciq.kernels.cuda).

ResNet-50 convolution / linear layers as implicit-GEMM shapes
(``M = batch * H' * W'``, ``K = C * kh * kw``, ``N = out channels``) at batch
1, 8 and 64, plus a large memory-bound probe (M = 1, 16384 x 16384 weights,
bigger than L2). For each shape:

* ``fused-mixed``   our kernel, 4-bit packed weights, 4-bit activations with
  per-channel scales, float32 accumulation (input: the im2col matrix, float32);
* ``fused-int``     the same in integer mode (per-tensor scale, int32 accumulation);
* ``fq+conv32``     baseline (a): ``torch.fake_quantize_per_tensor_affine`` of the
  activation + fp32 ``F.conv2d`` / ``F.linear`` with fake-quantized weights
  (on the NCHW tensor, i.e. cuDNN's own algorithm; torch's default TF32 settings,
  recorded in the JSON);
* ``fq+mm32``       baseline (a'): fake-quantize + fp32 matmul on the same im2col
  matrix our kernel reads;
* ``mm16``          baseline (b): fp16 matmul of the im2col matrix (inputs already
  fp16);
* ``im2col``        the cost of materialising the im2col matrix with
  ``F.unfold`` (our conv path needs it; 0 for 1x1 stride-1 convs and linear).

Times are GPU times from CUDA events (the stream is pre-filled with
``torch.cuda._sleep`` so CPU launch overhead is not measured), median of
``--repeats`` after ``--warmup`` calls. Achieved bandwidth of the fused kernel
counts ``x`` read once (float32), the packed weights and ``y`` written (float32);
it is reported as GB/s and as a % of the card's nominal peak and of a measured
device-to-device copy.

Usage::

    python benchmarks/bench_kernels_gpu.py [--json out.json] [--batches 1 8 64]
    python benchmarks/bench_kernels_gpu.py --dry-run      # tiny shapes, CUDA simulator, CPU torch
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

if "--dry-run" in sys.argv:  # must happen before numba.cuda is imported
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402

# (name, C_in, H_in, C_out, k, stride, pad) for convs; ("fc", 2048, 1, 1000, 1, 1, 0) is the linear layer
RESNET50_LAYERS = [
    ("conv1_7x7_s2", 3, 224, 64, 7, 2, 3),
    ("l1_1x1_64-64", 64, 56, 64, 1, 1, 0),
    ("l1_3x3_64", 64, 56, 64, 3, 1, 1),
    ("l1_1x1_64-256", 64, 56, 256, 1, 1, 0),
    ("l1_1x1_256-64", 256, 56, 64, 1, 1, 0),
    ("l2_3x3_128", 128, 28, 128, 3, 1, 1),
    ("l2_1x1_128-512", 128, 28, 512, 1, 1, 0),
    ("l2_1x1_512-128", 512, 28, 128, 1, 1, 0),
    ("l3_3x3_256", 256, 14, 256, 3, 1, 1),
    ("l3_1x1_256-1024", 256, 14, 1024, 1, 1, 0),
    ("l3_1x1_1024-256", 1024, 14, 256, 1, 1, 0),
    ("l4_3x3_512", 512, 7, 512, 3, 1, 1),
    ("l4_1x1_512-2048", 512, 7, 2048, 1, 1, 0),
    ("l4_1x1_2048-512", 2048, 7, 512, 1, 1, 0),
    ("fc_2048-1000", 2048, 1, 1000, 1, 1, 0),
]
PROBE = ("probe_linear_16384", 16384, 1, 16384, 1, 1, 0)  # memory-bound, > L2
DRY_LAYERS = [("dry_3x3", 2, 4, 3, 3, 1, 1), ("dry_fc", 16, 1, 5, 1, 1, 0), ("dry_1x1_s2", 3, 5, 4, 1, 2, 0)]

PEAK_BW_GBS = {  # nominal HBM bandwidth
    "H200": 4800.0, "H100 SXM": 3350.0, "H100 NVL": 3900.0, "H100 PCIe": 2000.0, "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0, "A100 80GB PCIe": 1935.0, "A100": 1555.0, "L40S": 864.0, "L4": 300.0,
}
BITS = 4


def peak_bandwidth(name):
    for key, val in PEAK_BW_GBS.items():
        if key.lower() in name.lower():
            return val
    return float("nan")


def layer_gemm(layer, batch):
    name, c, h, o, k, s, p = layer
    ho = (h + 2 * p - k) // s + 1
    return dict(name=name, batch=batch, M=batch * ho * ho, K=c * k * k, N=o, Ho=ho)


def timer_factory(torch, dev, repeats, warmup):
    """Median GPU time (ms) of ``fn()``; CPU timing when ``dev`` is the CPU (dry run)."""
    use_cuda = dev.type == "cuda"
    sleep = getattr(torch.cuda, "_sleep", None) if use_cuda else None

    def timed(fn):
        for _ in range(warmup):
            fn()
        if not use_cuda:
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return float(np.median(ts))
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(repeats + 1)]
        if sleep is not None:
            sleep(int(3e7))  # ~15 ms of queue so launches are not on the critical path
        ev[0].record()
        for i in range(repeats):
            fn()
            ev[i + 1].record()
        torch.cuda.synchronize()
        return float(np.median([ev[i].elapsed_time(ev[i + 1]) for i in range(repeats)]))

    return timed


def measure_copy_bw(torch, dev, timed):
    if dev.type != "cuda":
        return float("nan")
    a = torch.empty(256 * 2**20, dtype=torch.float32, device=dev)  # 1 GiB
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a))
    return 2 * a.numel() * 4 / (ms * 1e-3) / 1e9


def bench_one(layer, batch, torch, F, kc, dev, timed, rng, check):
    g = layer_gemm(layer, batch)
    name, c, h, o, k, s, p = layer
    M, K, N = g["M"], g["K"], g["N"]
    is_linear = h == 1 and k == 1
    gen = torch.Generator(device=dev).manual_seed(0)
    if is_linear:
        x_nchw = None
        x2d = torch.randn(M, K, device=dev, generator=gen).abs_()  # post-ReLU like
        im2col_fn = None
    else:
        x_nchw = torch.randn(batch, c, h, h, device=dev, generator=gen).abs_()

        def im2col_fn():
            if k == 1 and s == 1:
                return x_nchw.permute(0, 2, 3, 1).reshape(M, K)
            cols = F.unfold(x_nchw, k, padding=p, stride=s)  # [B, K, L]
            return cols.transpose(1, 2).reshape(M, K)

        x2d = im2col_fn().contiguous()
    # weights: 4-bit symmetric codes, per-output-channel scale
    q = rng.integers(-8, 8, size=(N, K), dtype=np.int8)
    w_scale = (rng.random(N) * 0.02 + 0.005).astype(np.float32)
    from aciq.kernels.packing import pack_int4
    from aciq.kernels.spec import ActQuant, QuantWeights

    weights = QuantWeights(codes=pack_int4(q), scale=w_scale, zero_point=np.zeros(N, np.int32), bits=BITS,
                           k=K, n=N, packed=True)
    a_scale_t = np.float32(4.0 / (2**BITS - 1))
    act_int = ActQuant(scale=np.full(K, a_scale_t, np.float32), zero_point=np.zeros(K, np.int32),
                       bits=np.full(K, BITS, np.int32), signed=False)
    act_mix = ActQuant(scale=(a_scale_t * (0.5 + rng.random(K))).astype(np.float32),
                       zero_point=np.zeros(K, np.int32), bits=np.full(K, BITS, np.int32), signed=False)
    plan_mix = kc.CudaQGemm(weights, act_mix, mode="mixed")
    plan_int = kc.CudaQGemm(weights, act_int, mode="integer")
    if dev.type == "cuda":
        from numba import cuda as ncuda
        xd = ncuda.as_cuda_array(x2d)
        od = ncuda.device_array((M, N), dtype=np.float32)
    else:
        xd = x2d.numpy()
        od = None
    path, splits, _ = plan_mix.kernel_for(M)
    row = dict(g, bytes=M * K * 4 + N * ((K + 1) // 2) + M * N * 4, flops=2 * M * N * K,
               path=path, splits=splits)
    res = {}
    res["fused-mixed"] = timed(lambda: plan_mix(xd, out=od))
    res["fused-int"] = timed(lambda: plan_int(xd, out=od))
    if row["path"] != "gemv" and (M >= 128 or dev.type != "cuda"):  # the other tile size, for information
        alt = "tiled128" if row["path"] == "tiled64" else "tiled64"
        plan_alt = kc.CudaQGemm(weights, act_mix, mode="mixed", tile=alt)
        res[f"mixed-{alt}"] = timed(lambda: plan_alt(xd, out=od))
    # baselines
    w_fq = torch.from_numpy(q).to(dev).float() * torch.from_numpy(w_scale).to(dev)[:, None]
    s_t, zp_t, qmax = float(a_scale_t), 0, 2**BITS - 1
    if is_linear:
        res["fq+conv32"] = timed(lambda: F.linear(
            torch.fake_quantize_per_tensor_affine(x2d, s_t, zp_t, 0, qmax), w_fq))
    else:
        w4 = w_fq.reshape(o, c, k, k)
        res["fq+conv32"] = timed(lambda: F.conv2d(
            torch.fake_quantize_per_tensor_affine(x_nchw, s_t, zp_t, 0, qmax), w4, stride=s, padding=p))
    w_fq_t = w_fq.t().contiguous()
    res["fq+mm32"] = timed(lambda: torch.fake_quantize_per_tensor_affine(x2d, s_t, zp_t, 0, qmax) @ w_fq_t)
    if dev.type == "cuda":
        x16, w16 = x2d.half(), w_fq_t.half()
        res["mm16"] = timed(lambda: x16 @ w16)
    else:
        res["mm16"] = float("nan")
    res["im2col"] = 0.0 if (im2col_fn is None or (k == 1 and s == 1)) else timed(lambda: im2col_fn().contiguous())
    if check:
        ref = (torch.fake_quantize_per_tensor_affine(x2d, s_t, zp_t, 0, qmax).double()
               @ w_fq_t.double())
        y = plan_int(xd)
        y = torch.as_tensor(y.copy_to_host() if hasattr(y, "copy_to_host") else y).to(ref.device).double()
        row["relerr_int_vs_fq"] = float((y - ref).norm() / max(float(ref.norm()), 1e-30))
    row["ms"] = res
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CUDA simulator, torch on CPU")
    ap.add_argument("--no-probe", action="store_true", help="skip the large memory-bound probe")
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop starting new shapes after this")
    args = ap.parse_args(argv)
    t_start = time.time()

    import torch
    import torch.nn.functional as F

    from aciq.kernels import cuda as kc

    dry = args.dry_run
    dev = torch.device("cuda" if (torch.cuda.is_available() and not dry) else "cpu")
    if dry:
        args.repeats, args.warmup = 1, 0
        args.batches = [b for b in args.batches if b <= 2] or [1]
    timed = timer_factory(torch, dev, args.repeats, args.warmup)
    rng = np.random.default_rng(0)
    gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (dry run)"
    peak = peak_bandwidth(gpu)
    copy_bw = measure_copy_bw(torch, dev, timed)
    import numba
    meta = dict(gpu=gpu, peak_bw_gbs=peak, copy_bw_gbs=copy_bw, torch=torch.__version__,
                numba=numba.__version__, python=platform.python_version(), dry_run=dry,
                cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
                matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
                repeats=args.repeats, warmup=args.warmup, bits=BITS)
    print(f"# {gpu}: nominal peak {peak:.0f} GB/s, measured D2D copy {copy_bw:.0f} GB/s", flush=True)
    layers = DRY_LAYERS if dry else RESNET50_LAYERS
    jobs = [(lay, b) for b in args.batches for lay in layers]
    if not dry and not args.no_probe:  # right after batch 1, in case the time budget runs out
        jobs.insert(sum(1 for _, b in jobs if b == args.batches[0]), (PROBE, 1))
    rows, skipped, errors = [], [], []
    hdr = (f"{'layer':18s} {'B':>3s} {'M':>7s} {'K':>5s} {'N':>5s} {'path':8s} | {'mixed':>8s} {'int':>8s} "
           f"{'fq+conv':>8s} {'fq+mm':>8s} {'mm16':>8s} {'im2col':>7s} | {'GB/s':>6s} {'%peak':>5s} "
           f"{'%copy':>5s} {'vs(a)':>5s}")
    print(hdr, flush=True)
    for lay, b in jobs:
        if time.time() - t_start > args.budget_s:
            skipped.append(f"{lay[0]}@{b}")
            continue
        try:
            row = bench_one(lay, b, torch, F, kc, dev, timed, rng, check=True)
        except Exception as exc:  # keep going; report at the end
            msg = f"{lay[0]}@{b}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            errors.append(msg)
            print("ERROR", msg, flush=True)
            if len(errors) >= 6 and not rows:
                print("# six failures and no result: giving up", flush=True)
                break
            continue
        ms = row["ms"]
        best = min(ms["fused-mixed"], ms["fused-int"])
        gbs = row["bytes"] / (best * 1e-3) / 1e9
        row["fused_best_ms"] = best
        row["gbs"] = gbs
        row["pct_peak_bw"] = 100 * gbs / peak if peak == peak else float("nan")
        row["pct_copy_bw"] = 100 * gbs / copy_bw if copy_bw == copy_bw else float("nan")
        row["speedup_vs_fq_conv"] = ms["fq+conv32"] / best
        row["speedup_vs_fq_conv_incl_im2col"] = ms["fq+conv32"] / (best + ms["im2col"])
        row["speedup_vs_mm16"] = ms["mm16"] / best
        rows.append(row)
        path = row["path"] + (f"/{row['splits']}" if row["splits"] > 1 else "")
        alt = {k: v for k, v in ms.items() if k.startswith("mixed-tiled")}
        print(f"{row['name']:18s} {b:3d} {row['M']:7d} {row['K']:5d} {row['N']:5d} {path:8s} | "
              f"{ms['fused-mixed']:8.4f} {ms['fused-int']:8.4f} {ms['fq+conv32']:8.4f} {ms['fq+mm32']:8.4f} "
              f"{ms['mm16']:8.4f} {ms['im2col']:7.4f} | {gbs:6.0f} {row['pct_peak_bw']:5.1f} "
              f"{row['pct_copy_bw']:5.1f} {row['speedup_vs_fq_conv']:5.2f}"
              + "".join(f"  [{k}: {v:.4f}]" for k, v in alt.items()), flush=True)
    # summary
    faster = [r for r in rows if r["speedup_vs_fq_conv"] > 1]
    mem = [r for r in rows if r["path"] == "gemv"]
    summary = dict(
        n_shapes=len(rows), n_faster_than_a=len(faster),
        slower_than_a=[f"{r['name']}@{r['batch']}" for r in rows if r["speedup_vs_fq_conv"] <= 1],
        gemv_pct_peak_bw={f"{r['name']}@{r['batch']}": round(r["pct_peak_bw"], 1) for r in mem},
        max_relerr_int_vs_fq=max([r.get("relerr_int_vs_fq", 0.0) for r in rows], default=float("nan")),
        skipped=skipped, errors=errors, wall_s=round(time.time() - t_start, 1))
    print("# summary:", json.dumps(summary, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(meta=meta, rows=rows, summary=summary), fh, indent=1, default=float)
        print(f"# wrote {args.json}")
    return 1 if (errors and not rows) else 0


if __name__ == "__main__":
    sys.exit(main())
