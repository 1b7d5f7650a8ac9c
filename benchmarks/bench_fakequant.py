"""Fake-quantized evaluation time on CPU: quantized/float forward time, and where the overhead goes.

A quantized model (:func:`aciq.quant.quantize`, ``backend="fake"``) runs each layer whose input is quantized
on the integer codes (:class:`aciq.quant.modules.QuantizedLayer`: the codes of the input, the torch conv of
codes and integer weights, exact in float32 while the sums stay below 2^24, else in float64 (per-channel
activation grids of a dense layer, on one dyadic unit), then one multiply and one add); the seed's output-site
layers run the float conv in float64 and a :class:`aciq.quant.fake.FakeQuant` on each output. The aim is at
most 1.5x the float model.

Models and batches: torchvision resnet18 (``weights=None``) at 224x224, batch 8; the Fashion-MNIST ResNet-20
(committed weights, else a random init) at 28x28, batch 256; EfficientNet-Lite0 (:mod:`aciq.quant.zoo`) at
224x224, batch 8, if installed. Presets: ``w4a4-naive`` (activations per channel, at the input of every
conv/linear), ``w4a4-pt-aciq`` and ``w4a4-best`` (per tensor), ``seed-w4a4-all`` (the seed's: outputs of every conv/linear
and pooling, per channel, with bit allocation). Each is calibrated once on a few images (with one thread);
the timed input is a fixed random batch. For each ``torch.set_num_threads`` value the float model, the float
model with its BatchNorm folded (``folded``: the quantized models have BN folded, which alone saves time)
and every quantized model run interleaved (the order rotates each round), ``--repeat`` rounds, after one
warm-up; the ratio is median(quantized) / median(float) (``(min)``: the ratio of the fastest rounds, less
sensitive to other processes on a shared machine). ``Mact``: activation values fake-quantized per forward.

``--variants`` also times, for each quantized model, its ``FakeQuant`` modules with their forward
replaced by (the module code in :mod:`aciq.quant.fake` is not touched):

* ``noop``: identity, so ``t_q - t_noop`` is the cost of fake quantization and ``t_noop - t_folded`` that
  of the wrapper modules;
* ``inplace``: the same 7 ops, one allocation (``div``, then ``round_``, ``add_``, ``clamp_``,
  ``minimum(out=)``, ``sub_``, ``mul_``); the logits must equal the reference bit for bit;
* ``short``: 4 passes, one allocation, ``clamp(round(x / s), -z, qmax - z) * s`` (equal values, see
  :func:`_forward_short`);
* ``fused``: ``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine`` where a
  site has one bit-width for all channels and no 0-bit channel (else the module's own forward). These ops
  compute ``round(x * (1/s))`` with ``1/s`` rounded to float32, not ``round(x / s)``: the element check
  printed first counts the disagreements with ``FakeQuant`` (random values and exact ties ``(k+1/2) s``).

It also prints ns per element of each forward on one 8x64x56x56 tensor. What it shows on glibc Linux: a
fresh multi-MB result is page-faulted in on every op (glibc hands large freed blocks back to the kernel),
so FakeQuant's 6 temporaries cost far more than its arithmetic; ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` in the environment, or one allocation per forward, remove most of it.

Usage: ``python benchmarks/bench_fakequant.py [--quick] [--repeat 5] [--threads 1 2] [--models ...]
[--variants] [--json OUT]``. Timings never gate CI.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics as stat
import time
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from aciq.quant import preset, quantize
from aciq.quant.fake import FakeQuant, grid_params
from aciq.quant.fold import fold_batchnorm

PRESETS = ("w4a4-naive", "w4a4-pt-aciq", "w4a4-best", "seed-w4a4-all")
MODELS = ("resnet18", "resnet20_fmnist", "efficientnet_lite0")
VARIANTS = ("noop", "inplace", "short", "fused")


# --------------------------------------------------------------------------- alternative FakeQuant forwards
def _views(fq: FakeQuant, x: torch.Tensor):
    return tuple(fq._view(t, x) for t in (fq.scale, fq.zero_point, fq.qmax))


def _forward_noop(self, x):
    return x


def _forward_inplace(self, x):
    """Exactly FakeQuant.forward's ops and order, with one allocation."""
    scale, zp, qmax = _views(self, x)
    q = torch.div(x, scale)
    q.round_()
    q.add_(zp)
    q.clamp_(min=0.0)
    torch.minimum(q, qmax, out=q)
    q.sub_(zp)
    q.mul_(scale)
    if self.has_dead:
        q = torch.where(self._view(self.dead, x), self._view(self.fill, x), q)
    return q


