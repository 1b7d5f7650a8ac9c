"""Quantized conv2d (reference and CPU) against torch.nn.functional.conv2d on fake-quantized data."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aciq.kernels import qconv2d, reference as ref
from aciq.kernels.conv import im2col
from aciq.kernels.spec import ActQuant, Epilogue, quantize_weights, unpack_codes

# (N, C, H, W, O, kh, kw, stride, padding, dilation, groups)
GEOMETRIES = [
    (2, 4, 9, 7, 6, 3, 3, 1, 1, 1, 1),            # plain 3x3, odd sizes
    (1, 6, 11, 10, 9, 3, 2, 2, (1, 0), 1, 3),     # non-square kernel, asymmetric padding, groups
    (2, 8, 8, 8, 8, 3, 3, 1, 2, 2, 8),            # depthwise, dilation 2
    (1, 4, 9, 9, 8, 3, 3, 2, 1, 1, 4),            # depthwise with channel multiplier 2
    (1, 3, 20, 20, 16, 7, 7, 2, 3, 1, 1),         # ResNet conv1 in miniature
    (3, 70, 5, 5, 20, 1, 1, 1, 0, 1, 1),          # 1x1, M not a tile multiple, C > 64
    (1, 5, 6, 7, 4, 2, 3, (2, 1), (0, 2), (2, 1), 1),
]


def _fake_q_nchw(x, act):
    n, c, h, w = x.shape
    flat = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(-1, c))
    return ref.fake_quantize(flat, act).reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _torch_conv(x, w, stride, padding, dilation, groups):
    return F.conv2d(torch.from_numpy(np.ascontiguousarray(x, np.float64)), torch.from_numpy(w),
                    stride=stride, padding=padding, dilation=dilation, groups=groups).numpy()


@pytest.mark.parametrize("geom", GEOMETRIES)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mixed_conv_matches_torch(rng, geom, backend):
    n, c, h, w_, o, kh, kw, s, p, d, g = geom
    x = rng.normal(size=(n, c, h, w_)).astype(np.float32)
    wf = rng.normal(size=(o, c // g, kh, kw))
    w = quantize_weights(wf, bits=4)
    act = ActQuant(scale=rng.uniform(0.05, 0.2, c).astype(np.float32),
                   zero_point=rng.integers(0, 2, c), bits=rng.choice([2, 4, 8], c), signed=True)
    bias = rng.normal(size=o).astype(np.float32)
    y = qconv2d(x, w, act, stride=s, padding=p, dilation=d, groups=g, kernel_size=(kh, kw),
                epilogue=Epilogue(bias=bias), backend=backend)
    want = _torch_conv(_fake_q_nchw(x, act), w.dequantize().reshape(wf.shape), s, p, d, g)
    want = want + bias[None, :, None, None]
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_integer_conv_accumulators_exact(rng, geom):
    """int32 accumulators == torch conv (float64, exact on integers) of the centred codes."""
    n, c, h, w_, o, kh, kw, s, p, d, g = geom
    x = rng.normal(size=(n, c, h, w_)).astype(np.float32)
    wf = rng.normal(size=(o, c // g, kh, kw))
    w = quantize_weights(wf, bits=8)
    act = ActQuant.per_tensor(0.02, zero_point=3, bits=rng.choice([3, 8], c), signed=False, k=c)
    kwargs = dict(stride=s, padding=p, dilation=d, groups=g, kernel_size=(kh, kw), mode="integer")
    acc = qconv2d(x, w, act, accumulator=True, **kwargs)
    flat = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(-1, c))
    qa = (ref.quantize_activations(flat, act) - 3).reshape(n, h, w_, c).transpose(0, 3, 1, 2)
    want = _torch_conv(qa.astype(np.float64), unpack_codes(w).reshape(wf.shape).astype(np.float64),
                       s, p, d, g)
    np.testing.assert_array_equal(acc, want.astype(np.int64))
    np.testing.assert_array_equal(acc, qconv2d(x, w, act, accumulator=True, backend="reference",
                                               **kwargs))
    e = Epilogue(bias=rng.normal(size=o), relu=True, out_bits=8, out_scale=0.5, out_zero_point=0)
    np.testing.assert_array_equal(qconv2d(x, w, act, epilogue=e, **kwargs),
                                  qconv2d(x, w, act, epilogue=e, backend="reference", **kwargs))


def test_padding_contributes_exact_zero(rng):
    """Asymmetric grid (zero point 7): padded taps add 0, not deq(q(0)) of another grid point."""
    x = rng.uniform(-1, 1, size=(1, 2, 5, 5)).astype(np.float32)
    act = ActQuant.per_tensor(0.1, zero_point=7, bits=4, signed=False, k=2)
    w = quantize_weights(np.ones((1, 2, 3, 3)), bits=8)
    y = qconv2d(x, w, act, padding=2, backend="cpu")
    want = _torch_conv(_fake_q_nchw(x, act), w.dequantize().reshape(1, 2, 3, 3), 1, 2, 1, 1)
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5 * np.abs(want).max())
    corner = (_fake_q_nchw(x, act)[0, :, 0, 0].sum()) * w.dequantize()[0, 0]
    assert y[0, 0, 0, 0] == pytest.approx(corner, rel=1e-5, abs=1e-6)


def test_im2col_matches_unfold(rng):
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    cols = im2col(x, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    unf = F.unfold(torch.from_numpy(x), (3, 2), dilation=(1, 2), padding=(1, 2), stride=(2, 1))
    want = unf.numpy().transpose(0, 2, 1).reshape(-1, 3 * 3 * 2)
    np.testing.assert_array_equal(cols, want)


@pytest.mark.parametrize("kwargs,name", [
    (dict(stride=0), "stride"),
    (dict(stride=(1, 2, 3)), "stride"),
    (dict(padding=-1), "padding"),
    (dict(dilation=0), "dilation"),
    (dict(groups=3), "groups"),
    (dict(groups=0), "groups"),
    (dict(kernel_size=(2, 2)), "kernel_size"),
    (dict(padding=0, dilation=5), "x"),
    (dict(mode="integer"), "integer"),
    (dict(backend="gpu"), "backend"),
    (dict(accumulator=True), "mode"),
    (dict(epilogue=Epilogue(bias=np.ones(3))), "bias"),
])
def test_conv_rejects(rng, kwargs, name):
    x = rng.normal(size=(1, 4, 6, 6)).astype(np.float32)
    w = quantize_weights(rng.normal(size=(4, 2, 3, 3)), bits=8)
    act = ActQuant(scale=np.linspace(0.1, 0.2, 4), bits=8)
    base = dict(groups=2)
    base.update(kwargs)
    with pytest.raises(ValueError, match=name):
        qconv2d(x, w, act, **base)


def test_conv_rejects_bad_x(rng):
    w = quantize_weights(rng.normal(size=(4, 2, 3, 3)), bits=8)
    act = ActQuant(scale=np.linspace(0.1, 0.2, 2), bits=8)
    x = rng.normal(size=(1, 2, 6, 6)).astype(np.float32)
    for bad in (x.astype(np.float64), x[:, :, ::2], x[0], x.transpose(0, 1, 3, 2)):
        with pytest.raises(ValueError, match="x"):
            qconv2d(bad, w, act)
    with pytest.raises(ValueError, match="act"):
        qconv2d(x, w, ActQuant(scale=[0.1, 0.1, 0.1], bits=8))


_SIM_SCRIPT = textwrap.dedent("""
    import numpy as np
    from aciq.kernels import ActQuant, Epilogue, qconv2d, quantize_weights
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
    w = quantize_weights(rng.normal(size=(6, 2, 3, 2)), bits=4)
    act = ActQuant.per_tensor(0.1, zero_point=1, bits=8, signed=True, k=4)
    kw = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2, kernel_size=(3, 2))
    for mode in ("integer", "mixed"):
        e = Epilogue(bias=rng.normal(size=6), relu=True)
        a = qconv2d(x, w, act, epilogue=e, mode=mode, backend="cuda", **kw)
        b = qconv2d(x, w, act, epilogue=e, mode=mode, backend="reference", **kw)
        assert a.shape == b.shape, (a.shape, b.shape)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), mode
    acc = qconv2d(x, w, act, mode="integer", accumulator=True, backend="cuda", **kw)
    ref = qconv2d(x, w, act, mode="integer", accumulator=True, backend="reference", **kw)
    assert (acc == ref).all()
    print("ok")
""")


def test_cuda_conv_under_simulator():
    """The CUDA conv path (device im2col + fused GEMM + scatter) under NUMBA_ENABLE_CUDASIM=1."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    res = subprocess.run([sys.executable, "-c", _SIM_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
