"""Compile every CUDA kernel of aciq.kernels.cuda to PTX and assemble it with ``ptxas -v``.

Runs without a GPU (``numba.cuda.compile_ptx`` needs no driver; ``ptxas`` ships in
the pip package ``cuda-toolkit[nvcc]``) and must run in its own process, without
``NUMBA_ENABLE_CUDASIM`` (the simulator has no ``compile_ptx``). Prints one JSON
report on stdout::

    {"ptxas": "...", "ccs": [[8, 0], [9, 0]],
     "kernels": [{"name": "tiled-integer-packed-float", "cc": "sm_90", "registers": 80,
                  "smem_bytes": 8448, "stack_bytes": 0, "spill_stores": 0, "spill_loads": 0,
                  "cvt_rni": true, "div_rn_f32": true, "div_approx": false, ...}, ...],
     "errors": []}

Every specialisation the host code can launch is compiled: the tiled kernel (32, 64 and
128 tiles) for
{integer, mixed} x {int8, packed int4} weights x {float32, uint8 codes, int32
accumulators (integer only), split-K partials}, the split-K reduction for each
output kind, and the small-M kernel for the same at M = 4 and (float32 output) M = 1, 2
(8 rows per warp for M <= 2, 4 above), with the argument types the
host passes. M = 3 differs from M = 4 only in loop bounds.

Usage: ``python tests/kernels/_ptx_check.py [--cc 80 90] [--keep DIR] [--float-only]``
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time


def find_ptxas():
    """ptxas from the venv's nvidia pip packages, else from PATH."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for root in roots:
        for pat in ("nvidia/cu13/bin/ptxas", "nvidia/cu*/bin/ptxas", "nvidia/cuda_nvcc/bin/ptxas",
                    "nvidia/*/bin/ptxas"):
            hits = sorted(glob.glob(os.path.join(root, pat)))
            if hits:
                return hits[0]
    return shutil.which("ptxas")


def variants():
    """(name, kernel dispatcher, argument types) of every launchable specialisation."""
    from numba import types as T

    from aciq.kernels import cuda_kernels as kc

    a1 = lambda dt: T.Array(dt, 1, "C")  # noqa: E731
    a2 = lambda dt: T.Array(dt, 2, "C")  # noqa: E731

    a3 = lambda dt: T.Array(dt, 3, "C")  # noqa: E731
    common = (a1(T.float32), a1(T.int32), a1(T.int32), a1(T.int32), a1(T.int32), a1(T.float32),
              T.int32, a1(T.float32), T.boolean, T.float32, T.int32, T.int32, T.int32)

    def sig(wdt, outdt, tiled):  # tiled kernels take k_split before out
        return (a2(T.float32), a2(wdt)) + common + ((T.int32,) if tiled else ()) + (outdt,)

    def red_sig(integer, outdt):
        return (a3(T.int32 if integer else T.float32), a1(T.float32), a1(T.float32),
                a1(T.float32), T.boolean, T.float32, T.int32, T.int32, T.int32, outdt)

    outs = {kc.OUT_FLOAT: ("float", T.float32), kc.OUT_CODE: ("codes", T.uint8),
            kc.OUT_ACC: ("acc", T.int32)}
    result = []
    for integer in (True, False):
        for packed in (True, False):
            for kind, (kname, odt) in outs.items():
                if kind == kc.OUT_ACC and not integer:
                    continue
                tag = f"{'integer' if integer else 'mixed'}-{'int4' if packed else 'int8'}-{kname}"
                wdt = T.uint8 if packed else T.int8
                for tile in kc.TILE_NAMES:
                    result.append((f"{tile}-{tag}", kc.tiled_kernel(integer, packed, kind, tile),
                                   sig(wdt, a2(odt), True)))
                for m in ((1, 2, kc.GEMV_MAX_M) if kind == kc.OUT_FLOAT else (kc.GEMV_MAX_M,)):
                    result.append((f"gemv{m}-{tag}", kc.gemv_kernel(integer, packed, kind, m),
                                   sig(T.uint32, a2(odt), False)))
            part = T.int32 if integer else T.float32
            for tile in kc.TILE_NAMES:
                result.append((f"{tile}-{'integer' if integer else 'mixed'}-"
                               f"{'int4' if packed else 'int8'}-partial",
                               kc.tiled_kernel(integer, packed, kc.OUT_PARTIAL, tile), sig(wdt, a3(part), True)))
        for kind, (kname, odt) in outs.items():
            if kind == kc.OUT_ACC and not integer:
                continue
            result.append((f"splitk-{'integer' if integer else 'mixed'}-{kname}",
                           kc.splitk_reduce_kernel(integer, kind), red_sig(integer, a2(odt))))
    return result