def _forward_short(self, x):
    """One allocation, ``clamp(round(x / s), -z, qmax - z) * s``: 4 passes per tensor, 5 per channel.

    Equal to FakeQuant.forward: ``round(x/s)`` is an integer-valued float, so adding and later subtracting
    the integer ``z`` is exact wherever the clamp does not bind (|x/s| < 2^24), and where it binds both give
    the same bound. The only difference is the sign of a zero (-0.0 for small negative x with z = 0).
    Per tensor the bounds are Python numbers (a scalar clamp); per channel ``maximum``/``minimum`` with
    ``out=`` (a clamp with tensor bounds is slower).
    """
    scale, zp, qmax = _views(self, x)
    q = torch.div(x, scale)
    q.round_()
    if self.scale.ndim == 0:
        q.clamp_(self._lo, self._hi)
    else:
        lo, hi = self._view(self._lo, x), self._view(self._hi, x)
        torch.maximum(q, lo, out=q)
        torch.minimum(q, hi, out=q)
    q.mul_(scale)
    if self.has_dead:
        q = torch.where(self._view(self.dead, x), self._view(self.fill, x), q)
    return q


def _fusable(fq: FakeQuant) -> bool:
    return not fq.has_dead and int(np.unique(fq.grid.bits).size) == 1


def _forward_fused(self, x):
    if self.axis is None or self.scale.ndim == 0:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self._zp_int, 0, self._qmax_int)
    return torch.fake_quantize_per_channel_affine(x, self.scale, self._zp_int, self.axis, 0, self._qmax_int)


@contextmanager
def patched(model: torch.nn.Module, variant: str | None):
    """Within the block, every FakeQuant of ``model`` runs ``variant``'s forward; yields (patched, total)."""
    mods = [m for m in model.modules() if isinstance(m, FakeQuant)]
    done = []
    try:
        for m in mods:
            if variant is None:
                continue
            if variant == "fused":
                if not _fusable(m):
                    continue
                m._zp_int = m.zero_point.to(torch.int32).reshape(m.scale.shape)
                m._qmax_int = int(np.max(m.grid.qmax))
            if variant == "short":
                lo, hi = -m.zero_point, m.qmax - m.zero_point
                m._lo, m._hi = (float(lo), float(hi)) if m.scale.ndim == 0 else (lo, hi)
            fn = {"noop": _forward_noop, "inplace": _forward_inplace, "short": _forward_short,
                  "fused": _forward_fused}[variant]
            m.forward = types.MethodType(fn, m)
            done.append(m)
        yield len(done), len(mods)
    finally:
        for m in done:
            del m.forward


