"""``aciq export`` end to end: the committed ResNet-20, Fashion-MNIST calibration, the file checked in ONNX Runtime."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from aciq.theory.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def fmnist():
    fm = pytest.importorskip("aciq.quant.fashion_mnist")
    try:
        fm.load("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (make data)")


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


@pytest.mark.slow
def test_export_writes_a_checked_file(capsys, tmp_path, fmnist):
    out = tmp_path / "r20.onnx"
    code, res = _run(capsys, "export", "--model", "resnet20_fmnist", "--preset", "w4a4-all-ongrid", "--out", str(out),
                     "--calib-images", "16", "--check", "--limit", "64", "--threads", "1", "--json")
    assert code == 0
    row = json.loads(res.out)           # only JSON on stdout (torch's exporter chatter is kept off it)
    assert row["path"] == str(out) and out.is_file() and row["opset"] == 21
    assert row["containers"] == ["uint4", "uint8"] and row["preset"] == "w4a4-all-ongrid"
    assert row["check"]["n"] == 64 and row["check"]["agreement"] >= 95.0
    assert set(row["modules"]) >= {"conv1", "layer1.0.conv1", "fc"}


@pytest.mark.slow
def test_export_integer_form(capsys, tmp_path, fmnist):
    out = tmp_path / "r20-int.onnx"
    code, res = _run(capsys, "export", "--model", "resnet20_fmnist", "--preset", "w4a4-best", "--out", str(out),
                     "--form", "integer", "--calib-images", "16", "--check", "--limit", "64", "--threads", "1",
                     "--json")
    assert code == 0
    row = json.loads(res.out)
    assert {m["form"] for m in row["modules"].values() if "form" in m} == {"integer"}
    assert row["check"]["agreement"] == 100.0 and row["check"]["max_logit_diff"] < 1e-4


def test_export_errors(capsys, tmp_path, fmnist):
    base = ("export", "--model", "resnet20_fmnist", "--calib-images", "4", "--threads", "1")
    with pytest.raises(SystemExit) as exc:
        main([*base, "--preset", "float", "--out", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2 and "quantizes nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--preset", "w4a8-bias", "--out", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2 and "bias_form='on-grid'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--preset", "w4a4-naive", "--out", str(tmp_path / "no" / "x.onnx")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--model", "nonet", "--preset", "w4a4-naive", "--out", str(tmp_path / "x.onnx")])
    assert exc.value.code == 2 and "--model must be one of" in capsys.readouterr().err
