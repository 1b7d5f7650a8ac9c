"""aciq.quant.qdq: containers and the integer weight data, checked against the grids of aciq.quant.fake."""
import doctest

import numpy as np
import pytest
import torch

import aciq.quant.qdq as qdq
from aciq.quant.fake import dequantize, grid_params
from aciq.quant.fake import codes as grid_codes
from aciq.quant.modules import LayerQuant


def test_docstring_examples():
    assert doctest.testmod(qdq).failed == 0


def _layer_quant(w, bits, *, fill=None, scale_factor=None):
    lo, hi = w.min(1).values.numpy(), w.max(1).values.numpy()
    grid = grid_params(lo, hi, bits, fill=fill, axis=0)
    q = grid_codes(w.double(), grid, dtype=torch.uint8)
    w_hat = dequantize(q, grid, dtype=torch.float64)
    if scale_factor is not None:
        w_hat = torch.as_tensor(scale_factor)[:, None] * w_hat
    return LayerQuant("layer", weight_grid=grid, codes=q.numpy(), weight=w_hat.float(), bias=None,
                      scale_factor=scale_factor, act_in=None, act_out=None, info={})


@pytest.mark.parametrize("bits", [[4, 4, 4, 4, 4, 4], [0, 2, 3, 4, 0, 8], [8, 7, 0, 1, 5, 6]])
@pytest.mark.parametrize("xi", [None, np.linspace(0.9, 1.1, 6)])
def test_weight_codes_reproduce_the_quantized_weight(bits, xi):
    """(codes - z) * scale == the layer's weight, 0-bit channels (fill) and the on-grid factor included."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 20, generator=g)
    fill = w.mean(1).numpy()
    q = _layer_quant(w, np.array(bits), fill=fill, scale_factor=xi)
    codes, zp, scale = qdq.weight_codes(q, (6, 4, 5))
    assert codes.shape == (6, 4, 5) and codes.min() >= 0
    assert codes.max() <= (15 if max(bits) <= 4 else 255)
    got = (codes.reshape(6, -1) - zp[:, None]) * scale[:, None]
    np.testing.assert_allclose(got, q.weight.double().numpy(), rtol=0, atol=1e-6 * float(w.abs().max()))
    dead = np.array(bits) == 0
    if dead.any():
        want = fill[dead] * (1.0 if xi is None else xi[dead])
        np.testing.assert_allclose(got[dead], np.repeat(want[:, None], 20, 1), rtol=1e-6)


def test_containers():
    c = qdq.container
    assert c([0, 1, 4], weight=True, int4=True).name == "uint4"
    assert c([4, 5], weight=True, int4=True).name == "uint8"
    assert c([4], weight=True, int4=False).name == "uint8"
    assert c([4], weight=False, int4=True).name == "uint8"      # activations: always 8-bit containers
    assert qdq.CONTAINERS["uint4"].hi == 15 and qdq.CONTAINERS["uint8"].hi == 255


def test_activation_qdq_describes_its_clamp():
    per_tensor = qdq.ActQDQ(grid_params(-1.0, 1.0, 4), opset=21)
    assert per_tensor.describe() == {"bits": [4], "container": "uint8", "clamp": True, "per_channel": False,
                                     "zero_bit_channels": False, "unit_scale": False}
    eight = qdq.ActQDQ(grid_params(-1.0, 1.0, 8), opset=21)
    assert not eight.clamp
    alloc = qdq.ActQDQ(grid_params(np.zeros(3), np.ones(3), np.array([0, 4, 8]), axis=1), opset=21)
    assert alloc.describe()["per_channel"] and alloc.dead and alloc.clamp
    np.testing.assert_array_equal(alloc.qmax.numpy(), [0, 15, 255])
    with pytest.raises(ValueError, match="axis"):
        qdq.ActQDQ(grid_params(np.zeros(3), np.ones(3), 4), opset=21)
