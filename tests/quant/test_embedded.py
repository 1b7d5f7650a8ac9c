"""The embedded results tables (aciq.quant.embedded): shared statistics, the row cache, resuming, the files."""
import csv

import pytest
import torch
import torch.nn as nn

from aciq.quant import embedded
from aciq.quant.config import preset
from aciq.quant.embedded import EXPERIMENTS, Experiment, Fold, run_all, table

PRESETS = ("float", "w4a4-naive", "w4a8-bias", "w4a8-alloc-bias", "w4a8-best")


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU6(),
                        nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(24, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _folds(model, quick, seed, crops=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (40,), generator=g)
    two = [Fold([x[:4], x[4:8]], x[8:28], y[:20], crops=x[28:48] if crops else None),
           Fold([x[28:32], x[32:36]], x[8:28], y[20:], crops=x[:20] if crops else None)]
    return two[:1] if quick else two


@pytest.fixture(params=["crops", "labelled only"])
def tiny(monkeypatch, request):
    crops = request.param == "crops"
    exp = Experiment("results-tiny", "A tiny net on random images.", "tiny",
                     lambda m, q, s: _folds(m, q, s, crops), f"random-2fold-{crops}", batch=7, loader=_net)
    monkeypatch.setitem(EXPERIMENTS, "tiny", exp)
    monkeypatch.setitem(embedded.GRIDS, "table", PRESETS)
    return exp


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_rows_equal_quantizing_each_preset_alone(tiny):
    """Shared statistics change nothing: each row is the row of its preset quantized on its own."""
    from aciq.quant import quantize
    from aciq.quant.metrics import Accumulator

    rows = table("tiny", PRESETS)
    model, folds = _net(), tiny.folds(None, False, 0)
    for row in rows[1:]:
        lab, fid = Accumulator(), Accumulator()
        for f in folds:
            q = quantize(model, preset(row["preset"]), f.calibration)
            with torch.no_grad():
                ref_x, out_x = model(f.x), q(f.x)
                lab.update(out_x, labels=f.y)
                if f.crops is None:
                    fid.update(out_x, reference=ref_x)
                else:
                    fid.update(q(f.crops), reference=model(f.crops))
        assert row["top1"] == lab.compute()["top1"]
        assert row["agreement"] == fid.compute()["agreement"]
        assert row["mean_kl"] == pytest.approx(fid.compute()["mean_kl"], rel=1e-9, abs=1e-12)
    assert rows[0]["agreement"] == 100.0 and rows[0]["mean_kl"] == pytest.approx(0.0, abs=1e-12)


def test_cached_rows_are_reused_and_files_identical(tiny, tmp_path, monkeypatch):
    paths, timings = run_all(tmp_path, only=["tiny"], progress=False)
    assert [p.name for p in paths] == ["results-tiny.csv", "results-tiny.md"]
    first = [p.read_bytes() for p in paths]
    assert not any(t["cached"] for t in timings)
    assert "torch threads" in paths[1].read_text() and "calib s" not in paths[1].read_text()
    assert next(csv.reader(open(paths[0]))) == [k for k, *_ in embedded.COLUMNS]     # no timing column

    def boom(*a, **k):
        raise AssertionError("a cached row was recomputed")

    monkeypatch.setattr(embedded._Runner, "row", boom)
    paths, timings = run_all(tmp_path, only=["tiny"], progress=False)
    assert all(t["cached"] for t in timings)
    assert [p.read_bytes() for p in paths] == first


def test_an_interrupted_run_resumes_and_a_changed_recipe_recomputes(tiny, tmp_path, monkeypatch):
    real, calls = embedded._Runner.row, []

    def dies_on_the_third(self, name, presets):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, name, presets)

    monkeypatch.setattr(embedded._Runner, "row", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_all(tmp_path, only=["tiny"], progress=False)
    assert [r["preset"] for r in _read(tmp_path / "results-tiny.csv")] == list(PRESETS[:2])  # written as they finish

    calls.clear()
    monkeypatch.setattr(embedded._Runner, "row", real)
    _, timings = run_all(tmp_path, only=["tiny"], progress=False)
    assert [t["cached"] for t in timings] == [True, True, False, False, False]

    # a preset whose recipe changed is recomputed; the others stay cached
    from aciq.quant import config

    monkeypatch.setitem(config.PRESETS, "w4a8-bias", preset("w4a8-bias", bias_correction="off"))
    _, timings = run_all(tmp_path, only=["tiny"], progress=False)
    assert [t["cached"] for t in timings] == [True, True, False, True, True]
    rows = _read(tmp_path / "results-tiny.csv")
    assert "bias" not in rows[2]["config"]


def test_the_cache_key_holds_code_threads_and_protocol(tiny):
    k = embedded._row_key(tiny, "w4a4-naive", False, 0, "code-a")
    assert k == embedded._row_key(tiny, "w4a4-naive", False, 0, "code-a")
    assert k != embedded._row_key(tiny, "w4a4-naive", False, 0, "code-b")
    assert k != embedded._row_key(tiny, "w4a4-naive", True, 0, "code-a")
    assert k != embedded._row_key(tiny, "w4a4-naive", False, 1, "code-a")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert k != embedded._row_key(tiny, "w4a4-naive", False, 0, "code-a")
    finally:
        torch.set_num_threads(threads)
    assert len(embedded.code_version()) == 16


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="grid"):
        run_all(tmp_path, grid="huge", progress=False)
    with pytest.raises(ValueError, match="only"):
        run_all(tmp_path, only=["nope"], progress=False)
    with pytest.raises(ValueError, match="experiment"):
        table("nope")
    with pytest.raises(ValueError, match="preset"):
        table("resnet20_fmnist", ("float", "no-such-preset"))


def test_every_grid_names_real_presets():
    from aciq.quant.config import PRESETS

    for grid in embedded.GRIDS.values():
        assert grid[0] == "float" and all(p in PRESETS for p in grid[1:])
    assert set(embedded.TABLE_PRESETS) <= set(embedded.FULL_PRESETS)
    for bits in ("w8a4", "w4a8", "w4a4"):         # the paper's rows and the best recipes
        assert {f"{bits}-naive", f"{bits}-best"} <= set(embedded.TABLE_PRESETS)
        assert f"{bits}-best-pc" in embedded.FULL_PRESETS


def test_cli_quick_grid_writes_the_table_and_resumes(tmp_path, capsys):
    """`aciq results --grid quick` on the Fashion-MNIST ResNet-20 (1000 test images, three rows)."""
    from aciq.theory.cli import main

    argv = ["results", "--grid", "quick", "--only", "resnet20_fmnist", "--out", str(tmp_path), "--no-progress",
            "--threads", "1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / "results-resnet20-fmnist-quick.csv"),
                           str(tmp_path / "results-resnet20-fmnist-quick.md")]
    assert "3 rows computed, 0 from the cache" in err and "1 torch threads" in err
    rows = _read(tmp_path / "results-resnet20-fmnist-quick.csv")
    assert [r["preset"] for r in rows] == list(embedded.QUICK_PRESETS) and rows[0]["n"] == "1000"
    assert float(rows[0]["agreement"]) == 100.0 and 80 < float(rows[2]["top1"]) <= 100
    assert main(argv) == 0
    assert "0 rows computed, 3 from the cache" in capsys.readouterr().err
