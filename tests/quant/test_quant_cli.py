"""``aciq evaluate`` / ``aciq sweep`` end to end on generated ImageFolder data and a random-weight model."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aciq.quant import fashion_mnist as fm
from aciq.quant.cli import build_config
from aciq.quant.config import PerChannel, preset
from aciq.theory.cli import main

needs_fmnist = pytest.mark.skipif(not fm.DEFAULT_ROOT.is_dir(),
                                  reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class ImageFolder of 12 random 40x48 RGB images (not a multiple of the crop size)."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for c in range(3):
        d = root / f"n0000000{c}"
        d.mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A mobilenet_v2 state dict (random init, seeded): small, with depthwise convs and BN."""
    from aciq.quant.zoo import load_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mnv2.pt"
    torch.save(load_model("mobilenet_v2", pretrained=False).state_dict(), path)
    return path


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr()


def _eval_args(folder, weights, tmp_path, *extra):
    return ("evaluate", "--model", "mobilenet_v2", "--weights", str(weights), "--data", str(folder),
            "--calib-images", "4", "--batch-size", "3", "--no-progress", "--results", str(tmp_path / "r.csv"),
            *extra)


def test_evaluate_writes_a_csv_row_and_json(capsys, folder, weights, tmp_path):
    code, out = _run(capsys, *_eval_args(folder, weights, tmp_path, "--preset", "w4a4-all", "-a", "8", "--json"))
    assert code == 0
    row = json.loads(out.out)
    assert row["model"] == "mobilenet_v2" and row["preset"] == "w4a4-all" and row["act_bits"] == 8
    assert row["n"] == 8 and row["calib_images"] == 4          # 12 images, 4 drawn for calibration
    assert 0 <= row["top1"] <= 100 and 0 <= row["agreement"] <= 100
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 1 and rows[0]["preset"] == "w4a4-all"
    code, _ = _run(capsys, *_eval_args(folder, weights, tmp_path, "--preset", "float"))
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 2 and rows[1]["config"] == "float" and float(rows[1]["agreement"]) == 100.0


def test_stats_save_then_load_gives_the_same_result(capsys, folder, weights, tmp_path):
    stats = tmp_path / "stats"
    _, out1 = _run(capsys, *_eval_args(folder, weights, tmp_path, "--preset", "w4a4-pt-aciq", "--json",
                                       "--stats-save", str(stats)))
    assert (tmp_path / "stats.json").is_file() and (tmp_path / "stats.npz").is_file()
    _, out2 = _run(capsys, *_eval_args(folder, weights, tmp_path, "--preset", "w4a4-pt-aciq", "--json",
                                       "--stats-load", str(stats)))
    a, b = json.loads(out1.out), json.loads(out2.out)
    for key in ("top1", "top5", "agreement", "mean_kl", "logit_sqnr_db"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9)


def test_sequential_presets_run_from_the_command_line(capsys, folder, weights, tmp_path):
    """The *-best presets calibrate sequentially (no float statistics): evaluate and sweep run them;
    --stats-save / --stats-load are refused by name."""
    from aciq.quant import preset as get

    code, out = _run(capsys, *_eval_args(folder, weights, tmp_path, "--preset", "w4a8-best", "--json"))
    assert code == 0
    row = json.loads(out.out)
    assert row["calib_images"] == 4 and row["config"] == get("w4a8-best").describe()
    code, out = _run(capsys, "sweep", "--models", "mobilenet_v2", "--weights", str(weights), "--data", str(folder),
                     "--presets", "w4a4-best", "--calib-images", "4", "--batch-size", "3", "--no-progress",
                     "--results", str(tmp_path / "s.csv"))
    assert code == 0
    swept = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["preset"] for r in swept] == ["w4a4-best"]
    for option in ("--stats-save", "--stats-load"):
        with pytest.raises(SystemExit) as exc:
            main(list(_eval_args(folder, weights, tmp_path, "--preset", "w4a8-best", option, str(tmp_path / "st"))))
        assert exc.value.code == 2 and "calibrates sequentially" in capsys.readouterr().err


