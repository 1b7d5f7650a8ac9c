"""CUDA backend (aciq.kernels.cuda) against the numpy reference.

The kernels run under the CUDA simulator in a separate process: the single test
collected in the normal session, :func:`test_cuda_backend_under_simulator`,
re-runs this file with ``NUMBA_ENABLE_CUDASIM=1`` and ``ACIQ_CUDA_CHILD=1`` set
(the environment variable must be set before ``numba.cuda`` is first imported,
so it cannot be toggled inside the parent session without poisoning the CPU
tests). Every other test runs only in such a child.

On a machine with a GPU, ``ACIQ_CUDA_CHILD=1 ACIQ_CUDA_REAL=1 pytest <this file>``
runs the same tests on the hardware with larger, ResNet-50-like shapes
(``benchmarks/gpu_check.sh`` does this).

Integer mode: int32 accumulators and requantized codes equal the reference bit for
bit. Mixed mode: float32 outputs within ``1e-5`` of the output's max magnitude
(float32 vs the reference's float64 accumulation).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

CHILD = os.environ.get("ACIQ_CUDA_CHILD") == "1"
REAL = CHILD and os.environ.get("ACIQ_CUDA_REAL") == "1"
child_only = pytest.mark.skipif(not CHILD, reason="runs in the simulator subprocess (or on a GPU)")


@pytest.mark.slow  # ~45 s: the simulator runs every GPU thread as a Python thread
def test_cuda_backend_under_simulator():
    """Run every test of this file under NUMBA_ENABLE_CUDASIM=1 in a fresh process."""
    if CHILD:
        pytest.skip("this is the child")
    env = dict(os.environ, ACIQ_CUDA_CHILD="1", NUMBA_ENABLE_CUDASIM="1")
    env.pop("ACIQ_CUDA_REAL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout[-6000:] + "\n" + proc.stderr[-3000:])
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail


# ----------------------------------------------------------- child helpers
def _mods():
    from aciq.kernels import cuda as kc
    from aciq.kernels import reference as ref
    from aciq.kernels import spec
    return kc, ref, spec


def _weights(rng, n, k, bits, packed, zp=True):
    _, _, spec = _mods()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = rng.integers(lo, hi + 1, size=(n, k)).astype(np.int8)
    z = rng.integers(lo, hi + 1, size=n).astype(np.int32) if zp else np.zeros(n, np.int32)
    s = (rng.random(n) * 0.05 + 0.01).astype(np.float32)
    codes = spec.pack_int4(q) if packed else q
    return spec.QuantWeights(codes=codes, scale=s, zero_point=z, bits=bits, k=k, n=n, packed=packed)


def _act(rng, k, bits, signed, per_tensor):
    _, _, spec = _mods()
    bits = np.resize(np.asarray(bits, np.int32), k)
    if per_tensor:
        scale = np.full(k, 0.125, np.float32)
        zp = 0 if signed else 1
    else:
        scale = (rng.random(k) * 0.3 + 0.03).astype(np.float32)
        zp = np.zeros(k, np.int32) if signed else (rng.random(k) < 0.5).astype(np.int32)
    return spec.ActQuant(scale=scale, zero_point=zp, bits=bits, signed=signed)


def _x(rng, m, k, scale=1.0):
    return (rng.standard_normal((m, k)) * scale).astype(np.float32)


if REAL:  # (M, N, K, weight bits, packed): ResNet-50-like shapes and odd ones
    SHAPES = [(1, 1000, 2048, 4, True), (3, 512, 4608, 4, True), (8, 64, 147, 4, True),
              (49, 512, 4608, 4, True), (196, 256, 2304, 8, False), (784, 128, 1152, 4, True),
              (2, 256, 1024, 8, False), (130, 70, 33, 3, True), (1, 300, 13000, 4, True)]
else:  # tiny: gemv (row = whole 32-bit words) and tiled paths, non-tile-multiple sizes
    SHAPES = [(1, 5, 16, 4, True), (3, 33, 24, 8, False), (4, 9, 7, 2, True),
              (2, 3, 10, 8, False), (17, 9, 21, 3, True), (40, 66, 18, 4, True),
              (1, 70, 6400, 4, True)]  # gemv over two K chunks, two row blocks
ACT_CASES = [((4,), False), ((8,), True), ((2, 3, 4, 8), False), ((3,), True)]


# ------------------------------------------------------------------ tests
@child_only
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])) + f"-w{s[3]}{'p' if s[4] else ''}")
def test_integer_accumulators_and_outputs_bit_exact(shape):
    kc, ref, spec = _mods()
    m, n, k, wbits, packed = shape
    rng = np.random.default_rng(m * 1000 + n + k)
    bits, signed = ACT_CASES[(m + n + k) % len(ACT_CASES)]
    w = _weights(rng, n, k, wbits, packed)
    a = _act(rng, k, bits, signed, per_tensor=True)
    x = _x(rng, m, k)
    acc = kc.qgemm_int32(x, w, a)
    assert acc.dtype == np.int32
    np.testing.assert_array_equal(acc, ref.qgemm_int32(x, w, a))
    ep = spec.Epilogue(bias=rng.standard_normal(n).astype(np.float32), relu=True)
    y = kc.qgemm(x, w, a, epilogue=ep, mode="integer")
    np.testing.assert_array_equal(y, ref.qgemm(x, w, a, epilogue=ep, mode="integer"))


@child_only
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:3])) + f"-w{s[3]}{'p' if s[4] else ''}")
def test_mixed_mode_within_tolerance(shape):
    kc, ref, spec = _mods()
    m, n, k, wbits, packed = shape
    rng = np.random.default_rng(7 + m + n * k)
    bits, signed = ACT_CASES[(m + k) % len(ACT_CASES)]
    w = _weights(rng, n, k, wbits, packed)
    a = _act(rng, k, (2, 3, 4, 8) if m % 2 else bits, signed, per_tensor=False)
    x = _x(rng, m, k)
    ep = spec.Epilogue(bias=rng.standard_normal(n).astype(np.float32))
    y = kc.qgemm(x, w, a, epilogue=ep, mode="mixed")
    r = ref.qgemm(x, w, a, epilogue=ep, mode="mixed")
    assert y.dtype == np.float32 and y.shape == (m, n)
    np.testing.assert_allclose(y, r, rtol=0, atol=1e-5 * max(float(np.abs(r).max()), 1e-6))


@child_only
@pytest.mark.parametrize("m", [1, 5])  # gemv and tiled paths
def test_exact_half_ties_round_to_even(m):
    """x / s lands exactly on .5: codes follow rint (half to even), like numpy."""
    kc, ref, spec = _mods()
    k = 16
    s = 0.25  # a power of two: (j + 0.5) * s is exact in float32
    vals = (np.arange(-8, 8) + 0.5) * s  # -7.5 .. 7.5 steps
    x = np.tile(vals.astype(np.float32), (m, 1))
    w = spec.QuantWeights(codes=np.eye(k, dtype=np.int8), scale=1.0, zero_point=0, bits=8,
                          k=k, n=k, packed=False)
    a = spec.ActQuant.per_tensor(s, zero_point=0, bits=8, signed=True, k=k)
    acc = kc.qgemm_int32(x, w, a)
    expect = np.rint(vals / s).astype(np.int32)
    assert {int(v) for v in expect[:3]} == {-8, -6}  # -7.5 -> -8, -6.5 -> -6, -5.5 -> -6
    np.testing.assert_array_equal(acc, np.tile(expect, (m, 1)))
    np.testing.assert_array_equal(acc, ref.qgemm_int32(x, w, a))


@child_only
@pytest.mark.parametrize("mode", ["integer", "mixed"])
@pytest.mark.parametrize("out_signed", [False, True])
def test_requantize_epilogue(mode, out_signed):
    kc, ref, spec = _mods()
    rng = np.random.default_rng(3)
    m, n, k = (2, 12, 24) if not REAL else (64, 300, 1152)
    w = _weights(rng, n, k, 4, True)
    a = _act(rng, k, (4,), False, per_tensor=(mode == "integer"))
    x = np.abs(_x(rng, m, k))
    ep = spec.Epilogue(bias=rng.standard_normal(n).astype(np.float32) * 0.1, relu=not out_signed,
                       out_bits=4, out_scale=0.05, out_zero_point=0 if out_signed else 2,
                       out_signed=out_signed)
    q = kc.qgemm(x, w, a, epilogue=ep, mode=mode)
    r = ref.qgemm(x, w, a, epilogue=ep, mode=mode)
    assert q.dtype == (np.int8 if out_signed else np.uint8) and q.dtype == r.dtype
    if mode == "integer":
        np.testing.assert_array_equal(q, r)
    else:  # float32 vs float64 accumulation may move a value across a rounding boundary
        d = np.abs(q.astype(np.int32) - r.astype(np.int32))
        assert d.max() <= 1 and np.mean(d) < 0.02


@child_only
@pytest.mark.parametrize("mode", ["integer", "mixed"])
def test_split_k_matches_reference(mode):
    """K split over blocks (partials reduced in fixed order) gives the same result."""
    kc, ref, spec = _mods()
    from aciq.kernels import cuda_kernels as kk
    rng = np.random.default_rng(11)
    m, n, k = (5, 9, 70) if not REAL else (49, 512, 4608)
    w = _weights(rng, n, k, 4, True)
    a = _act(rng, k, (4,), True, per_tensor=(mode == "integer"))
    x = _x(rng, m, k)
    plan = kc.CudaQGemm(w, a, mode=mode, split_k=3)
    path, splits, k_split = plan.kernel_for(m)
    assert path in ("tiled32", "tiled64") and splits == 3 and k_split % kk.BK == 0
    r = ref.qgemm(x, w, a, mode=mode)
    if mode == "integer":
        np.testing.assert_array_equal(plan(x, accumulator=True), ref.qgemm_int32(x, w, a))
        np.testing.assert_array_equal(plan(x), r)
    else:
        np.testing.assert_allclose(plan(x), r, rtol=0, atol=1e-5 * float(np.abs(r).max()))
    ep = spec.Epilogue(relu=True, out_bits=8, out_scale=0.5, out_zero_point=0, out_signed=False)
    q = plan(x) if mode == "mixed" else kc.CudaQGemm(w, a, mode=mode, epilogue=ep, split_k=3)(x)
    if mode == "integer":
        np.testing.assert_array_equal(q, ref.qgemm(x, w, a, mode=mode, epilogue=ep))


@child_only
@pytest.mark.parametrize("tile", ["tiled128", "tiled32"])
@pytest.mark.parametrize("mode", ["integer", "mixed"])
def test_big_tiles_match_reference(mode, tile):
    """128 x 128 (8 x 8 outputs per thread) and 32 x 32 (2 x 2) tiles, forced; M, N not tile multiples."""
    kc, ref, spec = _mods()
    rng = np.random.default_rng(12)
    m, n, k = (130, 20, 18) if not REAL else (1000, 300, 576)
    if tile == "tiled32" and not REAL:
        m, n, k = (45, 37, 40)
    w = _weights(rng, n, k, 4, True)
    a = _act(rng, k, (4,), False, per_tensor=(mode == "integer"))
    x = _x(rng, m, k)
    ep = spec.Epilogue(bias=rng.standard_normal(n).astype(np.float32), relu=True)
    plan = kc.CudaQGemm(w, a, mode=mode, epilogue=ep, tile=tile)
    assert plan.kernel_for(m)[0] == tile
    r = ref.qgemm(x, w, a, mode=mode, epilogue=ep)
    if mode == "integer":
        np.testing.assert_array_equal(plan(x), r)
        split = kc.CudaQGemm(w, a, mode=mode, tile=tile, split_k=2)
        np.testing.assert_array_equal(split(x, accumulator=True), ref.qgemm_int32(x, w, a))
        # the plan keeps its split-K scratch: a second call (and another M) reuses / replaces it
        np.testing.assert_array_equal(split(x, accumulator=True), ref.qgemm_int32(x, w, a))
        np.testing.assert_array_equal(split(x[:7], accumulator=True), ref.qgemm_int32(x[:7], w, a))
    else:
        np.testing.assert_allclose(plan(x), r, rtol=0, atol=1e-5 * float(np.abs(r).max()))


@child_only
def test_mixed_bits_clamp_per_channel():
    """Large inputs saturate each channel at its own qmax (2, 3, 4, 8 bits)."""
    kc, ref, spec = _mods()
    k = 8
    bits = np.array([2, 3, 4, 8, 2, 3, 4, 8], np.int32)
    a = spec.ActQuant.per_tensor(1.0, zero_point=0, bits=bits, signed=False, k=k)
    w = spec.QuantWeights(codes=np.eye(k, dtype=np.int8), scale=1.0, zero_point=0, bits=8,
                          k=k, n=k, packed=False)
    x = np.array([[1000.0] * 4 + [-5.0] * 4, [np.inf] * 4 + [np.nan] * 4], np.float32)
    acc = kc.qgemm_int32(x, w, a)
    np.testing.assert_array_equal(acc[0], [3, 7, 15, 255, 0, 0, 0, 0])
    np.testing.assert_array_equal(acc[1], [3, 7, 15, 255, 0, 0, 0, 0])
    np.testing.assert_array_equal(acc, ref.qgemm_int32(x, w, a))


@child_only
def test_device_arrays_in_device_array_out():
    kc, ref, spec = _mods()
    from numba import cuda
    rng = np.random.default_rng(5)
    w = _weights(rng, 6, 16, 4, True)
    a = _act(rng, 16, (4,), True, per_tensor=False)
    x = _x(rng, 2, 16)
    yd = kc.qgemm(cuda.to_device(x), w, a)
    assert hasattr(yd, "copy_to_host") and not isinstance(yd, np.ndarray)
    y = yd.copy_to_host()
    np.testing.assert_allclose(y, kc.qgemm(x, w, a), rtol=0, atol=0)
    out = cuda.device_array((2, 6), np.float32)
    plan = kc.CudaQGemm(w, a)
    assert plan(cuda.to_device(x), out=out) is out
    np.testing.assert_array_equal(out.copy_to_host(), y)
    host_out = np.zeros((2, 6), np.float32)
    assert plan(x, out=host_out) is host_out
    np.testing.assert_array_equal(host_out, y)


@child_only
def test_paths_cover_gemv_and_tiled():
    kc, _, _ = _mods()
    from aciq.kernels import cuda_kernels as kk
    rng = np.random.default_rng(0)
    a = _act(rng, 16, (4,), False, per_tensor=True)
    assert kc.CudaQGemm(_weights(rng, 4, 16, 4, True), a).kernel_for(1)[0] == "gemv"
    assert kc.CudaQGemm(_weights(rng, 4, 16, 4, True), a).kernel_for(kk.GEMV_MAX_M + 1)[0] == "tiled64"
    a7 = _act(rng, 7, (4,), False, per_tensor=True)
    assert kc.CudaQGemm(_weights(rng, 4, 7, 4, True), a7).kernel_for(1)[0] == "gemv"  # 4-byte rows
    a5 = _act(rng, 5, (4,), False, per_tensor=True)
    assert kc.CudaQGemm(_weights(rng, 4, 5, 8, False), a5).kernel_for(1)[0] == "tiled64"  # 5-byte rows
    big = kc.CudaQGemm(_weights(rng, 2000, 16, 4, True), a)
    # 64 x 64 tiles unless forced (measured fastest on an H200); split-K when the tiles do not fill the SMs
    sms = big._sms
    assert sms == (4 if kk.SIM else kc.sm_count())
    for n_sms in (4, 132):
        big._sms = n_sms
        for m in (2000, 100, 5):
            path, splits, _ = big.kernel_for(m)
            assert path == "tiled64", (m, n_sms)
            tiles = math.ceil(2000 / 64) * math.ceil(m / 64)
            assert (splits > 1) == (tiles < n_sms and big.k > kk.BK), (m, n_sms, splits)
    big._sms = sms
    forced = kc.CudaQGemm(_weights(rng, 2000, 16, 4, True), a, tile="tiled32")
    assert forced.kernel_for(100)[0] == "tiled32"


@child_only
def test_bad_input_raises():
    kc, _, spec = _mods()
    rng = np.random.default_rng(1)
    w = _weights(rng, 4, 8, 4, True)
    a = _act(rng, 8, (4,), False, per_tensor=False)
    x = _x(rng, 2, 8)
    with pytest.raises(ValueError, match="float32"):
        kc.qgemm(x.astype(np.float64), w, a)
    with pytest.raises(ValueError, match="contiguous"):
        kc.qgemm(np.asfortranarray(_x(rng, 3, 8)), w, a)
    with pytest.raises(ValueError, match="K"):
        kc.qgemm(_x(rng, 2, 9), w, a)
    with pytest.raises(ValueError, match="mode"):
        kc.qgemm(x, w, a, mode="float")
    with pytest.raises(ValueError, match="integer"):
        kc.qgemm(x, w, a, mode="integer")  # per-channel scales
    with pytest.raises(ValueError, match="out"):
        kc.qgemm(x, w, a, out=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="out"):
        kc.qgemm(x, w, a, out=np.zeros((2, 4), np.float64))
    big = spec.ActQuant.per_tensor(1.0, zero_point=0, bits=8, signed=False, k=70000)
    wb = spec.QuantWeights(codes=np.zeros((1, 70000), np.int8), scale=1.0, zero_point=0, bits=8,
                           k=70000, n=1, packed=False)
    with pytest.raises(ValueError, match="K"):
        kc.CudaQGemm(wb, big, mode="integer")
    with pytest.raises(ValueError, match="split_k"):
        kc.CudaQGemm(w, a, split_k=0)
    with pytest.raises(ValueError, match="tile"):
        kc.CudaQGemm(w, a, tile="huge")


@child_only
def test_api_dispatches_device_arrays_to_cuda():
    api = pytest.importorskip("aciq.kernels.api")
    kc, ref, spec = _mods()
    from numba import cuda
    rng = np.random.default_rng(9)
    w = _weights(rng, 5, 16, 4, True)
    a = _act(rng, 16, (4,), True, per_tensor=True)
    x = _x(rng, 3, 16)
    y = api.qgemm(cuda.to_device(x), w, a, mode="integer")
    y = y.copy_to_host() if hasattr(y, "copy_to_host") else np.asarray(y)
    np.testing.assert_array_equal(y, ref.qgemm(x, w, a, mode="integer"))
