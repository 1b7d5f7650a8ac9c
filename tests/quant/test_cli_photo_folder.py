"""``aciq evaluate --data FOLDER`` on flat folders of unlabelled photos, ``--eval-crops`` and ``--calib photos``.

Generated photos (small random PNG/JPEG files) and a tiny network with ImageNet preprocessing (resnet18's:
resize 256, crop 224), so each test takes a fraction of a second; one end-to-end command on a random-weight
mobilenet_v2.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from aciq.quant import photos as ph
from aciq.quant import preset
from aciq.quant.cli import _data, run
from aciq.quant.evaluate import PhotoFolder
from aciq.theory.cli import build_parser, main

MODEL = "resnet18"
N = 7   # photos in the flat folder


def _photo(path, rng, size):
    small = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    small.resize(size, Image.BILINEAR).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """7 distinct photos (PNG and JPEG, several sizes) and a text file that is not a photo."""
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(0)
    for i in range(N):
        _photo(root / f"photo{i}.{'png' if i % 2 else 'jpg'}", rng, (60 + 4 * i, 50 + 3 * i))
    (root / "SOURCES.csv").write_text("file,source\n")
    return root


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """An ImageFolder: 2 classes of 2 photos."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(1)
    for c in range(2):
        (root / f"n0{c}").mkdir()
        for i in range(2):
            _photo(root / f"n0{c}" / f"img{i}.png", rng, (48, 40))
    return root


def _spec(data, *extra):
    return build_parser().parse_args(["evaluate", "--model", MODEL, "--data", str(data), "--no-progress",
                                      "--results", "", *extra])


def _scored(loader) -> torch.Tensor:
    batches = list(loader)
    assert all(y is None for _, y in batches)   # unlabelled
    return torch.cat([x for x, _ in batches])


def _positions(rows, reference) -> list[int]:
    """The index in ``reference`` of every row of ``rows`` (each must equal one exactly)."""
    out = []
    for row in rows:
        hits = [i for i, r in enumerate(reference) if torch.equal(row, r)]
        assert len(hits) == 1
        out.append(hits[0])
    return out


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 7, stride=8), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 1000)).eval()


def test_calibration_photos_are_seeded_and_never_scored(flat):
    files = ph.image_files(flat)
    plain = torch.cat([PhotoFolder(files, MODEL)[i] for i in range(N)])   # the eval preprocessing of each photo
    drawn = {}
    for seed in (0, 1):
        calib, loader, desc = _data(_spec(flat, "--calib-images", "3", "--seed", str(seed), "--batch-size", "2"),
                                    MODEL)
        cal, ev = _positions(calib, plain), _positions(_scored(loader), plain)
        assert len(cal) == 3 and set(cal).isdisjoint(ev) and sorted(cal + ev) == list(range(N))
        assert ev == sorted(ev)                                  # scored in file order
        assert desc == f"{flat} (4 photos, unlabelled)"
        drawn[seed] = sorted(cal)
    assert drawn[0] != drawn[1]
    again, _, _ = _data(_spec(flat, "--calib-images", "3", "--seed", "0"), MODEL)
    assert sorted(_positions(again, plain)) == drawn[0]


def test_eval_crops_of_a_photo_do_not_depend_on_the_batch(flat):
    files = ph.image_files(flat)
    plain = torch.cat([PhotoFolder(files, MODEL)[i] for i in range(N)])
    calib, loader, desc = _data(_spec(flat, "--calib-images", "2", "--eval-crops", "3", "--seed", "4",
                                      "--batch-size", "1"), MODEL)
    assert len(_positions(calib, plain)) == 2                   # calibration: the eval preprocessing, not crops
    x = _scored(loader)
    assert x.shape == (3 * (N - 2), 3, 224, 224) and desc == f"{flat} (5 photos x 3 crops, unlabelled)"
    _, big, _ = _data(_spec(flat, "--calib-images", "2", "--eval-crops", "3", "--seed", "4", "--batch-size", "64"),
                      MODEL)
    assert torch.equal(_scored(big), x)
    _, limited, _ = _data(_spec(flat, "--calib-images", "2", "--eval-crops", "3", "--seed", "4", "--limit", "2"),
                          MODEL)
    assert torch.equal(_scored(limited), x[:6])
    scored = [i for i in range(N) if i not in _positions(calib, plain)]
    expected = torch.cat([ph.crop_batch([ph.read_photo(files[i], index=i)], model_name=MODEL, n_per_photo=3, seed=5)
                          for i in scored])                      # seed --seed + 1, keyed by the file's position
    assert torch.equal(x, expected)