def test_stats_for_another_model_is_refused(capsys, folder, weights, tmp_path):
    from aciq.quant import collect_statistics, preset as get
    from aciq.quant.zoo import load_model

    other = load_model("resnet18", pretrained=False)
    collect_statistics(other, get("w4a4-pt-aciq"), [torch.randn(2, 3, 64, 64)]).save(tmp_path / "other")
    with pytest.raises(SystemExit) as exc:
        main(list(_eval_args(folder, weights, tmp_path, "--preset", "w4a4-pt-aciq",
                             "--stats-load", str(tmp_path / "other"))))
    assert exc.value.code == 2
    assert "another model" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (("--model", "alexnet"), "--model"),
    (("--model", "mobilenet_v2", "--data", "/nonexistent/val"), "/nonexistent"),
    (("--model", "mobilenet_v2", "--preset", "nope"), "preset"),
    (("--model", "mobilenet_v2", "-w", "9"), "weight_bits"),
    (("--model", "mobilenet_v2", "--weights", "/nonexistent.pt"), "/nonexistent.pt"),
])
def test_bad_input_exits_2_naming_the_argument(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--no-progress", "--results", "", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sweep_prints_a_markdown_table(capsys, folder, weights, tmp_path):
    code, out = _run(capsys, "sweep", "--models", "mobilenet_v2", "--weights", str(weights), "--data", str(folder),
                     "--presets", "float", "w4a4-naive", "--bits", "4/4", "8/8", "--calib-images", "3",
                     "--batch-size", "4", "--no-progress", "--results", str(tmp_path / "s.csv"))
    assert code == 0
    lines = out.out.strip().splitlines()
    assert lines[0].startswith("| model | preset |") and len(lines) == 2 + 3   # float once + 2 bit-widths
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [(r["preset"], r["weight_bits"], r["act_bits"]) for r in rows] == [
        ("float", "", ""), ("w4a4-naive", "4", "4"), ("w4a4-naive", "8", "8")]


def test_sweep_from_python_returns_the_rows_the_command_prints(capsys, folder, weights, tmp_path):
    from aciq.quant.cli import sweep

    argv = ["--models", "mobilenet_v2", "--weights", str(weights), "--data", str(folder), "--presets", "float",
            "w4a8-naive", "--calib-images", "4", "--batch-size", "3", "--no-progress", "--results",
            str(tmp_path / "r.csv"), "--markdown", str(tmp_path / "t.md")]
    rows = sweep(argv)
    assert capsys.readouterr().out == ""                      # nothing printed
    assert [(r["model"], r["preset"], r["n"]) for r in rows] == [("mobilenet_v2", "float", 8),
                                                                ("mobilenet_v2", "w4a8-naive", 8)]
    code, out = _run(capsys, "sweep", *argv, "--json")
    assert code == 0
    printed = json.loads(out.out)
    assert [(r["preset"], r["top1"], r["agreement"]) for r in printed] == [
        (r["preset"], r["top1"], r["agreement"]) for r in rows]
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 4   # both calls appended their rows
    assert (tmp_path / "t.md").read_text().count("mobilenet_v2") == 2


@pytest.mark.parametrize("argv, message", [
    (["--models", "resnet20_fmnist", "--presets", "float", "--nope"], "unrecognized arguments: --nope"),
    (["--models", "resnet20_fmnist"], "the following arguments are required: --presets"),
    (["--models", "resnet20_fmnist", "--presets", "float", "--bits", "4"], "bits must look like W/A"),
    (["--models", "vgg19", "--presets", "float"], "--models: 'vgg19' is not one of"),
    ("--models resnet20_fmnist --presets float", "argv must be a list of strings"),
])
def test_sweep_from_python_raises_value_errors(argv, message):
    from aciq.quant.cli import sweep

    with pytest.raises(ValueError, match=message):
        sweep(argv)
def test_sweep_rows_of_the_midtread_and_act_bias_presets(capsys, folder, weights, tmp_path):
    """The seed's -mtq and -bca as sweep rows; the oracle row says so in its config column."""
    names = ["w4a4-mtq", "seed-vlc-mtq", "seed-w4a4-bca", "seed-w4a4-bca-oracle"]
    code, out = _run(capsys, "sweep", "--models", "mobilenet_v2", "--weights", str(weights), "--data", str(folder),
                     "--presets", *names, "--calib-images", "3", "--batch-size", "4", "--no-progress",
                     "--results", str(tmp_path / "s.csv"))
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["preset"] for r in rows] == names
    assert all(0 <= float(r["agreement"]) <= 100 for r in rows)
    assert "midtread" in rows[0]["config"] and "midtread" in rows[1]["config"]
    assert "bca:calibration" in rows[2]["config"] and "ORACLE" in rows[3]["config"]


