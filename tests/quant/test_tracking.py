"""--mlflow: rows logged to a local MLflow store (skipped where the optional MLflow client is not installed)."""
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from aciq.quant.tracking import log_rows, tracking_uri
from aciq.theory.cli import main


@pytest.fixture
def mlflow(monkeypatch):
    """The MLflow client module; the file-store opt-in unset (log_rows must set it itself)."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    return pytest.importorskip("mlflow")


def _client(mlflow, uri, monkeypatch):
    """A client to read the store back (MLflow 3 reads a file store only with the opt-in)."""
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ      # log_rows restored the environment
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.tracking.MlflowClient(tracking_uri(uri))


def _runs(client, experiment="aciq"):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs([exp.experiment_id])


def test_uri_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(None) == (tmp_path / "mlruns").as_uri()
    assert tracking_uri("runs/x") == (tmp_path / "runs" / "x").as_uri()
    assert tracking_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert tracking_uri("http://localhost:5000") == "http://localhost:5000"


def test_missing_mlflow_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)        # import mlflow -> ImportError
    with pytest.raises(ValueError, match=r"aciq\[tracking\]"):
        log_rows([({"model": "m", "top1": 1.0}, {})], uri=str(tmp_path / "mlruns"))


def test_rows_params_metrics_and_artifacts(tmp_path, mlflow, monkeypatch):
    fig = tmp_path / "plot.png"
    fig.write_bytes(b"\x89PNG fake")
    rows = [({"model": "resnet20_fmnist", "preset": "float", "top1": 93.0, "logit_sqnr_db": math.inf, "n": 10},
             {"model": "resnet20_fmnist", "preset": "float", "config": "float"}),
            ({"model": "resnet20_fmnist", "preset": "w4a4-all", "top1": 91.5, "mean_kl": 0.01, "n": 10},
             {"model": "resnet20_fmnist", "preset": "w4a4-all", "config.weight_bits": 4, "config.skip": []})]
    top = log_rows(rows, uri=str(tmp_path / "mlruns"), run_name="my sweep", artifacts=[fig, tmp_path / "none.md"])
    client = _client(mlflow, tmp_path / "mlruns", monkeypatch)
    runs = {r.info.run_id: r for r in _runs(client)}
    assert len(runs) == 3
    parent = runs[top]
    assert parent.data.tags["mlflow.runName"] == "my sweep"
    assert sorted(a.path for a in client.list_artifacts(top)) == ["plot.png", "results.csv"]
    children = [r for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == top]
    by_preset = {r.data.params["preset"]: r for r in children}
    assert set(by_preset) == {"float", "w4a4-all"}
    assert by_preset["float"].data.metrics == {"top1": 93.0, "n": 10.0}
    assert by_preset["float"].data.tags["metric.logit_sqnr_db"] == "inf"        # MLflow stores finite floats
    assert by_preset["w4a4-all"].data.metrics["mean_kl"] == 0.01
    assert by_preset["w4a4-all"].data.params["config.weight_bits"] == "4"
    csv_text = open(client.download_artifacts(top, "results.csv", str(tmp_path))).read().splitlines()
    assert csv_text[0].startswith("time,model,preset") and len(csv_text) == 3
    with pytest.raises(ValueError, match="no results rows"):
        log_rows([], uri=str(tmp_path / "mlruns"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c in range(2):
        d = root / f"n0000000{c}"
        d.mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from aciq.quant.zoo import load_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mnv2.pt"
    torch.save(load_model("mobilenet_v2", pretrained=False).state_dict(), path)
    return path


def test_evaluate_logs_one_run(tmp_path, folder, weights, capsys, mlflow, monkeypatch):
    code = main(["evaluate", "--model", "mobilenet_v2", "--weights", str(weights), "--data", str(folder),
                 "--calib-images", "2", "--batch-size", "4", "--no-progress", "--results", "",
                 "--preset", "w4a8-naive", "--mlflow", str(tmp_path / "mlruns"), "--mlflow-experiment", "t"])
    assert code == 0
    capsys.readouterr()
    client = _client(mlflow, tmp_path / "mlruns", monkeypatch)
    (run,) = _runs(client, "t")
    p = run.data.params
    assert p["model"] == "mobilenet_v2" and p["preset"] == "w4a8-naive" and p["config.weight_bits"] == "4"
    assert p["config.act_clipping"] == "minmax" and p["calib_images"] == "2"
    assert 0 <= run.data.metrics["top1"] <= 100 and run.data.metrics["n"] == 4.0
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["results.csv"]
