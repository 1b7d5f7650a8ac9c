"""aciq.quant.fake: the gemmlowp grid against aciq.theory.grids.quantize and a hand-written numpy reference."""
import doctest

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import aciq.quant.fake as fake
from aciq.quant.fake import FakeQuant, codes, dequantize, fake_quantize, grid_params
from aciq.theory.grids import quantize as theory_quantize

SETTINGS = settings(max_examples=40, deadline=None)


def numpy_gemmlowp(x, lo, hi, bits):
    """Direct gemmlowp (float64): window [min(lo,0), max(hi,0)], s, z = rint(-lo/s), clamp, dequantize."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmax = 2 ** bits - 1
    s = (hi - lo) / qmax
    z = np.clip(np.rint(-lo / s), 0, qmax)
    q = np.clip(np.rint(x / s) + z, 0, qmax)
    return (q - z) * s, q


def test_docstring_examples():
    assert doctest.testmod(fake).failed == 0


def test_grid_by_hand():
    g = grid_params(-0.3, 1.2, 4)          # s = 1.5/15 = 0.1, z = 3
    assert float(g.scale) == pytest.approx(0.1) and int(g.zero_point) == 3 and int(g.qmax) == 15
    assert float(g.lo) == pytest.approx(-0.3) and float(g.hi) == pytest.approx(1.2)
    x = torch.tensor([-1.0, -0.26, -0.04, 0.0, 0.05, 0.16, 5.0], dtype=torch.float64)
    assert codes(x, g).tolist() == [0, 0, 3, 3, 3, 5, 15]
    assert torch.allclose(fake_quantize(x, g), torch.tensor([-0.3, -0.3, 0, 0, 0, 0.2, 1.2], dtype=torch.float64))


def test_window_always_contains_zero():
    g = grid_params(0.5, 2.0, 3)           # extended to [0, 2]: z = 0
    assert int(g.zero_point) == 0 and float(g.scale) == pytest.approx(2.0 / 7)
    g = grid_params(-2.0, -0.5, 3)         # extended to [-2, 0]: z = qmax
    assert int(g.zero_point) == 7 and float(g.hi) == 0.0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), bits=st.integers(1, 8), channels=st.integers(1, 5),
       axis=st.sampled_from([0, 1]))
def test_per_channel_symmetric_equals_theory_grid(seed, bits, channels, axis):
    """Symmetric windows [-a_c, a_c]: channel c equals theory.grids.quantize(alpha=a_c, grid='gemmlowp')."""
    rng = np.random.default_rng(seed)
    shape = (channels, 3, 4, 2) if axis == 0 else (3, channels, 4, 2)
    x = rng.laplace(size=shape) * rng.uniform(0.1, 3.0)
    alpha = rng.uniform(0.05, 4.0, size=channels)
    g = grid_params(-alpha, alpha, bits, axis=axis)
    got = fake_quantize(torch.from_numpy(x), g).numpy()
    for c in range(channels):
        xc = np.take(x, c, axis=axis)
        ref = theory_quantize(xc, alpha=alpha[c], bits=bits, grid="gemmlowp")
        np.testing.assert_allclose(np.take(got, c, axis=axis), ref, rtol=0, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), bits=st.integers(1, 8), channels=st.integers(1, 5),
       axis=st.sampled_from([0, 1]))
def test_per_channel_asymmetric_equals_numpy_reference(seed, bits, channels, axis):
    rng = np.random.default_rng(seed)
    shape = (channels, 7, 3) if axis == 0 else (5, channels, 3, 3)
    x = rng.normal(size=shape) * 2.0 + rng.normal()
    lo = rng.uniform(-3.0, 0.5, size=channels)
    hi = lo + rng.uniform(0.01, 4.0, size=channels)
    g = grid_params(lo, hi, bits, axis=axis)
    got = fake_quantize(torch.from_numpy(x), g).numpy()
    q = codes(torch.from_numpy(x), g).numpy()
    for c in range(channels):
        ref, qref = numpy_gemmlowp(np.take(x, c, axis=axis), lo[c], hi[c], bits)
        np.testing.assert_allclose(np.take(got, c, axis=axis), ref, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(np.take(q, c, axis=axis), qref)
    assert q.min() >= 0 and q.max() <= 2 ** bits - 1
    # dequantize(codes(x)) is fake_quantize(x)
    np.testing.assert_array_equal(dequantize(torch.from_numpy(q), g, dtype=torch.float64).numpy(), got)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), channels=st.integers(1, 6))
def test_codes_in_range_with_mixed_bits(seed, channels):
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, 9, size=channels)
    lo, hi = -rng.uniform(0, 2, size=channels), rng.uniform(0.01, 2, size=channels)
    g = grid_params(lo, hi, bits, axis=1)
    x = torch.from_numpy(rng.normal(size=(4, channels, 5)) * 5)
    q = codes(x, g)
    qmax = torch.from_numpy(2 ** bits - 1).reshape(1, -1, 1)
    assert (q >= 0).all() and (q <= qmax).all()
    assert torch.equal(codes(x, g, dtype=torch.uint8).long(), q)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), bits=st.integers(1, 8), channels=st.integers(1, 4))
def test_values_on_the_grid_survive(seed, bits, channels):
    """x = (q - z) s for any code q: quantize -> dequantize returns x and the code q."""
    rng = np.random.default_rng(seed)
    lo = -rng.uniform(0.0, 3.0, size=channels)
    hi = rng.uniform(0.01, 3.0, size=channels)
    g = grid_params(lo, hi, bits, axis=0)
    q = rng.integers(0, 2 ** bits, size=(channels, 9))
    x = (q - g.zero_point[:, None]) * g.scale[:, None]
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(fake_quantize(xt, g).numpy(), x, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(codes(xt, g).numpy(), q)


def test_module_equals_function_in_float32():
    rng = np.random.default_rng(0)
    g = grid_params(-rng.uniform(0, 1, 6), rng.uniform(0.1, 2, 6), np.array([1, 2, 3, 4, 8, 0]),
                    fill=np.arange(6.0), axis=1)
    x = torch.from_numpy(rng.normal(size=(3, 6, 4, 4)).astype(np.float32))
    assert torch.equal(FakeQuant(g)(x), fake_quantize(x, g))
    assert (FakeQuant(g)(x)[:, 5] == 5.0).all()           # the 0-bit channel is its fill value
    pt = grid_params(-1.0, 1.0, 3)
    assert torch.equal(FakeQuant(pt)(x), fake_quantize(x, pt))


def test_zero_bit_channel_and_dead_window():
    g = grid_params([-1.0, 0.0], [1.0, 0.0], [0, 4], fill=[0.25, 0.0], axis=0)
    x = torch.tensor([[0.7, -3.0], [0.0, 0.0]])
    out = fake_quantize(x, g)
    assert out[0].tolist() == [0.25, 0.25]                 # 0 bits: one level, the fill
    assert out[1].tolist() == [0.0, 0.0] and np.isfinite(g.scale).all()   # empty window: finite, all 0
    assert codes(x, g).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("kwargs, match", [
    (dict(lo=-1.0, hi=1.0, bits=9), "bits"),
    (dict(lo=-1.0, hi=1.0, bits=-1), "bits"),
    (dict(lo=-1.0, hi=1.0, bits=2.5), "bits"),
    (dict(lo=float("nan"), hi=1.0, bits=4), "lo"),
    (dict(lo=-1.0, hi=float("inf"), bits=4), "hi"),
])
def test_grid_params_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid_params(kwargs["lo"], kwargs["hi"], kwargs["bits"])


def test_channel_count_mismatch():
    g = grid_params(-np.ones(3), np.ones(3), 4, axis=1)
    with pytest.raises(ValueError, match="channels on axis 1"):
        fake_quantize(torch.zeros(2, 4), g)