def test_build_config_applies_only_the_given_options():
    over = {k: None for k in ("weight_bits", "act_bits", "act_granularity", "bias_correction", "half_range")}
    assert build_config("w4a4-all", over) == preset("w4a4-all")
    cfg = build_config("w4a4-naive", {**over, "act_bits": 8, "act_granularity": "channel", "half_range": "off"})
    assert cfg.act_bits == 8 and cfg.act_granularity == PerChannel(axis=1) and cfg.half_range is False
    assert build_config("float", over) is None
    with pytest.raises(ValueError, match="float"):
        build_config("float", {**over, "act_bits": 4})


def test_option_choices_come_from_the_config_module():
    """Issue 9: every list of choices lives once in aciq.quant.config (and zoo, embedded); the CLI reads them."""
    from aciq.quant import config as c
    from aciq.quant.embedded import EXPERIMENTS
    from aciq.quant.zoo import MODELS
    from aciq.theory.cli import build_parser

    subs = build_parser()._subparsers._group_actions[0].choices
    for command in ("evaluate", "sensitivity"):
        opts = {a.dest: a for a in subs[command]._actions}
        assert tuple(opts["act_clipping"].choices) == tuple(opts["weight_clipping"].choices) == c.CLIPPING_MODES
        assert tuple(opts["bias_correction"].choices) == c.BIAS_CORRECTION
        assert tuple(opts["bias_form"].choices) == c.BIAS_FORMS
        assert tuple(opts["exact_prior"].choices) == c.EXACT_PRIORS
        assert tuple(opts["alloc_budget"].choices) == c.ALLOC_BUDGETS
        assert tuple(opts["act_site"].choices) == c.ACT_SITES
        assert tuple(opts["weight_quantizer"].choices) == c.WEIGHT_QUANTIZERS
        assert tuple(opts["act_quantizer"].choices) == c.ACT_QUANTIZERS
        assert tuple(opts["act_bias_correction"].choices) == c.ACT_BIAS_CORRECTION
        assert tuple(opts["act_bit_alloc"].choices) == tuple("none" if r is None else r for r in c.ALLOCATION_RULES)
        assert opts["model"].help == ", ".join(MODELS)
        assert all(name in opts["preset"].help for name in c.PRESETS)
    only = {a.dest: a for a in subs["results"]._actions}["only"]
    assert tuple(only.choices) == tuple(EXPERIMENTS)
    assert build_config("w4a4-naive", {"half_range": "on"}).half_range is True
    assert build_config("w4a4-all", {"act_bit_alloc": "none"}).act_bit_alloc is None
@needs_fmnist
@pytest.mark.parametrize("name", ["resnet20_fmnist", "mobilenet_fmnist"])
def test_evaluate_a_fashion_mnist_model(capsys, tmp_path, name):
    from aciq.quant.train_fmnist import evaluate_float
    from aciq.quant.zoo import load_model

    common = ("evaluate", "--model", name, "--limit", "200", "--calib-images", "16", "--no-progress", "--json",
              "--results", str(tmp_path / "r.csv"))
    code, out = _run(capsys, *common, "--preset", "float")
    assert code == 0
    row = json.loads(out.out)
    images, labels = fm.load("test")
    assert row["n"] == 200 and row["data"] == "fashion-mnist test (200)" and row["calib_images"] == 0
    assert row["top1"] == pytest.approx(100 * evaluate_float(load_model(name), images[:200], labels[:200]))
    code, out = _run(capsys, *common, "--preset", "w4a4-naive")
    row = json.loads(out.out)
    assert code == 0 and row["n"] == 200 and row["calib_images"] == 16 and row["weight_bits"] == 4
    assert 0 <= row["top1"] <= 100 and 0 < row["agreement"] <= 100
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 2


@needs_fmnist
def test_sweep_and_bad_weights_on_the_fashion_mnist_mobilenet(capsys, tmp_path):
    code, out = _run(capsys, "sweep", "--models", "mobilenet_fmnist", "--presets", "float", "w8a4-naive",
                     "--limit", "200", "--calib-images", "8", "--no-progress", "--json", "--results", "")
    rows = json.loads(out.out)
    assert code == 0 and [(r["model"], r["preset"], r["n"]) for r in rows] == [
        ("mobilenet_fmnist", "float", 200), ("mobilenet_fmnist", "w8a4-naive", 200)]
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", "mobilenet_fmnist", "--weights", str(tmp_path / "absent.pt"), "--limit", "10",
              "--no-progress", "--results", ""])
    assert exc.value.code == 2 and "absent.pt" in capsys.readouterr().err
