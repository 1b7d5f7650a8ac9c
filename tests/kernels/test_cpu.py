"""Numba CPU backend == the numpy reference (bit-exact in integer mode, tolerance in mixed).

Shapes are small but cross tile boundaries of the CPU kernel (M-tiles, 64- and 256-wide
K-blocks, 8-row x 4-k microkernel remainders); both conv orientations and the threaded
drivers are checked too.
"""
from __future__ import annotations

import numpy as np
import pytest

from aciq.kernels import cpu
from aciq.kernels import reference as ref
from aciq.kernels.spec import ActQuant, Epilogue, quantize_weights

SHAPES = [(1, 7, 3), (5, 33, 70), (67, 300, 130), (130, 520, 5)]
MIXED_RTOL = 1e-5  # relative to the output's max |y|


def _close(y, want):
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(y, want, rtol=0, atol=MIXED_RTOL * scale)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("abits,wbits,signed", [
    (8, 8, False), (8, 4, True), (4, 3, False), (2, 2, True), (3, 8, True), (1, 1, False),
    ((2, 3, 4, 8), 4, False), ((2, 8), 8, True),
])
def test_integer_accumulators_bit_exact(rng, ops, m, k, n, abits, wbits, signed):
    act = ops.act(rng, k, bits=abits, signed=signed, per_channel=False)
    w = ops.weights(rng, n, k, bits=wbits, zero_point=True)
    x = ops.x(rng, m, k, act)
    got = cpu.qgemm_int32(x, w, act)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref.qgemm_int32(x, w, act))


@pytest.mark.parametrize("m,k,n", SHAPES[1:3])
@pytest.mark.parametrize("packed", [False, True])
def test_integer_outputs_and_codes_bit_exact(rng, ops, m, k, n, packed):
    act = ops.act(rng, k, bits=(4, 8), signed=True, per_channel=False)
    w = ops.weights(rng, n, k, bits=4, packed=packed, zero_point=True)
    x = ops.x(rng, m, k, act)
    bias = rng.normal(size=n).astype(np.float32)
    for e in [None, Epilogue(bias=bias), Epilogue(bias=bias, relu=True),
              Epilogue(bias=bias, relu=True, out_bits=4, out_scale=0.2, out_zero_point=2),
              Epilogue(bias=bias, out_bits=8, out_scale=0.05, out_zero_point=-3, out_signed=True),
              Epilogue(out_bits=3, out_scale=0.3, out_signed=True)]:
        want = ref.qgemm(x, w, act, epilogue=e, mode="integer")
        got = cpu.qgemm(x, w, act, epilogue=e, mode="integer")
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("abits,wbits,signed", [
    (8, 8, False), (4, 4, True), ((2, 3, 4, 8), 3, False), ((2, 8), 2, True), (1, 8, True),
])
def test_mixed_mode_within_tolerance(rng, ops, m, k, n, abits, wbits, signed):
    act = ops.act(rng, k, bits=abits, signed=signed, per_channel=True)
    w = ops.weights(rng, n, k, bits=wbits, zero_point=True)
    x = ops.x(rng, m, k, act)
    bias = rng.normal(size=n).astype(np.float32)
    e = Epilogue(bias=bias, relu=True)
    got = cpu.qgemm(x, w, act, epilogue=e, mode="mixed")
    assert got.dtype == np.float32
    _close(got, ref.qgemm(x, w, act, epilogue=e, mode="mixed"))


def test_mixed_requantized_codes_within_one(rng, ops):
    act = ops.act(rng, 300, bits=(2, 4, 8), signed=False, per_channel=True)
    w = ops.weights(rng, 70, 300, bits=4)
    x = ops.x(rng, 67, 300, act)
    e = Epilogue(relu=True, out_bits=8, out_scale=0.01)
    got = cpu.qgemm(x, w, act, epilogue=e).astype(int)
    want = ref.qgemm(x, w, act, epilogue=e).astype(int)
    assert np.abs(got - want).max() <= 1
    assert np.mean(got == want) > 0.99


