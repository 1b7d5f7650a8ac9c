#!/usr/bin/env bash
# One prepared GPU check of aciq.kernels' CUDA backend (< 12 minutes with the whole-model step). Run from the repo root:
#
#     bash benchmarks/gpu_check.sh
#
# Needs python3 with numba, numba-cuda, numpy, torch, pytest (not our venv, not an install:
# the package is put on the path through a symlink). Writes logs and JSON into "$OUT"
# (default ./gpu_out). Every step is time-limited and the script keeps going when one fails;
# the summary at the end lists each step's exit status.
set -x
set -u
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ROOT="$(pwd)"
PY="${PYTHON:-python3}"
T0=$(date +%s)
declare -A RC

# numba-cuda 0.30.4 registers np.row_stack, which numpy 2.5 removed: where the machine's numpy is newer than
# our pin, install the wheels carried in ./.whl (e.g. numpy==2.4.6 for its Python) into a private folder first.
WHEELS="${ACIQ_WHEELS:-$ROOT/.whl}"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/aciq_site "$WHEELS"/*.whl \
        && export PYTHONPATH="/tmp/aciq_site${PYTHONPATH:+:$PYTHONPATH}"
fi

# put aciq on the path without installing (aciq is a namespace package); quant and theory serve step 5 only
mkdir -p /tmp/aciq_path/aciq
ln -sfn "$ROOT/kernels" /tmp/aciq_path/aciq/kernels
ln -sfn "$ROOT/quant" /tmp/aciq_path/aciq/quant
ln -sfn "$ROOT/theory" /tmp/aciq_path/aciq/theory
export PYTHONPATH="/tmp/aciq_path${PYTHONPATH:+:$PYTHONPATH}"
unset NUMBA_ENABLE_CUDASIM
export PYTHONDONTWRITEBYTECODE=1

# 1. machine and versions
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv 2>&1 | tee -a "$OUT/nvidia-smi.txt"
timeout 60 "$PY" - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import sys, platform
print("python", platform.python_version(), sys.executable)
for m in ("numpy", "scipy", "numba", "numba_cuda", "torch", "pytest", "cuda"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "?"))
    except Exception as e:
        print(m, "import failed:", type(e).__name__, e)
import torch
print("torch.cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
from numba import cuda
cuda.detect()
EOF
RC[versions]=${PIPESTATUS[0]}

# 2. smoke: the backend imports and one tiny op matches the reference
timeout 90 "$PY" - <<'EOF' 2>&1 | tee "$OUT/smoke.txt"
import time, numpy as np
t = time.time()
from aciq.kernels import cuda as kc
from aciq.kernels.spec import ActQuant, quantize_weights
from aciq.kernels import reference as ref
rng = np.random.default_rng(0)
x = rng.standard_normal((3, 40)).astype(np.float32)
w = quantize_weights(rng.standard_normal((24, 40)).astype(np.float32), bits=4)
a = ActQuant.per_tensor(0.1, zero_point=0, bits=4, signed=True, k=40)
acc = kc.qgemm_int32(x, w, a)
ok = np.array_equal(acc, ref.qgemm_int32(x, w, a))
print("smoke int32 accumulators equal:", ok, "in", round(time.time() - t, 1), "s")
raise SystemExit(0 if ok else 1)
EOF
RC[smoke]=${PIPESTATUS[0]}

# 3. kernels on real hardware (no simulator) vs the numpy reference, incl. ResNet-50-like shapes
ACIQ_CUDA_CHILD=1 ACIQ_CUDA_REAL=1 timeout 120 "$PY" -m pytest -q -p no:cacheprovider --noconftest \
    -o addopts="" -W "ignore::DeprecationWarning" --durations=10 -ra \
    --junitxml="$OUT/test_cuda_real.xml" tests/kernels/test_cuda_sim.py 2>&1 | tee "$OUT/test_cuda_real.log"
RC[tests_real_gpu]=${PIPESTATUS[0]}

# 3b. the conv path (device im2col + fused GEMM + scatter) on real hardware vs the reference
timeout 120 "$PY" - <<'EOF' 2>&1 | tee "$OUT/conv_real.txt"
import time, numpy as np
from numba import cuda
from aciq.kernels import ActQuant, Epilogue, qconv2d, quantize_weights
rng = np.random.default_rng(0)
cases = [  # (N, C, H, W, O, kh, kw, stride, padding, dilation, groups, wbits, abits)
    (2, 64, 28, 28, 64, 3, 3, 1, 1, 1, 1, 4, 4),
    (2, 256, 14, 14, 64, 1, 1, 1, 0, 1, 1, 4, 4),
    (1, 3, 64, 64, 16, 7, 7, 2, 3, 1, 1, 8, 8),
    (2, 32, 20, 20, 32, 3, 3, 2, 1, 1, 32, 8, 4),   # depthwise
    (2, 16, 17, 19, 24, 3, 2, (2, 1), 1, (1, 2), 4, 3, 2),
]
bad = 0
for (n, c, h, w_, o, kh, kw, s, p, d, g, wb, ab) in cases:
    x = rng.normal(size=(n, c, h, w_)).astype(np.float32)
    wq = quantize_weights(rng.normal(size=(o, c // g, kh, kw)).astype(np.float32), bits=wb)
    act = ActQuant.per_tensor(0.07, zero_point=0, bits=ab, signed=True, k=c)
    kwargs = dict(stride=s, padding=p, dilation=d, groups=g, kernel_size=(kh, kw))
    for mode in ("integer", "mixed"):
        e = Epilogue(bias=rng.normal(size=o).astype(np.float32), relu=True)
        t = time.time()
        try:
            dev = qconv2d(cuda.to_device(x), wq, act, epilogue=e, mode=mode, backend="cuda", **kwargs)
            got = dev.copy_to_host() if hasattr(dev, "copy_to_host") else np.asarray(dev)
            ref = qconv2d(x, wq, act, epilogue=e, mode=mode, backend="reference", **kwargs)
            err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
            ok = got.shape == ref.shape and (err == 0.0 if mode == "integer" else err <= 1e-5)
        except Exception as exc:
            err, ok = float("nan"), False
            print("EXCEPTION", type(exc).__name__, exc)
        bad += not ok
        print(f"conv {(n, c, h, w_, o, kh, kw, s, p, d, g)} w{wb}a{ab} {mode:7} rel_err={err:.2e} ok={ok} ({time.time() - t:.2f}s)")
print("conv real-GPU checks:", "ALL OK" if bad == 0 else f"{bad} FAILED")
raise SystemExit(1 if bad else 0)
EOF
RC[conv_real_gpu]=${PIPESTATUS[0]}

# 4. benchmark (stops starting new shapes after --budget-s)
timeout 160 "$PY" benchmarks/bench_kernels_gpu.py --json "$OUT/bench_gpu.json" --budget-s 110 2>&1 \
    | tee "$OUT/bench_gpu.log"
RC[bench]=${PIPESTATUS[0]}

# 5. whole models on the kernels (EfficientNet-Lite0 if its package is there, a ResNet-50-shaped net) at
#    batch 1, 8, 64 against fake-quant and float; needs torchvision and scipy besides the above
timeout 420 "$PY" benchmarks/bench_kernels_model.py --device cuda --json "$OUT/bench_model.json" --budget-s 300 \
    2>&1 | tee "$OUT/bench_model.log"
RC[bench_model]=${PIPESTATUS[0]}

set +x
echo
echo "==================== gpu_check summary ($(( $(date +%s) - T0 )) s) ===================="
for k in versions smoke tests_real_gpu conv_real_gpu bench bench_model; do
    printf '%-16s rc=%s\n' "$k" "${RC[$k]:-not run}"
done
echo "--- tests (tail)"; tail -n 15 "$OUT/test_cuda_real.log" 2>/dev/null
echo "--- bench summary"; sed -n '/# summary/,$p' "$OUT/bench_gpu.log" 2>/dev/null | head -n 60
echo "--- whole models"; sed -n '/# summary/,$p' "$OUT/bench_model.log" 2>/dev/null | head -n 30
echo "outputs in $OUT:"; ls -la "$OUT"
exit 0
