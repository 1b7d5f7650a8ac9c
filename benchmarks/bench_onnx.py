"""The exported ONNX files in ONNX Runtime (CPU): agreement with aciq, and speed beside torch float and fake-quant.

For each model and preset: quantize (the embedded protocol of :mod:`aciq.quant.embedded`), export with
:func:`aciq.quant.export_onnx` (QDQ form, opset 21, UINT4 weights), then

* **agreement** (:func:`aciq.quant.onnx_check.compare_onnx`): top-1 of ONNX Runtime vs aciq's fake-quantized
  model on the evaluation inputs, the number of inputs that differ, the largest and mean |logit difference|,
  for each ONNX Runtime optimization level asked (``all`` = its default, QDQ fusions on; ``basic`` = every
  Q/DQ runs as written);
* **noise floor** (``--noise-floor``): how much aciq's quantized model disagrees with *itself* under a change
  of float rounding alone: the same model in float64 (every grid unchanged; the float operations between the
  quantized layers round differently), and one input at a time instead of whole batches (100 % by
  construction: the quantized layers sum their integer codes exactly, so this checks the bit-identity). ONNX
  Runtime convolves the dequantized values in float32, which rounds; a model that flips under the float64
  change is as sensitive to that;
* **speed**: one fixed batch through torch float, aciq fake-quant and the ONNX Runtime session, interleaved
  rounds after a warm-up, medians and the ratios to float from the same run (``--threads`` torch and ONNX
  Runtime intra-op threads).

Data: ResNet-20 on the Fashion-MNIST test set (``--limit`` images, default all 10 000; calibration on 64 seeded
training images); EfficientNet-Lite0 on foolbox's 20 photos, two-fold cross-calibration (8 crops of each of 10
photos calibrate, the other 10 photos and 16 crops of each are scored, then the folds swap): 20 photos + 320
crops, each fold with its own file. Presets: W4A8 (``w4a8-alloc-bias`` with the on-grid bias correction),
W4A4 (``w4a4-all-ongrid``), W4A4 per tensor (``w4a4-pt-aciq``), and any ``*-best`` preset that exists.

Usage: ``python benchmarks/bench_onnx.py [--models resnet20_fmnist efficientnet_lite0] [--limit N]
[--presets ...] [--form qdq|integer] [--optimizations all basic] [--noise-floor] [--threads 1] [--repeat 5]
[--json OUT]``.
Timings never gate CI.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics as stat
import tempfile
import time
from pathlib import Path

import torch

from aciq.quant import PRESETS, export_onnx, preset, quantize
from aciq.quant.onnx_check import compare_onnx, ort_run, ort_session

MODELS = ("resnet20_fmnist", "efficientnet_lite0")
DEFAULT_PRESETS = ("w4a8-alloc-bias", "w4a4-all-ongrid", "w4a4-pt-aciq")
CHANGES = {"w4a8-alloc-bias": {"bias_form": "on-grid"}}   # the on-grid form of the bias correction exports


def _config(name):
    return preset(name, **CHANGES.get(name, {}))


def resnet20_folds(limit, seed):
    """[(calibration, evaluation inputs, timing batch)] of the Fashion-MNIST ResNet-20: one fold."""
    from aciq.quant import fashion_mnist as fm
    from aciq.quant.resnet20 import load_resnet20_fmnist

    train_x, _ = fm.load("train")
    test_x, _ = fm.load("test")
    g = torch.Generator().manual_seed(seed)
    calib = fm.to_tensor(train_x[torch.randperm(len(train_x), generator=g)[:64].numpy()])
    x = fm.to_tensor(test_x)
    x = x[:limit] if limit else x
    return load_resnet20_fmnist(), [([calib[:32], calib[32:]], x)], x[:256]


def efficientnet_folds(limit, seed):
    """The two folds of the embedded protocol: calibration crops, then scored photos + crops."""
    from aciq.quant import photos as ph
    from aciq.quant.zoo import load_model

    model = load_model("efficientnet_lite0")
    half_a, half_b = ph.split_photos(ph.load_photos(), n_calibration=10)
    folds = []
    for cal, ev in ((half_a, half_b), (half_b, half_a)):
        calib = ph.crop_batch(cal, model_name="efficientnet_lite0", n_per_photo=8, seed=seed)
        x, _ = ph.photo_batch(ev, model_name="efficientnet_lite0")
        crops = ph.crop_batch(ev, model_name="efficientnet_lite0", n_per_photo=16, seed=seed + 1)
        inputs = torch.cat([x, crops])
        folds.append(([calib[i:i + 16] for i in range(0, len(calib), 16)], inputs[:limit] if limit else inputs))
    return model, folds, folds[0][1][:8]


@torch.no_grad()
def time_three(model, qmodel, session, x, repeat):
    """Median seconds of torch float, aciq fake-quant and ONNX Runtime on ``x`` (interleaved, rotating)."""
    name = session.get_inputs()[0].name
    arr = x.numpy()
    runs = [("float", lambda: model(x)), ("fake-quant", lambda: qmodel(x)),
            ("onnxruntime", lambda: session.run(None, {name: arr}))]
    times = {k: [] for k, _ in runs}
    for r in range(-1, repeat):
        shift = max(r, 0) % len(runs)
        for key, fn in runs[shift:] + runs[:shift]:
            start = time.perf_counter()
            fn()
            if r >= 0:
                times[key].append(time.perf_counter() - start)
    return {k: stat.median(v) for k, v in times.items()}


@torch.no_grad()
def noise_floor(qmodel, inputs, batch=256):
    """Top-1 agreement (%) of the fake-quantized model with itself in float64, and at batch 1 vs ``batch``."""
    import copy

    ref = torch.cat([qmodel(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    wide = copy.deepcopy(qmodel).double()
    f64 = torch.cat([wide(inputs[i:i + batch].double()).float() for i in range(0, len(inputs), batch)])
    ones = torch.cat([qmodel(inputs[i:i + 1]) for i in range(len(inputs))])
    same = lambda a, b: int((a.argmax(1) == b.argmax(1)).sum())  # noqa: E731
    return same(ref, f64), same(ref, ones)


def run(models, presets, *, limit, optimizations, threads, repeat, seed, folder, noise=False, form="qdq",
        log=print):
    rows = []
    torch.set_num_threads(threads)
    for model_name in models:
        model, folds, batch = (resnet20_folds if model_name == "resnet20_fmnist" else efficientnet_folds)(limit, seed)
        for name in presets:
            agree = {o: [] for o in optimizations}
            export_s, timing, containers, floor = 0.0, None, set(), [0, 0, 0]
            for i, (calib, inputs) in enumerate(folds):
                log(f"{model_name} {name} fold {i + 1}/{len(folds)}: quantize, export, compare on {len(inputs)}")
                qmodel = quantize(model, _config(name), calib)
                path = Path(folder) / f"{model_name}-{name}-{i}.onnx"
                t0 = time.perf_counter()
                info = export_onnx(qmodel, inputs[:2], path, form=form)
                export_s += time.perf_counter() - t0
                containers |= set(info.containers())
                for o in optimizations:
                    agree[o].append(compare_onnx(qmodel, path, inputs, optimization=o, threads=threads))
                if noise:
                    f64, ones = noise_floor(qmodel, inputs)
                    floor = [floor[0] + f64, floor[1] + ones, floor[2] + len(inputs)]
                if i == 0:
                    session = ort_session(path, threads=threads)
                    ort_run(session, batch[:1])
                    timing = time_three(model, qmodel, session, batch, repeat)
                    size = os.path.getsize(path)
            row = {"model": model_name, "preset": name, "form": form, "containers": sorted(containers),
                   "export_s": export_s,
                   "file_mb": size / 2**20, "batch": len(batch), "threads": threads,
                   **{f"t_{k}_ms": 1e3 * v for k, v in timing.items()},
                   "ort_vs_float": timing["onnxruntime"] / timing["float"],
                   "fake_vs_float": timing["fake-quant"] / timing["float"],
                   "ort_vs_fake": timing["onnxruntime"] / timing["fake-quant"]}
            if noise:
                row["fake32_vs_fake64"] = 100.0 * floor[0] / floor[2]
                row["fake_batch1_vs_batched"] = 100.0 * floor[1] / floor[2]
            for o, parts in agree.items():
                n = sum(p.n for p in parts)
                row[f"{o}_n"] = n
                row[f"{o}_disagree"] = sum(p.disagreements for p in parts)
                row[f"{o}_agreement"] = 100.0 * (n - row[f"{o}_disagree"]) / n
                row[f"{o}_max_logit_diff"] = max(p.max_logit_diff for p in parts)
                row[f"{o}_mean_abs_logit_diff"] = sum(p.mean_abs_logit_diff * p.n for p in parts) / n
            rows.append(row)
            log(json.dumps(row))
    return rows


def print_report(rows, optimizations):
    print("\nONNX Runtime (CPU) vs aciq fake-quant: top-1 agreement, logit differences; speed ratios from one run")
    if rows and "fake32_vs_fake64" in rows[0]:
        print("noise floor, aciq vs itself (top-1 agreement %): " + "; ".join(
            f"{r['model']} {r['preset']}: float64 {r['fake32_vs_fake64']:.2f}, "
            f"batch 1 {r['fake_batch1_vs_batched']:.2f}"
            for r in rows))
    head = f"{'model':<18} {'preset':<16} {'opt':<5} {'n':>6} {'agree %':>8} {'differ':>6} {'max |dz|':>9} " \
           f"{'mean |dz|':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        for o in optimizations:
            print(f"{r['model']:<18} {r['preset']:<16} {o:<5} {r[f'{o}_n']:>6} {r[f'{o}_agreement']:>8.2f} "
                  f"{r[f'{o}_disagree']:>6} {r[f'{o}_max_logit_diff']:>9.4f} {r[f'{o}_mean_abs_logit_diff']:>10.6f}")
    head = f"\n{'model':<18} {'preset':<16} {'batch':>5} {'thr':>3} {'float ms':>9} {'fake ms':>8} {'ORT ms':>8} " \
           f"{'ORT/float':>9} {'fake/float':>10} {'ORT/fake':>8} {'MB':>5} {'export s':>8}  containers"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<18} {r['preset']:<16} {r['batch']:>5} {r['threads']:>3} {r['t_float_ms']:>9.1f} "
              f"{r['t_fake-quant_ms']:>8.1f} {r['t_onnxruntime_ms']:>8.1f} {r['ort_vs_float']:>8.2f}x "
              f"{r['fake_vs_float']:>9.2f}x {r['ort_vs_fake']:>7.2f}x {r['file_mb']:>5.2f} {r['export_s']:>8.1f}  "
              f"{','.join(r['containers'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--presets", nargs="+", default=None,
                        help=f"default: {' '.join(DEFAULT_PRESETS)} and every *-best preset")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N inputs of each fold")
    parser.add_argument("--optimizations", nargs="+", choices=("all", "basic", "disabled"), default=["all"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--form", choices=("qdq", "integer"), default="qdq",
                        help="export form (aciq.quant.export_onnx): standard QDQ, or integer convs then scales")
    parser.add_argument("--keep", help="keep the .onnx files in this folder")
    parser.add_argument("--noise-floor", action="store_true",
                        help="also score aciq against itself in float64 and at batch 1 (see the docstring)")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
    args = parser.parse_args(argv)
    presets = args.presets or list(DEFAULT_PRESETS) + sorted(p for p in PRESETS if p.endswith("-best"))
    for p in presets:
        if p not in PRESETS:
            parser.error(f"--presets: {p!r} is not a preset")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        rows = run(args.models, presets, limit=args.limit, optimizations=args.optimizations,
                   threads=args.threads, repeat=args.repeat, seed=args.seed, folder=folder, noise=args.noise_floor,
                   form=args.form)
    print_report(rows, args.optimizations)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
