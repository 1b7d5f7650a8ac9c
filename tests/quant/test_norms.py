"""Per-sample output norms (-ms): float vs quantized layer outputs, per image, as a CSV."""
import csv

import numpy as np
import pytest
import torch
from torch import nn

from aciq.quant import QuantConfig, preset, quantize
from aciq.quant.api import prepare
from aciq.quant.evaluate import Loader
from aciq.quant.norms import NORM_COLUMNS, output_norms, write_norms_csv


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 4 * 4, 10)).eval()
    calib = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return net, calib, x


def _outputs(model, names, x, batch=3):
    """Every layer's output, batch by batch as output_norms runs (float32 convs depend on the batch)."""
    out = {n: [] for n in names}
    hs = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: out[n].append(o.double()))
          for n in names]
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    for h in hs:
        h.remove()
    return {n: torch.cat(v) for n, v in out.items()}


def test_norms_and_distances_per_image(setup):
    net, calib, x = setup
    cfg = preset("w4a4-naive")
    q = quantize(net, cfg, calib)
    folded = prepare(net, calib, cfg).model
    res = output_norms(q, folded, Loader(x, None, 3))
    assert res["layers"] == ["0", "3", "6"] and res["dist2"].shape == (7, 3)
    fo, qo = _outputs(folded, res["layers"], x), _outputs(q, res["layers"], x)
    for j, n in enumerate(res["layers"]):
        assert np.allclose(res["norm2_float"][:, j], fo[n].flatten(1).pow(2).sum(1).numpy(), rtol=1e-12)
        assert np.allclose(res["norm2_quant"][:, j], qo[n].flatten(1).pow(2).sum(1).numpy(), rtol=1e-12)
        assert np.allclose(res["dist2"][:, j], (qo[n] - fo[n]).flatten(1).pow(2).sum(1).numpy(), rtol=1e-12)
    assert np.all(res["dist2"] > 0)
    # folded BN: the float layer-0 output is conv + BN of the original model
    with torch.no_grad():
        ref = net[1](net[0](x)).double().flatten(1).pow(2).sum(1).numpy()
    assert np.allclose(res["norm2_float"][:, 0], ref, rtol=1e-5)


def test_an_unquantized_model_has_no_distance(setup):
    net, calib, x = setup
    q = quantize(net, QuantConfig(weight_bits=None, act_bits=None), calib)
    res = output_norms(q, prepare(net, calib, QuantConfig()).model, [x])
    assert np.all(res["dist2"] == 0) and np.array_equal(res["norm2_float"], res["norm2_quant"])


def test_csv_is_long_format_in_image_order(tmp_path):
    norms = {"layers": ["a", "b"], "norm2_float": np.array([[1.0, 2.0], [3.0, 4.0]]),
             "norm2_quant": np.array([[1.5, 2.0], [3.0, 4.5]]), "dist2": np.array([[0.1, 0.0], [0.0, 0.2]])}
    path = write_norms_csv(tmp_path / "n.csv", norms, image_ids=[7, 2])
    rows = list(csv.reader(open(path)))
    assert tuple(rows[0]) == NORM_COLUMNS
    assert rows[1:] == [["2", "a", "3", "3", "0"], ["2", "b", "4", "4.5", "0.2"],
                        ["7", "a", "1", "1.5", "0.1"], ["7", "b", "2", "2", "0"]]
    with pytest.raises(ValueError, match="image_ids"):
        write_norms_csv(tmp_path / "m.csv", norms, image_ids=[1])