def element_check(n: int = 1_000_000, grids: int = 20, seed: int = 0) -> dict:
    """Disagreements of the fused torch ops with FakeQuant per element, and their rounding of ties."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = {"values": 0, "random_mismatch": 0, "ties": 0, "tie_mismatch": 0, "emulation_mismatch": 0,
           "inplace_mismatch": 0, "short_mismatch": 0}
    for _ in range(grids):
        bits = int(rng.integers(2, 9))
        g = grid_params(-rng.uniform(0, 3), rng.uniform(0.1, 5), bits)
        fq = FakeQuant(g)
        zp, qmax = int(g.zero_point), int(g.qmax)
        x = torch.randn(n // grids, generator=gen) * 2.0
        k = torch.randint(-2 ** bits, 2 ** bits, (n // grids,), generator=gen).float()
        ties = (k + 0.5) * fq.scale
        for data, key in ((x, "random_mismatch"), (ties, "tie_mismatch")):
            ref = fq(data)
            fused = torch.fake_quantize_per_tensor_affine(data, fq.scale, fq.zero_point.to(torch.int32), 0, qmax)
            out[key] += int((ref != fused).sum())
            emul = (torch.clamp(torch.round(data * (1.0 / fq.scale)) + zp, 0, qmax) - zp) * fq.scale
            out["emulation_mismatch"] += int((emul != fused).sum())
            for variant in ("inplace", "short"):
                with patched(torch.nn.Sequential(fq), variant):
                    out[f"{variant}_mismatch"] += int((fq(data) != ref).sum())
        out["values"] += x.numel()
        out["ties"] += ties.numel()
    t = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])
    fused = torch.fake_quantize_per_tensor_affine(t, 1.0, 8, 0, 15)
    out["half_to_even"] = bool(torch.equal(fused, torch.round(t)))
    return out


@torch.no_grad()
def micro(shape=(8, 64, 56, 56), rounds: int = 30, seed: int = 0) -> dict:
    """ns per element of each FakeQuant forward on one activation tensor (min over interleaved rounds)."""
    rng = np.random.default_rng(seed)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    c = shape[1]
    grids = {"per-tensor": grid_params(-1.3, 2.1, 4),
             "per-channel": grid_params(-rng.uniform(0, 3, c), rng.uniform(0.1, 5, c), 4, axis=1)}
    out = {}
    for gran, g in grids.items():
        fq = FakeQuant(g)
        best = {}
        for _ in range(rounds):
            for variant in (None, "relu") + VARIANTS[1:]:
                if variant == "relu":
                    start = time.perf_counter()
                    torch.relu(x)
                else:
                    with patched(torch.nn.Sequential(fq), variant):
                        start = time.perf_counter()
                        fq(x)
                elapsed = time.perf_counter() - start
                key = variant or "FakeQuant"
                best[key] = min(best.get(key, np.inf), elapsed)
        out[gran] = {k: 1e9 * v / x.numel() for k, v in best.items()}
    return out


# --------------------------------------------------------------------------- models
def load_case(name: str, seed: int) -> dict | None:
    gen = torch.Generator().manual_seed(seed)
    note = ""
    if name == "resnet18":
        import torchvision

        torch.manual_seed(seed)
        model, batch, shape, note = torchvision.models.resnet18(weights=None).eval(), 8, (3, 224, 224), "random init"
    elif name == "efficientnet_lite0":
        try:
            from aciq.quant.zoo import load_model

            model = load_model("efficientnet_lite0")
        except (ImportError, ValueError, FileNotFoundError) as exc:
            print(f"skip efficientnet_lite0: {exc}")
            return None
        batch, shape = 8, (3, 224, 224)
    else:
        from aciq.quant.resnet20 import load_resnet20_fmnist, resnet20

        try:
            model = load_resnet20_fmnist()
        except (FileNotFoundError, ValueError):
            torch.manual_seed(seed)
            model, note = resnet20().eval(), "random init (no trained weights)"
        batch, shape = 256, (1, 28, 28)
    calib = _calibration(name, shape, gen)
    return {"name": name, "model": model, "batch": batch, "note": note, "calib": calib,
            "x": torch.randn(batch, *shape, generator=gen)}


def _calibration(name, shape, gen):
    try:
        if name == "resnet20_fmnist":
            from aciq.quant import fashion_mnist

            images, _ = fashion_mnist.load("train")
            return fashion_mnist.to_tensor(images[:64])
        from aciq.quant.photos import load_photos, photo_batch

        return photo_batch(load_photos()[:2], model_name="efficientnet_lite0" if name != "resnet18" else name)[0]
    except (ImportError, ValueError, OSError):
        return torch.randn(64 if shape[0] == 1 else 2, *shape, generator=gen)


@torch.no_grad()
def act_elements(qmodel, x) -> int:
    """Elements fake-quantized in one forward of ``x``."""
    count = [0]
    handles = [m.register_forward_hook(lambda m, a, o: count.__setitem__(0, count[0] + o.numel()))
               for m in qmodel.modules() if isinstance(m, FakeQuant)]
    try:
        qmodel(x)
    finally:
        for h in handles:
            h.remove()
    return count[0]


# --------------------------------------------------------------------------- timing
@torch.no_grad()
def time_entries(entries: list, x: torch.Tensor, repeat: int) -> dict:
    """entries: (key, model, variant); interleaved rounds, rotating order, one warm-up each."""
    times = {key: [] for key, _, _ in entries}
    for r in range(-1, repeat):
        shift = max(r, 0) % len(entries)
        for key, model, variant in entries[shift:] + entries[:shift]:
            with patched(model, variant):
                start = time.perf_counter()
                model(x)
                elapsed = time.perf_counter() - start
            if r >= 0:
                times[key].append(elapsed)
    return times


@torch.no_grad()
def check_variants(qmodel, x) -> dict:
    ref = qmodel(x)
    out = {}
    for variant in ("inplace", "short", "fused"):
        with patched(qmodel, variant) as (n_patched, n_total):
            y = qmodel(x)
        out[variant] = {"patched": n_patched, "of": n_total, "bit_exact": bool(torch.equal(y, ref)),
                        "max_abs_logit_diff": float((y - ref).abs().max()),
                        "top1_changed": int((y.argmax(1) != ref.argmax(1)).sum())}
    return out


def run(*, models=MODELS, threads=(1, 2), repeat=5, variants=False, seed=0, log=print) -> dict:
    report = {"repeat": repeat, "threads": list(threads), "torch": torch.__version__, "rows": [], "checks": {}}
    if variants:
        report["element_check"] = element_check(seed=seed)
        report["micro"] = {}
        for t in threads:
            torch.set_num_threads(t)
            report["micro"][t] = micro(seed=seed)
    for name in models:
        case = load_case(name, seed)
        if case is None:
            continue
        log(f"calibrating {name} ({case['calib'].shape[0]} images) ...")
        torch.set_num_threads(1)   # calibration is many small ops: 2 threads on a busy machine are 10x slower
        qmodels = {p: quantize(case["model"], preset(p), case["calib"]) for p in PRESETS}
        elements = {p: act_elements(q, case["x"]) for p, q in qmodels.items()}
        if variants:
            report["checks"][name] = {p: check_variants(q, case["x"]) for p, q in qmodels.items()}
        folded = copy.deepcopy(case["model"])
        fold_batchnorm(folded, case["x"][:1])
        entries = [("float", case["model"], None), ("float-folded", folded, None)]
        entries += [(p, q, None) for p, q in qmodels.items()]
        if variants:
            entries += [(f"{p}/{v}", q, v) for p, q in qmodels.items() for v in VARIANTS]
        for t in threads:
            torch.set_num_threads(t)
            log(f"timing {name}, batch {case['batch']}, {t} thread(s) ...")
            times = time_entries(entries, case["x"], repeat)
            t_float = stat.median(times["float"])
            t_folded = stat.median(times["float-folded"])
            for p in PRESETS:
                row = {"model": name, "batch": case["batch"], "threads": t, "preset": p, "note": case["note"],
                       "t_float_ms": 1e3 * t_float, "t_folded_ms": 1e3 * t_folded,
                       "t_quant_ms": 1e3 * stat.median(times[p]), "act_elements": elements[p],
                       "times_s": {k: v for k, v in times.items()
                                   if k in ("float", "float-folded", p) or k.startswith(p + "/")}}
                row["ratio"] = row["t_quant_ms"] / row["t_float_ms"]
                row["ratio_min"] = min(times[p]) / min(times["float"])
                if variants:
                    for v in VARIANTS:
                        row[f"t_{v}_ms"] = 1e3 * stat.median(times[f"{p}/{v}"])
                        row[f"ratio_{v}"] = row[f"t_{v}_ms"] / row["t_float_ms"]
                report["rows"].append(row)
    return report


# --------------------------------------------------------------------------- report
def print_report(report: dict) -> None:
    variants = "t_noop_ms" in (report["rows"][0] if report["rows"] else {})
    if "element_check" in report:
        e = report["element_check"]
        print(f"\nfused torch.fake_quantize_per_tensor_affine vs FakeQuant: {e['random_mismatch']} of "
              f"{e['values']:,} random values differ, {e['tie_mismatch']} of {e['ties']:,} exact ties (k+1/2)s; "
              f"round(x * fl(1/s)) reproduces the fused op in all but {e['emulation_mismatch']}; "
              f"ties round half to even: {e['half_to_even']}; inplace / short differ from FakeQuant on "
              f"{e['inplace_mismatch']} / {e['short_mismatch']} of these values")
    for t, m in report.get("micro", {}).items():
        for gran, ns in m.items():
            print(f"one 8x64x56x56 tensor, {gran}, {t} thread(s), ns/element (min of 30): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in ns.items()))
    print(f"\nfake-quantized / float forward time on CPU, median of {report['repeat']} interleaved rounds, "
          f"torch {report['torch']}")
    head = (f"{'model':<18} {'batch':>5} {'thr':>3} {'preset':<14} {'Mact':>6} {'float ms':>9} {'folded':>7} "
            f"{'quant ms':>9} {'ratio':>6} {'(min)':>6}")
    if variants:
        head += f" | {'noop':>6} {'inplace':>7} {'short':>6} {'fused':>6}  (ratio to float)"
    print(head)
    print("-" * len(head))
    for r in report["rows"]:
        line = (f"{r['model']:<18} {r['batch']:>5} {r['threads']:>3} {r['preset']:<14} "
                f"{r['act_elements'] / 1e6:>6.2f} {r['t_float_ms']:>9.1f} {r['t_folded_ms']:>7.1f} "
                f"{r['t_quant_ms']:>9.1f} {r['ratio']:>5.2f}x {r['ratio_min']:>5.2f}x")
        if variants:
            line += (f" | {r['ratio_noop']:>5.2f}x {r['ratio_inplace']:>6.2f}x {r['ratio_short']:>5.2f}x "
                     f"{r['ratio_fused']:>5.2f}x")
        print(line)
    for model, note in {r["model"]: r["note"] for r in report["rows"] if r["note"]}.items():
        print(f"note: {model}: {note}")
    over = [r for r in report["rows"] if r["ratio"] > 1.5]
    print(f"aim (<= 1.5x): met in {len(report['rows']) - len(over)} of {len(report['rows'])} rows")
    for model, checks in report["checks"].items():
        for p, c in checks.items():
            i, sh, f = c["inplace"], c["short"], c["fused"]
            print(f"check {model} {p}: logits equal: inplace {i['bit_exact']}, short {sh['bit_exact']}; "
                  f"fused on {f['patched']}/{f['of']} "
                  f"sites, bit-exact {f['bit_exact']}, max |dlogit| {f['max_abs_logit_diff']:.2e}, "
                  f"top-1 changed {f['top1_changed']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 only, 3 rounds")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 5, --quick 3)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--variants", action="store_true",
                        help="also time FakeQuant replaced by noop / in-place / fused torch ops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    args = parser.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    models = args.models or (("resnet20_fmnist",) if args.quick else MODELS)
    if repeat < 1 or min(args.threads) < 1:
        parser.error("--repeat and --threads must be >= 1")
    report = run(models=models, threads=args.threads, repeat=repeat, variants=args.variants, seed=args.seed)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
