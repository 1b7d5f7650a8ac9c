"""Experiment tracking: ``aciq evaluate`` / ``aciq sweep`` rows logged to MLflow (``--mlflow [URI]``).

Optional: needs the ``tracking`` extra (``pip install 'aciq[tracking]'``, MLflow's client ``mlflow-skinny``);
nothing else imports MLflow. Every results row becomes one MLflow run: the quantization config and the run
settings as parameters, the numeric results as metrics (a non-finite one, e.g. the float model's infinite
SQNR, as a tag ``metric.<name>`` since MLflow stores finite floats only), and the rows as a CSV artifact. A
command with several rows (a sweep) logs one parent run holding the artifacts (the CSV, the markdown table,
any figure) with one nested run per row.

The default store is ``./mlruns``, a local file store, so it works offline. MLflow 3 keeps that backend in
maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is true: :func:`log_rows` sets that for a
``file:`` store while it logs (and restores it after). Any other URI (``sqlite:///mlflow.db``, a tracking
server) is passed to MLflow as given.
"""
from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["DEFAULT_URI", "METRICS", "tracking_uri", "log_rows"]

DEFAULT_URI = "mlruns"
METRICS = ("top1", "top5", "agreement", "mean_kl", "logit_sqnr_db", "n", "calib_images", "calib_s", "eval_s",
           "float_eval_s")
"""Row fields logged as metrics (when present and numeric)."""


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise ValueError("--mlflow needs MLflow's client: pip install 'aciq[tracking]' (mlflow-skinny)") from None
    return mlflow


def tracking_uri(uri: str | None) -> str:
    """``uri`` as MLflow takes it: a path (the default ``mlruns``) becomes an absolute ``file:`` URI."""
    uri = DEFAULT_URI if uri in (None, "") else str(uri)
    scheme = urlparse(uri).scheme
    if scheme and len(scheme) > 1:          # file:, sqlite:, http(s):, databricks ... (not a drive letter)
        return uri
    return Path(uri).expanduser().resolve().as_uri()


@contextmanager
def _file_store_allowed(uri: str):
    if urlparse(uri).scheme != "file":
        yield
        return
    old = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = old


def _param(v) -> str:
    return "" if v is None else str(v)


def _split(row: dict):
    metrics, tags = {}, {}
    for k in METRICS:
        v = row.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            metrics[k] = float(v)
        else:
            tags[f"metric.{k}"] = str(v)
    return metrics, tags


def _log_row(mlflow, row: dict, params: dict) -> None:
    """Parameters, metrics and tags of one row, into the active run."""
    metrics, tags = _split(row)
    mlflow.log_params({k: _param(v) for k, v in params.items()})
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.set_tags({"aciq.model": _param(row.get("model")), "aciq.preset": _param(row.get("preset")), **tags})


def log_rows(records, *, uri: str | None = None, experiment: str = "aciq", run_name: str | None = None,
             artifacts=(), csv_columns=None) -> str:
    """Log ``records`` (a list of ``(row, params)``) to MLflow; return the id of the top run.

    Parameters
    ----------
    records : list of (dict, dict)
        The results rows (``aciq.quant.cli.run``) and the parameters of each (config fields, run settings).
    uri : str, optional
        Tracking URI or a folder (default ``./mlruns``).
    experiment : str
        MLflow experiment name (created if missing).
    run_name : str, optional
        Name of the top run (one row: the row's run).
    artifacts : iterable of paths
        Files attached to the top run (a figure, a markdown table); missing ones are skipped.
    csv_columns : sequence of str, optional
        Columns of the CSV of the rows attached as ``results.csv`` (default
        :data:`aciq.quant.evaluate.RESULT_COLUMNS`).
    """
    from .evaluate import RESULT_COLUMNS, write_csv

    records = list(records)
    if not records:
        raise ValueError("nothing to log: no results rows")
    if not isinstance(experiment, str) or not experiment:
        raise ValueError(f"--mlflow-experiment must be a non-empty name, got {experiment!r}")
    mlflow = _mlflow()
    uri = tracking_uri(uri)
    with _file_store_allowed(uri), tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        csv_path = write_csv(Path(tmp) / "results.csv", [r for r, _ in records], csv_columns or RESULT_COLUMNS)
        files = [csv_path] + [Path(a) for a in artifacts if a and Path(a).is_file()]
        if len(records) == 1:
            row, params = records[0]
            with mlflow.start_run(run_name=run_name or f"{row.get('model')} {row.get('preset')}") as top:
                _log_row(mlflow, row, params)
                for f in files:
                    mlflow.log_artifact(str(f))
            return top.info.run_id
        with mlflow.start_run(run_name=run_name or f"sweep ({len(records)} rows)") as top:
            for f in files:
                mlflow.log_artifact(str(f))
            for row, params in records:
                with mlflow.start_run(run_name=f"{row.get('model')} {row.get('preset')}", nested=True):
                    _log_row(mlflow, row, params)
        return top.info.run_id
