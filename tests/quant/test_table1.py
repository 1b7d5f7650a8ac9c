"""Choosing and running the Table 1 protocol (aciq.quant.table1): ImageNet when given, else the embedded models."""
from __future__ import annotations

import shlex

import pytest

from aciq.quant import cli
from aciq.quant.config import PAPER_TABLE_PRESETS
from aciq.quant.paper import SEED_README, TABLE1_MODELS
from aciq.quant.table1 import (EMBEDDED, ENV_IMAGENET, ENV_WEIGHTS, Protocol, presets, protocol, run,
                               weights_file)

PAPER_PRESETS = list(dict.fromkeys(PAPER_TABLE_PRESETS.values()))


def _opt(argv, name):
    argv = list(argv)
    return argv[argv.index(name) + 1] if name in argv else None


def _parse(argv):
    """The argv as ``aciq sweep`` parses it, and the sweep's plan (validates models, presets, weights)."""
    parser = cli._Parser(prog="aciq")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *argv])
    return args, cli._sweep_plan(args)


@pytest.fixture
def imagenet(tmp_path):
    root = tmp_path / "ILSVRC2012" / "val" / "n01440764"
    root.mkdir(parents=True)
    return tmp_path / "ILSVRC2012"


def test_presets_of_a_sweep():
    assert presets("resnet18") == ["float", *PAPER_PRESETS]
    assert presets("resnet50") == ["float", *PAPER_PRESETS, *SEED_README]


@pytest.mark.parametrize("environ", [{}, {ENV_IMAGENET: ""}, {"ACIQ_FASHION_MNIST": "/x"}])
def test_no_imagenet_chooses_the_embedded_models(environ):
    p = protocol(environ=environ)
    assert p.mode == "embedded" and [m for m, _ in p.sweeps] == list(EMBEDDED)
    assert p.note.startswith(f"No ImageNet folder ({ENV_IMAGENET} is not set)")
    assert "100 Fashion-MNIST test images" in p.note and "photos 10-19" in p.note
    assert p.reference == {m: "resnet50" for m in EMBEDDED}
    for (model, argv), (n, calib, _) in zip(p.sweeps, EMBEDDED.values()):
        args, plan = _parse(argv)
        assert args.models == [model] and args.presets == presets("resnet50") and args.data is None
        assert args.limit == n and args.calib_images == calib and args.results == "" and args.threads == 1
        assert len(plan) == 1 + len(PAPER_PRESETS) + len(SEED_README)


def test_the_embedded_limit_can_be_lowered():
    p = protocol(limit=7, environ={})
    assert all(_parse(argv)[0].limit == 7 for _, argv in p.sweeps) and "at most 7" in p.note


def test_imagenet_from_the_environment_runs_the_papers_six_models(imagenet):
    p = protocol(environ={ENV_IMAGENET: str(imagenet)}, device="cpu", results="t1.csv", workers=3)
    assert p.mode == "imagenet" and [m for m, _ in p.sweeps] == list(TABLE1_MODELS)
    assert p.note.startswith(f"ImageNet: {imagenet}.") and "torchvision's DEFAULT weights" in p.note
    assert p.reference == {m: m for m in TABLE1_MODELS}
    for model, argv in p.sweeps:
        args, plan = _parse(argv)
        assert args.data == str(imagenet) and args.calib_images == 32 and args.limit is None
        assert args.device == "cpu" and args.workers == 3 and args.results == "t1.csv" and args.weights is None
        assert args.presets == presets(model) and len(plan) == len(presets(model))
    assert len(_parse(dict(p.sweeps)["resnet50"])[1]) == 1 + len(PAPER_PRESETS) + len(SEED_README)


def test_an_explicit_argument_beats_the_environment(imagenet, tmp_path):
    p = protocol(imagenet, environ={ENV_IMAGENET: str(tmp_path / "elsewhere")}, device="cpu", limit=50)
    assert all(_opt(argv, "--data") == str(imagenet) and _opt(argv, "--limit") == "50" for _, argv in p.sweeps)


def test_weights_folder_gives_one_file_per_model(imagenet, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    files = {}
    for i, m in enumerate(TABLE1_MODELS):
        files[m] = folder / (f"{m}.pth" if i % 2 else f"{m}.pt")
        files[m].write_bytes(b"")
    p = protocol(imagenet, environ={ENV_WEIGHTS: str(folder)}, device="cpu")
    for model, argv in p.sweeps:
        args, _ = _parse(argv)
        assert args.weights == str(files[model])
    assert f"weights from {folder}" in p.note


def test_weights_file_prefers_our_name_then_torchvisions(tmp_path):
    from torchvision import models

    v1 = models.ResNet50_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    v2 = models.ResNet50_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    assert v1 != v2
    (tmp_path / v2).write_bytes(b"")
    assert weights_file(tmp_path, "resnet50") == tmp_path / v2      # torch.hub's cache of the DEFAULT file
    (tmp_path / v1).write_bytes(b"")
    assert weights_file(tmp_path, "resnet50") == tmp_path / v1      # the paper's weights first
    (tmp_path / "resnet50.pth").write_bytes(b"")
    assert weights_file(tmp_path, "resnet50") == tmp_path / "resnet50.pth"


def test_bad_paths_are_clear_errors(imagenet, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=f"imagenet: {missing} is not a folder.*{ENV_IMAGENET}"):
        protocol(environ={ENV_IMAGENET: str(missing)})
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="imagenet: .*file.txt is not a folder"):
        protocol(tmp_path / "file.txt", environ={})
    with pytest.raises(ValueError, match=f"weights: {missing} is not a folder.*{ENV_WEIGHTS}"):
        protocol(imagenet, missing, environ={})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"holds no weights of vgg16 \(looked for vgg16.pth, vgg16.pt, vgg16-"):
        protocol(imagenet, empty, environ={})
    with pytest.raises(ValueError, match=f"without an ImageNet folder.*{ENV_IMAGENET}"):
        protocol(environ={ENV_WEIGHTS: str(empty)})


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "10"])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        protocol(limit=limit, environ={})


def test_commands_are_the_shell_form_of_the_sweeps():
    p = protocol(environ={})
    assert [shlex.split(c) for c in p.commands] == [["aciq", "sweep", *argv] for _, argv in p.sweeps]
    assert "--results ''" in p.commands[0]


def test_run_gives_the_rows_of_every_sweep_in_order():
    argv = ("--models", "resnet20_fmnist", "--presets", "float", "w4a8-naive", "--limit", "20", "--calib-images",
            "8", "--results", "", "--no-progress", "--threads", "1")
    p = Protocol("embedded", (("resnet20_fmnist", argv), ("resnet20_fmnist", argv[:3] + ("seed-w4a4-naive",)
                                                                             + argv[5:])))
    rows = run(p)
    assert [(r["model"], r["preset"]) for r in rows] == [("resnet20_fmnist", "float"),
                                                         ("resnet20_fmnist", "w4a8-naive"),
                                                         ("resnet20_fmnist", "seed-w4a4-naive")]
    assert all(r["n"] == 20 for r in rows) and rows[0]["agreement"] == 100.0
    with pytest.raises(ValueError, match="protocol must be a Protocol"):
        run([argv])