_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SMEM = re.compile(r"(\d+) bytes smem")
_RE_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(text):
    """Registers, shared memory, stack and spills from ``ptxas -v`` output of one entry."""
    regs = _RE_REGS.search(text)
    smem = _RE_SMEM.search(text)
    stack = _RE_STACK.search(text)
    if regs is None or stack is None:
        raise ValueError(f"cannot parse ptxas output: {text[-500:]}")
    return dict(registers=int(regs.group(1)), smem_bytes=int(smem.group(1)) if smem else 0,
                stack_bytes=int(stack.group(1)), spill_stores=int(stack.group(2)),
                spill_loads=int(stack.group(3)))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cc", nargs="+", default=["80", "90"], help="compute capabilities, e.g. 80 90")
    ap.add_argument("--keep", default=None, help="keep the .ptx files in this folder")
    ap.add_argument("--float-only", action="store_true",
                    help="only the float32-output variants (every kernel body once; faster)")
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print(json.dumps({"errors": ["NUMBA_ENABLE_CUDASIM=1: compile_ptx is unavailable"]}))
        return 2
    from numba import cuda

    ccs = [(int(c[:-1]), int(c[-1])) for c in args.cc]
    ptxas = find_ptxas()
    report = dict(ptxas=ptxas, ccs=ccs, kernels=[], errors=[])
    if ptxas is None:
        report["errors"].append("ptxas not found (pip package cuda-toolkit[nvcc])")
    workdir = args.keep or tempfile.mkdtemp(prefix="aciq_ptx_")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    todo = [v for v in variants() if not args.float_only or v[0].endswith("-float")]
    for name, kern, argtypes in todo:
        for cc in ccs:
            arch = f"sm_{cc[0]}{cc[1]}"
            entry = dict(name=name, cc=arch)
            try:
                ptx, _ = cuda.compile_ptx(kern.py_func, argtypes, cc=cc)
            except Exception as exc:  # report, keep going
                report["errors"].append(f"{name} {arch}: compile_ptx: {type(exc).__name__}: {exc}")
                continue
            entry.update(cvt_rni="cvt.rni" in ptx, div_rn_f32="div.rn.f32" in ptx,
                         div_approx=("div.approx" in ptx or "div.full" in ptx),
                         local_ld_st=ptx.count("ld.local") + ptx.count("st.local"))
            path = os.path.join(workdir, f"{name}.{arch}.ptx")
            with open(path, "w") as fh:
                fh.write(ptx)
            if ptxas is not None:
                proc = subprocess.run([ptxas, "-v", f"-arch={arch}", path, "-o", os.devnull],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    report["errors"].append(f"{name} {arch}: ptxas: {proc.stderr.strip()[-800:]}")
                    continue
                try:
                    entry.update(parse_ptxas(proc.stderr + proc.stdout))
                except ValueError as exc:
                    report["errors"].append(f"{name} {arch}: {exc}")
                    continue
            report["kernels"].append(entry)
    report["seconds"] = round(time.time() - t0, 1)
    report["n_variants"] = len(todo)
    report["float_only"] = bool(args.float_only)
    if args.keep is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0 if not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