@pytest.mark.parametrize("signed", [False, True])
def test_exact_ties_and_special_values(signed):
    """x = (k + 0.5) * scale with a power-of-two scale: half to even, identical codes."""
    k = 24
    act = ActQuant.per_tensor(0.125, zero_point=0, bits=8, signed=signed, k=k)
    ties = ((np.arange(-12, 12, dtype=np.float32) + np.float32(0.5)) * np.float32(0.125))
    x = np.stack([ties, ties[::-1], np.float32([np.nan, np.inf, -np.inf, 1e30] + [0.0625] * 20)])
    x = np.ascontiguousarray(x.astype(np.float32))
    eye = np.eye(k, dtype=np.float32)
    w = quantize_weights(eye, bits=8)  # identity codes 127, scale 1/127: acc = code of x
    acc = cpu.qgemm_int32(x, w, act)
    np.testing.assert_array_equal(acc, ref.qgemm_int32(x, w, act))
    codes = ref.quantize_activations(x, act)
    np.testing.assert_array_equal(acc, codes * 127)
    assert (codes[0] % 2 == 0).all() or not signed  # ties went to even codes


def test_large_k_int_chunking_exact(rng, ops):
    """K spans several float32 K-blocks: partial sums are flushed to int32 exactly."""
    act = ActQuant.per_tensor(0.01, zero_point=0, bits=8, signed=False, k=1100)
    w = ops.weights(rng, 9, 1100, bits=8)
    w = quantize_weights(np.where(rng.random((9, 1100)) < 0.5, 1.0, -1.0), bits=8)
    x = np.full((5, 1100), 10.0, np.float32)  # every code 255: the worst case magnitude
    got = cpu.qgemm_int32(x, w, act)
    np.testing.assert_array_equal(got, ref.qgemm_int32(x, w, act))


def test_plan_reuse_and_out(rng, ops):
    act = ops.act(rng, 40, bits=8, signed=True, per_channel=False)
    w = ops.weights(rng, 10, 40, bits=8)
    plan = cpu.CpuQGemm(w, act, mode="integer")
    for m in (1, 3, 65):
        x = ops.x(rng, m, 40, act)
        out = np.empty((m, 10), np.float32)
        assert plan(x, out=out) is out
        np.testing.assert_array_equal(out, ref.qgemm(x, w, act, mode="integer"))
    with pytest.raises(ValueError, match="out"):
        plan(x, out=np.empty((m, 10), np.float64))
    with pytest.raises(ValueError, match="mode"):
        cpu.CpuQGemm(w, act, mode="mixed")(x, accumulator=True)


def test_cpu_rejects_bad_input(rng, ops):
    act = ops.act(rng, 8, bits=8, signed=True, per_channel=True)
    w = ops.weights(rng, 4, 8, bits=4)
    x = ops.x(rng, 3, 8, act)
    with pytest.raises(ValueError, match="x"):
        cpu.qgemm(x.astype(np.float64), w, act)
    with pytest.raises(ValueError, match="x"):
        cpu.qgemm(np.asfortranarray(np.ones((3, 8), np.float32)), w, act)
    with pytest.raises(ValueError, match="K="):
        cpu.qgemm(x[:, :7].copy(), w, act)
    with pytest.raises(ValueError, match="integer"):
        cpu.qgemm(x, w, act, mode="integer")
    with pytest.raises(ValueError, match="mode"):
        cpu.qgemm(x, w, act, mode="int8")
    with pytest.raises(ValueError, match="weights"):
        cpu.CpuQGemm(w.codes, act)
    with pytest.raises(ValueError, match="groups"):
        cpu.CpuQGemm(w, act, groups=3, kernel_size=(1, 1))


# ------------------------------------------------- conv orientations and threads
# (batch, C, H, W, O, kh, kw, stride, padding, dilation, groups)
CONV_GEOMS = [
    (2, 5, 9, 11, 6, 3, 3, 1, 1, 1, 1),      # pixel tiles span images
    (3, 4, 12, 12, 5, 1, 1, 1, 0, 1, 1),     # 1x1 direct path (Q used in place)
    (2, 3, 17, 15, 9, 7, 7, 2, 3, 1, 1),     # conv1-like, strided gather
    (1, 6, 10, 10, 6, 3, 3, 1, 2, 2, 3),     # dilation + groups
    (2, 4, 8, 8, 4, 3, 3, 2, 1, 1, 4),       # depthwise, stride 2
    (1, 300, 6, 6, 20, 1, 3, 1, (0, 1), 1, 1),  # K > one K-block, rectangular kernel
    (2, 5, 14, 40, 6, 3, 3, 1, 1, 1, 1),     # stride 1, wide: shifted GEMMs, tiles split rows
    (1, 6, 9, 36, 6, 3, 3, 1, (1, 2), 2, 3),  # shifted GEMMs with dilation and groups
    (1, 270, 5, 34, 3, 3, 1, 1, (1, 0), 1, 1),  # shifted GEMMs, C > one K-block
]


