"""PTX of every CUDA kernel for sm_80 and sm_90, assembled by ``ptxas -v``: no register spills.

``tests/kernels/_ptx_check.py`` runs in subprocesses (one per architecture, in
parallel; ``compile_ptx`` needs no GPU but must not see the CUDA simulator) and
reports registers, shared memory, stack frame and spills per kernel as JSON.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~1 min: about 65 NVVM compilations + ptxas

SCRIPT = Path(__file__).with_name("_ptx_check.py")
# every specialisation for sm_90 (the benchmark's card); for sm_80 every kernel body
# once (float32 output: the other output kinds differ only in the epilogue store)
RUNS = {"90": [], "80": ["--float-only"]}


@pytest.fixture(scope="module")
def reports():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    procs = {cc: subprocess.Popen([sys.executable, str(SCRIPT), "--cc", cc, *extra], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cc, extra in RUNS.items()}
    out = {}
    for cc, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        try:
            out[cc] = json.loads(stdout)
        except json.JSONDecodeError:
            pytest.fail(f"_ptx_check.py --cc {cc} printed no JSON (rc={proc.returncode}):\n{stderr[-3000:]}")
    return out


def test_every_kernel_compiles_and_assembles(reports):
    for cc, rep in reports.items():
        assert rep["errors"] == [], rep["errors"]
        assert rep["ptxas"], "ptxas not found"
        assert rep["n_variants"] >= (16 if rep["float_only"] else 40)
        assert len(rep["kernels"]) == rep["n_variants"], cc
        assert {k["cc"] for k in rep["kernels"]} == {f"sm_{cc}"}
        kinds = {"tiled32", "tiled64", "tiled128", "gemv1", "gemv2", "gemv4", "splitk"}
        assert {k["name"].split("-")[0] for k in rep["kernels"]} == kinds


def test_no_register_spills(reports):
    for rep in reports.values():
        for k in rep["kernels"]:
            assert k["spill_stores"] == 0 and k["spill_loads"] == 0, k
            assert 0 < k["registers"] <= 255, k
            assert k["stack_bytes"] == 0, k  # per-thread arrays live in registers
            assert k["smem_bytes"] <= 48 * 1024, k


def test_rounding_semantics_in_ptx(reports):
    """IEEE float32 division (no fastmath) and round-to-nearest-even conversion."""
    for rep in reports.values():
        for k in rep["kernels"]:
            assert not k["div_approx"], k
            quantizes = not (k["name"].startswith("splitk") and not k["name"].endswith("codes"))
            if quantizes:  # every kernel that quantizes divides exactly and rounds half to even
                assert k["div_rn_f32"] and k["cvt_rni"], k
