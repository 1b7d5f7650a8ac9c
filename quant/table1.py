"""Regenerating the paper's Table 1 and the seed README's ResNet-50 runs with ``aciq sweep``.

:func:`protocol` decides what runs:

* **ImageNet** (an ILSVRC2012 validation ImageFolder given, or ``$ACIQ_IMAGENET``): the paper's six models
  (:data:`aciq.quant.paper.TABLE1_MODELS`), each with the float row and every preset of
  :data:`aciq.quant.config.PAPER_TABLE_PRESETS`; ResNet-50 also with the seed README's runs
  (:data:`aciq.quant.paper.SEED_README`). 32 calibration images drawn from the folder (seeded, never scored),
  every other image scored. Weights: ``<folder>/<model>.pth`` (or ``.pt``, or torchvision's own file name) from a
  weights folder (or ``$ACIQ_WEIGHTS``); without one, torchvision's ``DEFAULT`` weights from its download cache.
* **Embedded** (no ImageNet): the same presets on the two embedded models: ResNet-20 on Fashion-MNIST and
  EfficientNet-Lite0 on foolbox's labelled ImageNet photos (:mod:`aciq.quant.embedded`), on small subsets
  (:data:`EMBEDDED`) so that the test suite runs it in about a minute. Their published neighbours are
  ResNet-50's numbers (compare the drops, not the top-1 values).

:func:`run` runs one ``aciq sweep`` per model (:func:`aciq.quant.cli.sweep`, in-process) and returns the rows,
which :func:`aciq.quant.paper.compare` sets beside the published numbers.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .config import PAPER_TABLE_PRESETS
from .paper import SEED_MODEL, SEED_README, TABLE1_MODELS

__all__ = ["ENV_IMAGENET", "ENV_WEIGHTS", "EMBEDDED", "Protocol", "protocol", "presets", "weights_file", "run"]

ENV_IMAGENET = "ACIQ_IMAGENET"
"""Environment variable: the ILSVRC2012 validation ImageFolder (``PATH/<wnid>/*.JPEG`` or ``PATH/val/...``)."""
ENV_WEIGHTS = "ACIQ_WEIGHTS"
"""Environment variable: a folder of state-dict files, one per model (see :func:`weights_file`)."""

EMBEDDED = {
    # model -> (scored images, calibration images, what they are)
    "resnet20_fmnist": (100, 32, "ResNet-20 on the first 100 Fashion-MNIST test images, calibrated on 32 "
                                 "training images (seeded draw)"),
    "efficientnet_lite0": (10, 5, "EfficientNet-Lite0 on foolbox's labelled ImageNet photos 10-19, calibrated "
                                  "on one random crop of each of photos 0-4"),
}
"""The embedded protocol: per model, the images scored (``--limit``), the calibration images and a description."""

IMAGENET_CALIB = 32     # the seed README's offline statistics used 32 images (README.md:106-109)


@dataclass(frozen=True)
class Protocol:
    """What :func:`run` runs: one ``aciq sweep`` per model.

    Attributes
    ----------
    mode : {"imagenet", "embedded"}
    sweeps : tuple of (str, tuple of str)
        ``(model, argv)``: the arguments after ``aciq sweep`` for each model.
    reference : dict
        Our model -> the paper's model whose numbers stand beside it (:func:`aciq.quant.paper.compare`).
    note : str
        What runs, on what data, and how the published numbers compare: the notebook's first output.
    """

    mode: str
    sweeps: tuple
    reference: dict = field(default_factory=dict)
    note: str = ""

    @property
    def commands(self) -> list[str]:
        """The equivalent shell commands."""
        return [shlex.join(["aciq", "sweep", *argv]) for _, argv in self.sweeps]


def presets(paper_model: str) -> list[str]:
    """The presets of one model's sweep: ``float``, every preset of
    :data:`aciq.quant.config.PAPER_TABLE_PRESETS` (once each, in its order), and the seed README's runs where
    the published numbers beside the model are ResNet-50's."""
    names = ["float", *dict.fromkeys(PAPER_TABLE_PRESETS.values())]
    return names + list(SEED_README) if paper_model == SEED_MODEL else names


def _torchvision_names(model: str) -> list[str]:
    """File names of torchvision's published weights of ``model`` (IMAGENET1K_V1 first, then DEFAULT)."""
    from torchvision import models

    enum = models.get_model_weights(model)
    names = [getattr(enum, "IMAGENET1K_V1", None), enum.DEFAULT]
    return list(dict.fromkeys(w.url.rsplit("/", 1)[-1] for w in names if w is not None))


def weights_file(folder, model: str) -> Path:
    """The state-dict file of ``model`` in ``folder``: the first of ``<model>.pth``, ``<model>.pt`` and
    torchvision's file names (``IMAGENET1K_V1``, then ``DEFAULT``: e.g. ``resnet50-0676ba61.pth``, so that
    torch.hub's checkpoint cache works as a folder) that exists.

    The paper measured torchvision's 2019 weights, today's ``IMAGENET1K_V1`` (FP32 ResNet-50 76.1 %); the
    ``DEFAULT`` weights of ResNet-50 and ResNet-101 are newer (``IMAGENET1K_V2``, 80.9 % and 81.9 %).

    Raises
    ------
    ValueError
        ``folder`` is not a folder, or holds none of the names (the message lists them).
    """
    root = Path(os.fspath(folder))
    if not root.is_dir():
        raise ValueError(f"weights: {root} is not a folder (give a folder of <model>.pth state dicts, or set "
                         f"{ENV_WEIGHTS})")
    names = [f"{model}.pth", f"{model}.pt", *_torchvision_names(model)]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise ValueError(f"weights: {root} holds no weights of {model} (looked for {', '.join(names)})")


def _resolve(value, variable, environ):
    if value is None:
        value = environ.get(variable) or None
    return None if value is None else Path(os.fspath(value))


def _imagenet(data: Path, weights, device, limit, results, workers) -> Protocol:
    import torch

    if not data.is_dir():
        raise ValueError(f"imagenet: {data} is not a folder (give the ILSVRC2012 validation ImageFolder, "
                         f"<path>/<wnid>/*.JPEG or <path>/val/..., or set {ENV_IMAGENET})")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    files = {m: None if weights is None else weights_file(weights, m) for m in TABLE1_MODELS}
    sweeps = []
    for m in TABLE1_MODELS:
        argv = ["--models", m, "--presets", *presets(m), "--data", str(data), "--calib-images", str(IMAGENET_CALIB),
                "--device", device, "--workers", str(workers), "--results", results or ""]
        if files[m] is not None:
            argv += ["--weights", str(files[m])]
        if limit is not None:
            argv += ["--limit", str(limit)]
        sweeps.append((m, tuple(argv)))
    where = "torchvision's DEFAULT weights (its download cache)" if weights is None else f"weights from {weights}"
    scored = "every image but the 32 calibration images" if limit is None else f"the first {limit} images"
    note = (f"ImageNet: {data}. The paper's six models ({', '.join(TABLE1_MODELS)}), {where}, on {device}: the float "
            f"model and the paper's Table 1 rows one technique at a time, ResNet-50 also with the seed README's "
            f"runs; 32 calibration images drawn from the folder (seed 0), {scored} scored. The published numbers "
            f"stand beside ours.")
    return Protocol("imagenet", tuple(sweeps), {m: m for m in TABLE1_MODELS}, note)


def _embedded(limit) -> Protocol:
    sweeps, scored = [], []
    for m, (n, calib, _) in EMBEDDED.items():
        n = n if limit is None else min(n, limit)
        argv = ["--models", m, "--presets", *presets(SEED_MODEL), "--limit", str(n), "--calib-images", str(calib),
                "--results", "", "--no-progress", "--threads", "1"]
        sweeps.append((m, tuple(argv)))
        scored.append(str(n))
    described = "; ".join(d if limit is None else f"{d} (scored: at most {limit})" for _, _, d in EMBEDDED.values())
    note = (f"No ImageNet folder ({ENV_IMAGENET} is not set): the same protocol on the embedded models, on small "
            f"subsets so that the test suite runs this notebook in about a minute. {described}. Each model: the "
            f"float model, the paper's Table 1 presets one technique at a time and the seed README's ResNet-50 runs. "
            f"Beside them stand ResNet-50's published numbers: compare the drops from float, not the top-1 values, "
            f"and read differences of a few points on {' and '.join(scored)} images as noise.")
    return Protocol("embedded", tuple(sweeps), {m: SEED_MODEL for m in EMBEDDED}, note)


def protocol(imagenet=None, weights=None, *, device=None, limit=None, results=None, workers=None,
             environ=None) -> Protocol:
    """The runs that regenerate Table 1: on ImageNet when a folder is given, else on the embedded models.

    Parameters
    ----------
    imagenet : str or path, optional
        The ILSVRC2012 validation ImageFolder; None reads ``$ACIQ_IMAGENET`` (unset or empty: the embedded
        protocol).
    weights : str or path, optional
        A folder of state-dict files (:func:`weights_file`); None reads ``$ACIQ_WEIGHTS`` (unset: torchvision's
        ``DEFAULT`` weights, downloaded or from torch.hub's cache). Only with ImageNet.
    device : str, optional
        ImageNet: ``cuda`` when available, else ``cpu`` (default); the embedded protocol runs on the CPU.
    limit : int, optional
        Score at most this many images per row (ImageNet default: all of them; embedded: :data:`EMBEDDED`).
    results : str, optional
        ImageNet only: a CSV the rows are appended to as each finishes (``--results``); None: none.
    workers : int, optional
        ImageNet DataLoader workers (default: up to 8, the CPUs there are).
    environ : mapping, optional
        Where the two variables are read (default ``os.environ``).

    Raises
    ------
    ValueError
        ``imagenet`` or ``weights`` is not a folder; the weights folder lacks a model's file; weights without
        ImageNet; a ``limit`` that is not a positive integer.

    Examples
    --------
    >>> p = protocol(environ={})
    >>> p.mode, [m for m, _ in p.sweeps]
    ('embedded', ['resnet20_fmnist', 'efficientnet_lite0'])
    """
    environ = os.environ if environ is None else environ
    data = _resolve(imagenet, ENV_IMAGENET, environ)
    folder = _resolve(weights, ENV_WEIGHTS, environ)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if data is None:
        if folder is not None:
            raise ValueError(f"weights ({folder}) were given without an ImageNet folder: set {ENV_IMAGENET} (or "
                             f"pass imagenet=) to run the paper's models, or unset {ENV_WEIGHTS}")
        return _embedded(limit)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    return _imagenet(data, folder, device, limit, results, workers)


def run(protocol: Protocol) -> list[dict]:
    """Run every sweep of ``protocol`` (:func:`aciq.quant.cli.sweep`); all the rows, model after model."""
    from .cli import sweep

    if not isinstance(protocol, Protocol):
        raise ValueError(f"protocol must be a Protocol (from table1.protocol()), got {type(protocol).__name__}")
    rows = []
    for _, argv in protocol.sweeps:
        rows += sweep(list(argv))
    return rows