def test_calib_photos_uses_foolbox_crops_and_scores_everything(flat, classes):
    calib, loader, desc = _data(_spec(flat, "--calib", "photos", "--calib-images", "5", "--seed", "2"), MODEL)
    torch.testing.assert_close(calib, ph.spread_crops(ph.load_photos(), model_name=MODEL, n=5, seed=2), rtol=0,
                               atol=0)
    files = ph.image_files(flat)
    assert torch.equal(_scored(loader), torch.cat([PhotoFolder(files, MODEL)[i] for i in range(N)]))
    assert desc == f"{flat} ({N} photos, unlabelled)"
    calib, loader, desc = _data(_spec(classes, "--calib", "photos", "--calib-images", "3"), MODEL)
    assert calib.shape == (3, 3, 224, 224)
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == [0, 0, 1, 1] and desc == f"{classes} (4)"   # every labelled image scored


def test_run_on_a_flat_folder_reports_fidelity_without_top1(flat):
    spec = _spec(flat, "--calib-images", "3", "--eval-crops", "2", "--batch-size", "4")
    model = tiny()
    row = run(spec, model_name=MODEL, preset_name="w4a4-all", config=preset("w4a4-all"), model=model, record=False)
    assert row["top1"] is None and row["top5"] is None
    assert row["n"] == 2 * (N - 3) and row["calib_images"] == 3
    assert 0 <= row["agreement"] <= 100 and row["mean_kl"] >= 0 and np.isfinite(row["logit_sqnr_db"])
    same = run(spec, model_name=MODEL, preset_name=None, config=None, model=model, record=False)
    assert same["agreement"] == 100.0 and same["top1"] is None and same["n"] == row["n"]


def test_evaluate_command_on_a_flat_folder(capsys, flat, tmp_path):
    from aciq.quant.zoo import load_model

    torch.manual_seed(0)
    weights = tmp_path / "mnv2.pt"
    torch.save(load_model("mobilenet_v2", pretrained=False).state_dict(), weights)
    code = main(["evaluate", "--model", "mobilenet_v2", "--weights", str(weights), "--data", str(flat),
                 "--preset", "w4a8-naive", "--calib-images", "2", "--eval-crops", "2", "--limit", "2",
                 "--no-progress", "--results", str(tmp_path / "r.csv"), "--json"])
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert row["top1"] is None and row["n"] == 4 and row["calib_images"] == 2 and "unlabelled" in row["data"]
    assert (tmp_path / "r.csv").read_text().count("\n") == 2


def _mixed(d):
    _photo(d / "a.png", np.random.default_rng(2), (40, 40))
    (d / "n01").mkdir()


def _corrupt(d):
    for i in range(3):
        _photo(d / f"ok{i}.png", np.random.default_rng(i), (40, 40))
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")


def _foolbox_copy(d):
    _photo(d / "mine.png", np.random.default_rng(3), (40, 40))
    shutil.copy(ph.load_photos()[7].path, d / "copied.jpg")


@pytest.mark.parametrize("make, argv, message", [
    (None, ["--calib", "photos"], "--calib photos .* give --data PATH"),
    (None, ["--eval-crops", "2"], "--eval-crops applies to a flat folder"),
    (None, ["--model", "resnet20_fmnist", "--calib", "photos"], "resnet20_fmnist"),
    ("flat", ["--model", "mobilenet_fmnist", "--calib", "photos"], "give --data PATH .*, not mobilenet_fmnist"),
    ("flat", ["--model", "mobilenet_fmnist", "--eval-crops", "2"], "--eval-crops applies to a flat folder"),
    ("flat", ["--eval-crops", "-1"], "--eval-crops must be >= 0"),
    ("flat", ["--calib-images", str(N)], f"--calib-images {N} leaves no evaluation image in .*flat"),
    ("classes", ["--eval-crops", "2"], "classes.* is an ImageFolder"),
    (_mixed, [], "holds both image files .* and subfolders"),
    (_corrupt, ["--calib-images", "1"], "broken.jpg cannot be read"),
    (_foolbox_copy, ["--calib", "photos"], "copied.jpg is the calibration photo .*imagenet_07_"),
])
def test_bad_data_exits_2_naming_the_argument_or_file(capsys, flat, classes, tmp_path, make, argv, message):
    data = {"flat": flat, "classes": classes}.get(make) if not callable(make) else tmp_path
    if callable(make):
        make(tmp_path)
    model = ["--model", MODEL] if "--model" not in argv else []
    spec = build_parser().parse_args(["evaluate", *model, *(["--data", str(data)] if data else []), *argv,
                                      "--no-progress", "--results", ""])
    with pytest.raises(ValueError, match=message):   # what ``aciq evaluate`` prints before exiting with 2
        run(spec, model_name=spec.model, preset_name=None, config=None, model=tiny(), record=False)
    if make in (None, "flat"):                       # the command itself, where it fails before any model loads
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", *model, *(["--data", str(data)] if data else []), *argv, "--no-progress",
                  "--results", ""])
        assert exc.value.code == 2
        assert re.search(message, capsys.readouterr().err)
