"""Layer sensitivity (-ct, -ep): measured per-layer SQNR, mixed-precision models, the sensitivity CLI."""
import csv
import json
import math

import pytest
import torch
from torch import nn

from aciq.quant import QuantConfig, preset, quantize
from aciq.quant import fashion_mnist as fm
from aciq.quant.api import prepare
from aciq.quant.sensitivity import high_precision, keep_layers, layer_sqnr, quantized_layers, sensitivity_figure
from aciq.theory.cli import main


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10)).eval()


@pytest.fixture(scope="module")
def setup():
    net = _net()
    calib = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = preset("w4a4-naive").replace(first_layer_bits=None, last_layer_bits=None)
    low = quantize(net, cfg, calib)
    high = quantize(net, high_precision(cfg), calib)
    folded = prepare(net, calib, cfg).model
    return net, calib, cfg, low, high, folded


def test_layer_sqnr_is_the_error_of_each_layer_on_its_float_input(setup):
    net, calib, cfg, low, high, folded = setup
    sqnr = layer_sqnr(low, folded, [calib[:3], calib[3:]])
    assert list(sqnr) == quantized_layers(low) == ["0", "3", "5", "8"]
    # independently: capture the float input of layer "3", run both versions of the layer on it
    seen = {}
    h = folded[3].register_forward_hook(lambda m, a, o: seen.update(x=a[0], y=o))
    with torch.no_grad():
        folded(calib)
        y_hat = low[3](seen["x"])
    h.remove()
    y = seen["y"].double()
    expect = 10 * math.log10(float((y ** 2).sum()) / float(((y_hat.double() - y) ** 2).sum()))
    assert sqnr["3"] == pytest.approx(expect, rel=1e-9)
    # 8-bit versions of the same layers are far more accurate
    high_sqnr = layer_sqnr(high, folded, calib)
    assert all(high_sqnr[n] > sqnr[n] + 10 for n in sqnr)
    exact = quantize(net, QuantConfig(weight_bits=None, act_bits=None), calib)
    assert all(v == math.inf for v in layer_sqnr(exact, folded, calib).values())


def test_keep_layers_swaps_whole_layers_and_leaves_the_low_model_alone(setup):
    net, calib, cfg, low, high, folded = setup
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_low, ref_high = low(x), high(x)
        assert torch.equal(keep_layers(low, high, quantized_layers(low))(x), ref_high)
        assert torch.equal(keep_layers(low, high, [])(x), ref_low)
        mixed = keep_layers(low, high, ["3"])
        assert not torch.equal(mixed(x), ref_low) and torch.equal(low(x), ref_low)
    assert mixed[3].quant.weight_grid.bits.max() == 8 and low[3].quant.weight_grid.bits.max() == 4
    assert mixed.aciq_kept == ("3",) and mixed.aciq_report["3"] == high.aciq_report["3"]
    with pytest.raises(ValueError, match="keep"):
        keep_layers(low, high, ["2"])             # a ReLU, not a quantized layer
    with pytest.raises(ValueError, match="no quantized layers"):
        quantized_layers(net)


def test_high_precision_and_the_figure(setup):
    cfg = setup[2]
    hp = high_precision(cfg.replace(act_avg_bits=3.5), 6)
    assert (hp.weight_bits, hp.act_bits, hp.act_avg_bits) == (6, 6, None)
    assert high_precision(cfg.replace(act_bits=None)).act_bits is None
    fig = sensitivity_figure([{"keep": 0, "top1": 90.0, "agreement": 95.0}, {"keep": 2, "top1": 91.0,
                                                                           "agreement": 97.0}],
                             [{"bits": 8, "top1": 92.0, "agreement": None}], title="t")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1


def _has_fmnist():
    try:
        fm.find_root(split="test")
        fm.find_root(split="train")
    except (FileNotFoundError, ValueError):
        return False
    return True


needs_fmnist = pytest.mark.skipif(not _has_fmnist(), reason="Fashion-MNIST not installed (make data)")
RUN = ("--limit", "96", "--calib-images", "16", "--batch-size", "48", "--threads", "1", "--no-progress")


@needs_fmnist
def test_sensitivity_cli_writes_ranking_sweeps_and_plot(tmp_path, capsys):
    code = main(["sensitivity", "--model", "resnet20_fmnist", "--preset", "w4a4-naive", "--keep", "0", "2",
                 "--bits", "8", "4", "--out", str(tmp_path), "--results", str(tmp_path / "r.csv"), "--json", *RUN])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    ranking = out["layers"]
    assert [r["rank"] for r in ranking] == list(range(1, 23))            # ResNet-20: 22 conv/linear layers
    assert all(a["sqnr_db"] <= b["sqnr_db"] for a, b in zip(ranking, ranking[1:]))
    rows = list(csv.DictReader(open(tmp_path / "sensitivity-resnet20_fmnist-w4a4-naive.csv")))
    assert [(r["sweep"], r["keep"], r["bits"]) for r in rows] == [("keep", "0", "4"), ("keep", "2", "4"),
                                                                   ("bits", "0", "8"), ("bits", "0", "4")]
    assert rows[1]["kept"] == ";".join(r["layer"] for r in ranking[:2])
    assert rows[0]["top1"] == rows[3]["top1"]                             # keep 0 == the 4-bit model
    assert (tmp_path / "sensitivity-resnet20_fmnist-w4a4-naive.png").stat().st_size > 1000
    layers = list(csv.DictReader(open(tmp_path / "sensitivity-resnet20_fmnist-w4a4-naive-layers.csv")))
    assert [r["layer"] for r in layers] == [r["layer"] for r in ranking]
    results = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["preset"] for r in results] == ["w4a4-naive+keep0", "w4a4-naive+keep2", "w4a4-naive@8bit",
                                              "w4a4-naive@4bit"]
    with pytest.raises(SystemExit):
        main(["sensitivity", "--model", "resnet20_fmnist", "--preset", "w4a4-naive", "--keep", "99",
              "--out", str(tmp_path), "--results", "", *RUN])
    assert "22 quantized layers" in capsys.readouterr().err


@needs_fmnist
def test_sweep_rows_for_kept_layers_and_norms(tmp_path, capsys):
    code = main(["sweep", "--models", "resnet20_fmnist", "--presets", "float", "w4a4-naive", "--keep-8bit", "0", "3",
                 "--norms", str(tmp_path / "norms"), "--results", str(tmp_path / "s.csv"), "--json", *RUN])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["preset"] for r in rows] == ["float", "w4a4-naive", "w4a4-naive+keep3"]
    assert rows[2]["agreement"] >= 0 and rows[2]["config"].endswith("keep8:3")
    files = sorted(p.name for p in (tmp_path / "norms").iterdir())
    assert files == ["norms-resnet20_fmnist-w4a4-naive-W4A4-keep3.csv", "norms-resnet20_fmnist-w4a4-naive-W4A4.csv"]
    lines = list(csv.DictReader(open(tmp_path / "norms" / files[1])))
    assert len(lines) == 96 * 22 and lines[0]["image"] == "0"
    for bad, message in (("-1", "must be >= 0"), ("30", "22 quantized layers")):
        with pytest.raises(SystemExit):
            main(["sweep", "--models", "resnet20_fmnist", "--presets", "w4a4-naive", "--keep-8bit", bad,
                  "--results", "", *RUN])
        assert message in capsys.readouterr().err
