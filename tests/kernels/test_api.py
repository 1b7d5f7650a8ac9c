"""Public API: dispatch, array conversion at the boundary, layer wrappers, lean import."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import aciq.kernels as K
from aciq.kernels import (ActQuant, Epilogue, QuantConv2d, QuantLinear, qgemm, qgemm_int32,
                          quantize_weights, resolve_backend)
from aciq.kernels import reference as ref


def test_import_is_lean():
    """``import aciq.kernels`` loads neither torch nor numba (backends load on first use)."""
    code = ("import sys, aciq.kernels; "
            "print(sorted(m for m in ('torch', 'numba', 'numba.cuda') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


class _FakeDevice:
    __cuda_array_interface__ = {"shape": (1, 1), "typestr": "<f4", "data": (0, False), "version": 3}
    shape = (1, 1)
    dtype = np.dtype(np.float32)


def test_dispatch():
    x = np.zeros((2, 3), np.float32)
    assert resolve_backend(x) == "cpu"
    assert resolve_backend(torch.zeros(2, 3).numpy()) == "cpu"
    assert resolve_backend(_FakeDevice()) == "cuda"
    for b in K.BACKENDS:
        assert resolve_backend(x if b != "cuda" else _FakeDevice(), b) == b
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(x, "tpu")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(_FakeDevice(), "cpu")


@pytest.mark.parametrize("mode", ["integer", "mixed"])
def test_backends_agree_through_api(rng, ops, mode):
    act = ops.act(rng, 45, bits=(4, 8), signed=False, per_channel=mode == "mixed")
    w = ops.weights(rng, 20, 45, bits=4, zero_point=True)
    x = ops.x(rng, 70, 45, act)
    e = Epilogue(bias=rng.normal(size=20), relu=True)
    a = qgemm(x, w, act, epilogue=e, mode=mode, backend="reference")
    b = qgemm(x, w, act, epilogue=e, mode=mode)  # dispatches to cpu
    if mode == "integer":
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(qgemm_int32(x, w, act), qgemm_int32(x, w, act,
                                                                         backend="reference"))
    else:
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_torch_tensors_at_the_boundary(rng, ops):
    act = ops.act(rng, 16, bits=8, signed=True, per_channel=True)
    w = ops.weights(rng, 8, 16, bits=8)
    x = ops.x(rng, 4, 16, act)
    want = qgemm(x, w, act)
    np.testing.assert_array_equal(qgemm(torch.from_numpy(x), w, act), want)
    with pytest.raises(ValueError, match="x"):
        qgemm(torch.from_numpy(x).requires_grad_(), w, act)
    with pytest.raises(ValueError, match="x"):
        qgemm(torch.from_numpy(x).t(), w, act)  # non-contiguous view: no silent copy
    with pytest.raises(ValueError, match="x"):
        qgemm([[1.0] * 16], w, act)


def test_quant_linear_matches_torch_linear(rng):
    wf = rng.normal(size=(12, 30)).astype(np.float32)
    bias = rng.normal(size=12).astype(np.float32)
    act = ActQuant(scale=rng.uniform(0.02, 0.05, 30).astype(np.float32), bits=(8,) * 30,
                   signed=True)
    layer = QuantLinear.from_float(wf, bias, weight_bits=4, act=act)
    x = rng.normal(size=(2, 3, 30)).astype(np.float32)
    y = layer(x)
    assert y.shape == (2, 3, 12) and y.dtype == np.float32
    xq = ref.fake_quantize(x.reshape(-1, 30), act).astype(np.float64)
    want = F.linear(torch.from_numpy(xq), torch.from_numpy(layer.weights.dequantize()),
                    torch.from_numpy(bias.astype(np.float64))).numpy().reshape(2, 3, 12)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * np.abs(want).max())
    ref_layer = QuantLinear(layer.weights, act, epilogue=layer.epilogue, backend="reference")
    np.testing.assert_allclose(ref_layer(x), y, rtol=0, atol=1e-5 * np.abs(want).max())
    # 4-bit weights of a float layer: SQNR floor vs the float result
    yf = x.reshape(-1, 30) @ wf.T + bias
    sqnr = 10 * np.log10(np.sum(yf**2) / np.sum((yf - y.reshape(-1, 12)) ** 2))
    assert sqnr > 15


def test_quant_linear_requantized_codes(rng):
    wf = rng.normal(size=(6, 10)).astype(np.float32)
    act = ActQuant.per_tensor(0.05, bits=8, signed=True, k=10)
    layer = QuantLinear.from_float(wf, None, weight_bits=8, act=act, relu=True, out_bits=4,
                                   out_scale=0.25, mode="integer")
    x = rng.normal(size=(5, 10)).astype(np.float32)
    codes = layer(x)
    assert codes.dtype == np.uint8 and codes.max() <= 15
    np.testing.assert_array_equal(codes, ref.qgemm(x, layer.weights, act, epilogue=layer.epilogue,
                                                   mode="integer"))


def test_quant_conv2d_matches_torch(rng):
    wf = rng.normal(size=(8, 2, 3, 3)).astype(np.float32)
    bias = rng.normal(size=8).astype(np.float32)
    act = ActQuant(scale=rng.uniform(0.02, 0.05, 4).astype(np.float32), bits=[8, 4, 8, 2],
                   signed=True)
    layer = QuantConv2d.from_float(wf, bias, weight_bits=8, act=act, stride=2, padding=1, groups=2)
    x = rng.normal(size=(2, 4, 9, 9)).astype(np.float32)
    y = layer(x)
    flat = x.transpose(0, 2, 3, 1).reshape(-1, 4).copy()
    xq = ref.fake_quantize(flat, act).reshape(2, 9, 9, 4).transpose(0, 3, 1, 2)
    want = F.conv2d(torch.from_numpy(xq.astype(np.float64)),
                    torch.from_numpy(layer.weights.dequantize().reshape(wf.shape)),
                    torch.from_numpy(bias.astype(np.float64)), stride=2, padding=1, groups=2).numpy()
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(layer(torch.from_numpy(x)), y)


def test_layer_construction_rejects(rng):
    act = ActQuant.per_tensor(0.1, bits=8, k=4)
    w = quantize_weights(rng.normal(size=(3, 4)), bits=8)
    with pytest.raises(ValueError, match="backend"):
        QuantLinear(w, act, backend="tpu")
    with pytest.raises(ValueError, match="act"):
        QuantLinear(w, ActQuant.per_tensor(0.1, k=5))
    with pytest.raises(ValueError, match="x"):
        QuantLinear(w, act)(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="weight"):
        QuantConv2d.from_float(np.zeros((3, 4)), weight_bits=8, act=act)
    with pytest.raises(ValueError, match="groups"):
        QuantConv2d.from_float(np.zeros((3, 2, 1, 1)), weight_bits=8, act=act, groups=2)


# ------------------------------------------------------------------ the backend seam
def test_every_backend_module_exports_the_same_seam():
    """One name -> module table; each module has qgemm, qgemm_int32, qconv2d and a Plan with linear/conv."""
    code = ("import aciq.kernels as K, inspect; "
            "mods = {b: K.backend_module(b) for b in ('reference', 'cpu')}; "
            "print(all(callable(getattr(m, f)) for m in mods.values() "
            "for f in ('qgemm', 'qgemm_int32', 'qconv2d')), "
            "all(hasattr(m.Plan, 'linear') and hasattr(m.Plan, 'conv') for m in mods.values()))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.split() == ["True", "True"], res.stderr[-2000:]
    with pytest.raises(ValueError, match="backend must be one of"):
        K.backend_module("tpu")


def test_conv_layer_caches_plans_per_backend_and_shape(rng):
    w = quantize_weights(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), bits=4)
    act = ActQuant.per_tensor(0.1, zero_point=0, bits=8, signed=True, k=4)
    layer = QuantConv2d(w, act, padding=1, groups=2, mode="integer")
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    a = layer(x)
    layer(x)
    assert list(layer._plans) == [("cpu", (2, 4, 5, 5))]
    layer(x[:1].copy())
    ref_y = QuantConv2d(w, act, padding=1, groups=2, mode="integer", backend="reference")(x)
    assert set(layer._plans) == {("cpu", (2, 4, 5, 5)), ("cpu", (1, 4, 5, 5))}
    assert len(layer._backend_plans) == 1           # the weight side is prepared once per backend
    np.testing.assert_array_equal(a, ref_y)          # integer mode: bit-exact across backends
    out = np.empty_like(a)
    assert layer(x, out=out) is not None and np.array_equal(out, a)   # the result lands in out
    assert layer.output_shape((2, 4, 5, 5)) == a.shape
