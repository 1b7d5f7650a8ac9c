"""aciq.quant.heldout: calibrate on the foolbox photos, score crops of a held-out folder, with a tiny model."""
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from aciq.quant import heldout, photos as ph, preset, quantize
from aciq.quant.config import QuantConfig
from aciq.quant.metrics import Accumulator

MODEL = "efficientnet_lite0"   # its preprocessing (224, bicubic, (x - 127) / 128); the network is a tiny one


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 8, 3, stride=2, groups=8), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 20)).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three smooth random photos (PNG, JPEG, grayscale JPEG) and a text file."""
    root = tmp_path_factory.mktemp("heldout")
    rng = np.random.default_rng(0)
    for name, size, mode in (("p0.png", (90, 70), "RGB"), ("p1.jpg", (64, 96), "RGB"), ("p2.jpg", (80, 80), "L")):
        small = Image.fromarray(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8))
        small.resize(size, Image.BILINEAR).convert(mode).save(root / name)
    (root / "SOURCES.csv").write_text("file,source\n")
    return root


@pytest.fixture(scope="module")
def calibration_photos():
    return ph.load_photos()[:4]


@pytest.fixture(scope="module")
def rows(folder, calibration_photos):
    return heldout.heldout_table(folder, ["float", "w4a4-all", ("w8-custom", QuantConfig(weight_bits=8, act_bits=8))],
                                 models=[(MODEL, tiny())], calib_crops=2, eval_crops=3, seed=5,
                                 calibration_photos=calibration_photos, progress=False)


def test_rows_float_is_exact(rows, folder):
    assert [r["preset"] for r in rows] == ["float", "w4a4-all", "w8-custom"]
    f = rows[0]
    assert f["config"] == "float" and f["agreement"] == 100.0 and f["worst_photo_agreement"] == 100.0
    assert f["mean_kl"] == 0.0 and f["logit_sqnr_db"] == math.inf
    for r in rows:
        assert r["model"] == MODEL and r["n"] == 9 and r["photos"] == 3 and r["crops_per_photo"] == 3
        assert r["data"] == str(folder) and r["calibration"] == "4 photos x 2 crops"
        assert "top1" not in r
        assert r["worst_photo_agreement"] <= r["agreement"]


def test_quantized_row_is_the_protocol(rows, folder, calibration_photos):
    """The w4a4-all row recomputed by hand: quantize on crops (seed) of the calibration photos, in batches of
    16, score crops (seed + 1) of the folder's photos against the float model."""
    model = tiny()
    calib = ph.crop_batch(calibration_photos, model_name=MODEL, n_per_photo=2, seed=5)
    x = ph.crop_batch(ph.load_folder(folder), model_name=MODEL, n_per_photo=3, seed=6)
    q = quantize(model, preset("w4a4-all"), [calib])   # 8 crops: one batch of 16
    with torch.no_grad():
        ref, out = model(x), q(x)
    acc = Accumulator()
    acc.update(out, reference=ref)
    expected = acc.compute()
    row = rows[1]
    assert row["config"] == preset("w4a4-all").describe()
    for key in ("agreement", "mean_kl", "logit_sqnr_db"):
        assert row[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    same = (out.argmax(1) == ref.argmax(1)).view(3, 3).float().mean(1)
    assert row["worst_photo_agreement"] == pytest.approx(100 * float(same.min()))
    assert rows[2]["logit_sqnr_db"] > row["logit_sqnr_db"]   # 8 bits everywhere is closer to float than 4


def test_markdown_and_csv(rows, tmp_path):
    import csv

    from aciq.quant.evaluate import write_csv

    table = heldout.markdown(rows)
    assert table.count("\n") == 2 + len(rows) and "| efficientnet_lite0 | w4a4-all |" in table
    path = write_csv(tmp_path / "h.csv", rows, columns=heldout.CSV_KEYS)
    with open(path) as fh:
        reader = csv.DictReader(fh)
        back = list(reader)
    assert tuple(reader.fieldnames) == heldout.CSV_KEYS
    assert heldout.CSV_KEYS[:len(heldout.COLUMNS)] == tuple(c[0] for c in heldout.COLUMNS)
    assert [r["preset"] for r in back] == ["float", "w4a4-all", "w8-custom"] and back[1]["photos"] == "3"
    assert back[1]["crops_per_photo"] == "3" and back[1]["calibration"] == "4 photos x 2 crops"
    assert float(back[1]["agreement"]) == pytest.approx(rows[1]["agreement"], rel=1e-5)
    assert back[0]["logit_sqnr_db"] == "inf"


@pytest.mark.parametrize("kwargs, match", [
    (dict(presets=["nope"]), "presets: 'nope'"),
    (dict(presets="w4a4-all"), "presets must be"),
    (dict(presets=[("x", "w4a4-all")]), "presets: .*neither"),
    (dict(models=["alexnet"]), "models: 'alexnet'"),
    (dict(models="efficientnet_lite0"), "models must be"),
    (dict(models=[(MODEL, "not a module")]), "models: .*neither"),
    (dict(models=["resnet20_fmnist"]), "'resnet20_fmnist' is not an ImageNet RGB model"),
    (dict(models=[("mobilenet_fmnist", tiny())]), "'mobilenet_fmnist' is not an ImageNet RGB model"),
])
def test_bad_arguments_named(folder, calibration_photos, kwargs, match):
    args = dict(presets=["float"], models=[(MODEL, tiny())], calibration_photos=calibration_photos, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        heldout.heldout_table(folder, **args)


def test_empty_or_corrupt_folder_named(tmp_path, calibration_photos):
    kwargs = dict(models=[(MODEL, tiny())], calibration_photos=calibration_photos, progress=False)
    with pytest.raises(ValueError, match="no image file"):
        heldout.heldout_table(tmp_path, ["float"], **kwargs)
    (tmp_path / "bad.png").write_bytes(b"PNG? no")
    with pytest.raises(ValueError, match="bad.png"):
        heldout.heldout_table(tmp_path, ["float"], **kwargs)


def test_score_presets_checks_the_crop_count():
    x = torch.randn(5, 3, 16, 16)
    with pytest.raises(ValueError, match="crops_per_photo"):
        heldout.score_presets(tiny(), x, x, ["float"], crops_per_photo=2)


def test_a_copy_of_a_calibration_photo_is_refused(folder, calibration_photos, tmp_path):
    import shutil

    for f in folder.iterdir():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(calibration_photos[2].path, tmp_path / "p9.jpg")
    with pytest.raises(ValueError, match=f"p9.jpg is the calibration photo .*{calibration_photos[2].path.name}"):
        heldout.heldout_table(tmp_path, ["float"], models=[(MODEL, tiny())], calibration_photos=calibration_photos,
                              progress=False)