def _conv_case(rng, ops, geom, *, per_channel, abits=(4, 8)):
    nb, c, h, wd, o, kh, kw, s, p, d, g = geom
    act = ops.act(rng, c, bits=abits, signed=False, per_channel=per_channel)
    w = ops.weights(rng, o, (c // g) * kh * kw, bits=4, zero_point=True)
    x = ops.x(rng, nb * h * wd, c, act).reshape(nb, h, wd, c).transpose(0, 3, 1, 2)
    kw_ = dict(stride=s, padding=p, dilation=d, groups=g, kernel_size=(kh, kw))
    return np.ascontiguousarray(x), w, act, kw_


def _plan_conv(plan, x, kw_, orientation, **extra):
    from aciq.kernels.conv import pair
    return plan.conv2d(x, stride=pair(kw_["stride"], "s", low=1),
                       padding=pair(kw_["padding"], "p", low=0),
                       dilation=pair(kw_["dilation"], "d", low=1), orientation=orientation, **extra)


@pytest.mark.parametrize("threads,serial_flop", [(1, None), (2, 0)])
@pytest.mark.parametrize("geom", CONV_GEOMS)
def test_conv_orientations_integer_exact(rng, ops, monkeypatch, geom, threads, serial_flop):
    """Both conv orientations, serial and threaded drivers == the reference bit for bit."""
    import numba

    from aciq.kernels import qconv2d
    if serial_flop is not None:
        monkeypatch.setattr(cpu, "SERIAL_FLOP", serial_flop)  # force the parallel drivers
    x, w, act, kw_ = _conv_case(rng, ops, geom, per_channel=False)
    e = Epilogue(bias=rng.normal(size=w.n).astype(np.float32), relu=True, out_bits=8,
                 out_scale=0.3, out_zero_point=-5, out_signed=True)
    want_acc = qconv2d(x, w, act, mode="integer", accumulator=True, backend="reference", **kw_)
    want_q = qconv2d(x, w, act, mode="integer", epilogue=e, backend="reference", **kw_)
    old = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        plan = cpu.CpuQGemm(w, act, epilogue=e, mode="integer", groups=kw_["groups"],
                            kernel_size=kw_["kernel_size"])
        for orient in ("pixels", "channels"):
            np.testing.assert_array_equal(_plan_conv(plan, x, kw_, orient, accumulator=True),
                                          want_acc)
            np.testing.assert_array_equal(_plan_conv(plan, x, kw_, orient), want_q)
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("geom", CONV_GEOMS[::2])
def test_conv_orientations_mixed_close(rng, ops, monkeypatch, geom):
    from aciq.kernels import qconv2d
    monkeypatch.setattr(cpu, "SERIAL_FLOP", 0)
    x, w, act, kw_ = _conv_case(rng, ops, geom, per_channel=True, abits=(2, 3, 8))
    e = Epilogue(bias=rng.normal(size=w.n).astype(np.float32))
    want = qconv2d(x, w, act, mode="mixed", epilogue=e, backend="reference", **kw_)
    plan = cpu.CpuQGemm(w, act, epilogue=e, mode="mixed", groups=kw_["groups"],
                        kernel_size=kw_["kernel_size"])
    for orient in ("pixels", "channels"):
        _close(_plan_conv(plan, x, kw_, orient), want)
    with pytest.raises(ValueError, match="orientation"):
        _plan_conv(plan, x, kw_, "rows")


def test_linear_threaded_driver_exact(rng, ops, monkeypatch):
    """The parallel channels driver (tasks split along M and N) == the reference."""
    monkeypatch.setattr(cpu, "SERIAL_FLOP", 0)
    act = ops.act(rng, 300, bits=(2, 8), signed=True, per_channel=False)
    w = ops.weights(rng, 70, 300, bits=8, zero_point=True)
    for m in (1, 33, 300):
        x = ops.x(rng, m, 300, act)
        np.testing.assert_array_equal(cpu.qgemm_int32(x, w, act), ref.qgemm_int32(x, w, act))
