"""weight_quantizer='kmeans': per-channel k-means codebooks in quantize (the seed's kmeans_quantization.py)."""
import numpy as np
import pytest
import torch
from torch import nn

from aciq.quant import PerTensor, QuantConfig, preset, quantize
from aciq.quant.api import prepare
from aciq.quant.report import code_lengths
from aciq.theory.kmeans import kmeans_1d


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 4 * 4, 10))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def setup():
    net = _net()
    calib = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return net, calib


def _folded(net, calib, config):
    return {n: m.weight.detach().double() for n, m in prepare(net, calib, config).model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("per_channel", [True, False])
def test_weights_are_the_theory_kmeans_codebooks_of_the_folded_weights(setup, per_channel):
    net, calib = setup
    cfg = QuantConfig(weight_bits=3, act_bits=None, weight_quantizer="kmeans", first_layer_bits=None,
                      last_layer_bits=None, **({} if per_channel else {"weight_granularity": PerTensor()}))
    q = quantize(net, cfg, calib)
    for name, w in _folded(net, calib, cfg).items():
        w2d = w.reshape(w.shape[0], -1).numpy()
        ref = kmeans_1d(w2d if per_channel else w2d.reshape(1, -1), levels=8, axis=0).reconstruct()
        got = q.get_submodule(name).layer.weight.detach().double().reshape(w2d.shape).numpy()
        assert np.allclose(got, ref.reshape(w2d.shape), rtol=1e-6, atol=1e-7)
        rows = got if per_channel else got.reshape(1, -1)
        assert max(len(np.unique(np.round(r, 6))) for r in rows) <= 8
        info = q.aciq_report[name]["weight"]
        assert info["quantizer"] == "kmeans" and info["bits"] == 3 and info["converged"]
        assert info["mse"] > 0 and info["lloyd_max_mse_laplace"] > 0


def test_kmeans_beats_the_uniform_grid_on_weight_error(setup):
    net, calib = setup
    folded = _folded(net, calib, preset("w4a8-naive"))
    qu, qk = (quantize(net, preset(p), calib) for p in ("w4a8-naive", "w4a8-kmeans"))
    for name, w in folded.items():
        eu = ((qu.get_submodule(name).layer.weight.double() - w) ** 2).sum()
        ek = ((qk.get_submodule(name).layer.weight.double() - w) ** 2).sum()
        assert ek <= eu * (1 + 1e-9)


def test_mean_correction_has_nothing_to_correct_and_codes_report(setup):
    net, calib = setup
    q = quantize(net, preset("w4a8-kmeans-bias"), calib)
    for info in q.aciq_report.values():
        assert info["bias_correction"]["mean_abs_offset"] < 1e-12     # every level is the mean of its cell
    rows = code_lengths(q, calib)
    weight_total = [r for r in rows if r["layer"] == "total" and r["kind"] == "weight"][0]
    assert weight_total["entropy"] <= weight_total["huffman"] <= weight_total["bits"] + 1e-9


def test_config_and_backend_checks(setup):
    net, calib = setup
    with pytest.raises(ValueError, match="weight_quantizer"):
        QuantConfig(weight_quantizer="lloyd")
    with pytest.raises(ValueError, match="weight_clipping"):
        QuantConfig(weight_quantizer="kmeans", weight_clipping="laplace")
    with pytest.raises(ValueError, match="bias_form"):
        QuantConfig(weight_quantizer="kmeans", bias_correction="mean", bias_form="on-grid")
    with pytest.raises(ValueError, match="weight_bits"):
        QuantConfig(weight_quantizer="kmeans", weight_bits=None)
    with pytest.raises(ValueError, match="fake backend"):
        quantize(net, preset("w4a8-kmeans"), calib, backend="kernels")
    assert "w:per-channel(axis=0)/kmeans" in preset("w4a8-kmeans").describe()
