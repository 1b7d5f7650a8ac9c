"""The numpy reference (the oracle) against brute force, and the data model's validation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aciq.kernels import reference as ref
from aciq.kernels.packing import pack_int4, packed_width, unpack_int4
from aciq.kernels.spec import (ActQuant, Epilogue, QuantWeights, check_operands, code_range,
                               max_integer_k, quantize_weights, unpack_codes)


def _brute_codes(x, act):
    """Per element, in pure Python: float32 quotient, Python round (half to even), clamp."""
    q = np.empty(x.shape, np.int64)
    for (m, k), v in np.ndenumerate(x):
        quot = float(np.float32(v) / np.float32(act.scale[k]))
        if quot != quot:  # NaN
            q[m, k] = act.qmin[k]
            continue
        quot = max(min(quot, 65536.0), -65536.0)
        q[m, k] = min(max(round(quot) + int(act.zero_point[k]), int(act.qmin[k])), int(act.qmax[k]))
    return q


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, (2, 3, 4, 8)])
def test_codes_match_brute_force(rng, ops, bits, signed):
    act = ops.act(rng, 13, bits=bits, signed=signed, per_channel=True)
    x = ops.x(rng, 9, 13, act)
    x[0, :4] = [np.nan, np.inf, -np.inf, 1e30]
    np.testing.assert_array_equal(ref.quantize_activations(x, act), _brute_codes(x, act))


def test_exact_ties_round_half_to_even():
    act = ActQuant.per_tensor(0.25, zero_point=0, bits=8, signed=True, k=6)
    k = np.arange(-3, 3, dtype=np.float32)
    x = ((k + np.float32(0.5)) * np.float32(0.25))[None, :].astype(np.float32)  # exact ties
    assert ref.quantize_activations(x, act).tolist() == [[-2, -2, 0, 0, 2, 2]]
    assert ref.quantize_values(np.float32([2.5, 3.5, -0.5]), 1.0, 0, -8, 7).tolist() == [2, 4, 0]


def test_matches_scalar_helper(rng):
    """numpy rule == the numba scalar helper every compiled backend calls."""
    from aciq.kernels._scalar import quantize_code

    xs = np.concatenate([rng.normal(0, 3, 200).astype(np.float32),
                         np.float32([0.5, 1.5, -2.5, np.nan, np.inf, -np.inf, 7.49999, 1e38])])
    for s, z, lo, hi in [(1.0, 0, -8, 7), (0.3, 5, 0, 15), (0.0625, -3, -128, 127)]:
        want = ref.quantize_values(xs, s, z, lo, hi)
        got = [int(quantize_code(v, np.float32(s), z, lo, hi)) for v in xs]
        assert got == want.tolist()


@pytest.mark.parametrize("mode", ["integer", "mixed"])
@pytest.mark.parametrize("wbits,packed", [(8, False), (4, True), (3, True), (2, False), (1, True)])
def test_qgemm_vs_fake_quantize_then_matmul(rng, ops, mode, wbits, packed):
    m, k, n = 7, 19, 5
    act = ops.act(rng, k, bits=(2, 4, 8), signed=mode == "integer", per_channel=mode == "mixed")
    w = ops.weights(rng, n, k, bits=wbits, packed=packed, zero_point=True)
    x = ops.x(rng, m, k, act)
    bias = rng.normal(size=n).astype(np.float32)
    q = _brute_codes(x, act)
    a_hat = (q - act.zero_point) * act.scale.astype(np.float64)
    y64 = a_hat @ w.dequantize().T + bias
    y = ref.qgemm(x, w, act, epilogue=Epilogue(bias=bias), mode=mode)
    assert y.dtype == np.float32 and y.shape == (m, n)
    np.testing.assert_allclose(y, y64, rtol=0, atol=2e-6 * np.abs(y64).max())
    if mode == "integer":
        acc = ((q - act.zero_point).astype(object) @ (unpack_codes(w).astype(object)
                                                     - w.zero_point[:, None]).T)
        np.testing.assert_array_equal(ref.qgemm_int32(x, w, act), acc.astype(np.int64))


def test_epilogue_relu_and_requantization(rng, ops):
    act = ops.act(rng, 11, bits=8, signed=True, per_channel=False)
    w = ops.weights(rng, 6, 11, bits=4)
    x = ops.x(rng, 8, 11, act)
    bias = rng.normal(size=6).astype(np.float32)
    y = ref.qgemm(x, w, act, epilogue=Epilogue(bias=bias), mode="integer")
    yr = ref.qgemm(x, w, act, epilogue=Epilogue(bias=bias, relu=True), mode="integer")
    np.testing.assert_array_equal(yr, np.maximum(y, 0))
    for signed, dtype in [(False, np.uint8), (True, np.int8)]:
        e = Epilogue(bias=bias, relu=True, out_bits=4, out_scale=0.05, out_zero_point=1,
                     out_signed=signed)
        codes = ref.qgemm(x, w, act, epilogue=e, mode="integer")
        lo, hi = code_range(4, signed)
        want = np.clip(np.rint(np.maximum(y, 0) / np.float32(0.05)) + 1, lo, hi)
        assert codes.dtype == dtype
        np.testing.assert_array_equal(codes, want)


def test_cross_terms_equal_centered_products(rng, ops):
    """The zero-point expansion equals the direct centred sum (independent route)."""
    act = ops.act(rng, 40, bits=8, signed=False, per_channel=False)
    w = ops.weights(rng, 9, 40, bits=8, zero_point=True)
    x = ops.x(rng, 6, 40, act)
    qa = ref.quantize_activations(x, act) - act.zero_point
    qw = unpack_codes(w).astype(np.int64) - w.zero_point[:, None]
    np.testing.assert_array_equal(ref.qgemm_int32(x, w, act), qa @ qw.T)


def test_out_argument(rng, ops):
    act = ops.act(rng, 5, bits=8, signed=True, per_channel=True)
    w = ops.weights(rng, 3, 5, bits=8)
    x = ops.x(rng, 2, 5, act)
    out = np.empty((2, 3), np.float32)
    assert ref.qgemm(x, w, act, out=out) is out
    np.testing.assert_array_equal(out, ref.qgemm(x, w, act))
    with pytest.raises(ValueError, match="out"):
        ref.qgemm(x, w, act, out=np.empty((2, 3), np.float64))


# ------------------------------------------------------------------ packing
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), k=st.integers(1, 17), seed=st.integers(0, 2**31))
def test_pack_roundtrip(n, k, seed):
    q = np.random.default_rng(seed).integers(-8, 8, size=(n, k)).astype(np.int8)
    p = pack_int4(q)
    assert p.dtype == np.uint8 and p.shape == (n, packed_width(k))
    np.testing.assert_array_equal(unpack_int4(p, k=k), q)
    # layout: low nibble = even k, field = code + 8; odd-K padding encodes code 0
    assert int(p[0, 0] & 15) == int(q[0, 0]) + 8
    if k % 2:
        assert int(p[0, -1] >> 4) == 8


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_quantize_weights_codes_in_range_and_on_grid(bits, seed):
    r = np.random.default_rng(seed)
    wf = r.normal(size=(4, 9)).astype(np.float32)
    w = quantize_weights(wf, bits=bits)
    q = unpack_codes(w)
    assert q.min() >= w.qmin and q.max() <= w.qmax
    assert w.packed == (bits <= 4)
    # values on the grid survive quantize -> dequantize
    back = quantize_weights(w.dequantize(), bits=bits, scale=w.scale)
    np.testing.assert_array_equal(unpack_codes(back), q)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 8), signed=st.booleans(), seed=st.integers(0, 2**31))
def test_fake_quantize_is_idempotent_and_in_range(bits, signed, seed):
    r = np.random.default_rng(seed)
    act = ActQuant.per_tensor(np.float32(0.125), bits=bits, signed=signed, k=6)
    x = r.normal(0, 10, size=(3, 6)).astype(np.float32)
    q = ref.quantize_activations(x, act)
    assert (q >= act.qmin).all() and (q <= act.qmax).all()
    xh = ref.fake_quantize(x, act)
    np.testing.assert_array_equal(ref.fake_quantize(xh, act), xh)


# --------------------------------------------------------------- validation
def test_int32_overflow_bound():
    k = 33026
    act = ActQuant.per_tensor(1.0, bits=8, signed=False, k=k)
    w = QuantWeights(codes=np.zeros((1, k), np.int8), scale=1.0, zero_point=0, bits=8, k=k, n=1,
                     packed=False)
    assert max_integer_k(act, w) == (2**31 - 1) // (255 * 128)
    big = ActQuant.per_tensor(1.0, bits=8, signed=False, k=k)
    w2 = QuantWeights(codes=np.zeros((1, k), np.int8), scale=1.0, zero_point=127, bits=8, k=k,
                      n=1, packed=False)
    with pytest.raises(ValueError, match="K="):
        ref.qgemm(np.zeros((1, k), np.float32), w2, big, mode="integer")
    ref.qgemm(np.zeros((1, k), np.float32), w2, big, mode="mixed")  # no bound in mixed mode


@pytest.mark.parametrize("kwargs,name", [
    (dict(scale=[0.1, -1.0]), "scale"),
    (dict(scale=[0.1, np.nan]), "scale"),
    (dict(scale=[0.1, 0.0]), "scale"),
    (dict(scale=[0.1, 0.2], bits=0), "bits"),
    (dict(scale=[0.1, 0.2], bits=9), "bits"),
    (dict(scale=[0.1, 0.2], bits=2.5), "bits"),
    (dict(scale=[0.1, 0.2], bits=[4, 4, 4]), "bits"),
    (dict(scale=[0.1, 0.2], zero_point=16, bits=4), "zero_point"),
    (dict(scale=[0.1, 0.2], zero_point=-1, bits=4, signed=False), "zero_point"),
    (dict(scale=[0.1, 0.2], signed="yes"), "signed"),
    (dict(scale=0.1), "scale"),
    (dict(scale=[]), "scale"),
])
def test_actquant_rejects(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ActQuant(**kwargs)


def test_actquant_per_tensor_rejects():
    with pytest.raises(ValueError, match="k"):
        ActQuant.per_tensor(0.1, k=0)
    with pytest.raises(ValueError, match="scale"):
        ActQuant.per_tensor([0.1, 0.2], k=2)


def _qw(**over):
    base = dict(codes=np.zeros((2, 3), np.int8), scale=[1.0, 1.0], zero_point=0, bits=4, k=3, n=2,
                packed=False)
    base.update(over)
    return QuantWeights(**base)


@pytest.mark.parametrize("over,name", [
    (dict(codes=np.zeros((2, 3), np.int16)), "codes"),
    (dict(codes=np.zeros((2, 4), np.int8)), "codes"),
    (dict(codes=np.full((2, 3), 8, np.int8)), "codes"),
    (dict(codes=np.full((2, 3), -9, np.int8)), "codes"),
    (dict(codes=[[0, 0, 0], [0, 0, 0]]), "codes"),
    (dict(codes=np.zeros((2, 2), np.uint8), packed=True, bits=8), "packed"),
    (dict(codes=np.zeros((2, 3), np.int8), packed=True), "codes"),
    (dict(codes=np.zeros((2, 2), np.uint8), packed=True, bits=2), "codes"),  # field 0 = code -8
    (dict(scale=[1.0, 0.0]), "scale"),
    (dict(scale=[1.0, 1.0, 1.0]), "scale"),
    (dict(zero_point=8), "zero_point"),
    (dict(bits=0), "bits"),
    (dict(bits=9), "bits"),
    (dict(k=0), "k"),
    (dict(n=2.0), "n"),
])
def test_quantweights_rejects(over, name):
    with pytest.raises(ValueError, match=name):
        _qw(**over)


@pytest.mark.parametrize("kwargs,name", [
    (dict(bias=[[1.0]]), "bias"),
    (dict(bias=[np.inf]), "bias"),
    (dict(relu=1), "relu"),
    (dict(out_bits=0), "out_bits"),
    (dict(out_bits=9), "out_bits"),
    (dict(out_bits=4, out_scale=-1.0), "out_scale"),
    (dict(out_bits=4, out_zero_point=16), "out_zero_point"),
    (dict(out_bits=4, out_zero_point=0.5), "out_zero_point"),
])
def test_epilogue_rejects(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Epilogue(**kwargs)


def test_check_operands_rejects(rng, ops):
    act = ops.act(rng, 5, bits=8, signed=True, per_channel=True)
    w = ops.weights(rng, 3, 5, bits=8)
    x = ops.x(rng, 4, 5, act)
    cases = [
        ((x.astype(np.float64), w, act, None, "mixed"), "x"),
        ((x[:, :4], w, act, None, "mixed"), "x"),
        ((np.asfortranarray(x), w, act, None, "mixed"), "x"),
        ((x[:, ::1][::2].T.copy().T, w, act, None, "mixed"), "x"),
        ((x[None], w, act, None, "mixed"), "x"),
        ((x, "w", act, None, "mixed"), "weights"),
        ((x, w, "a", None, "mixed"), "act"),
        ((x, w, ActQuant.per_tensor(0.1, k=4), None, "mixed"), "act"),
        ((x, w, act, "e", "mixed"), "epilogue"),
        ((x, w, act, Epilogue(bias=np.ones(4)), "mixed"), "bias"),
        ((x, w, act, None, "float"), "mode"),
        ((x, w, act, None, "integer"), "integer"),
    ]
    for args, name in cases:
        with pytest.raises(ValueError, match=name):
            check_operands(*args)
