"""aciq.quant.photos: the 20 foolbox ImageNet photos, disjoint splits, deterministic crops; flat folders."""
import shutil
import sys

import numpy as np
import pytest
import torch

from aciq.quant import photos as ph
from aciq.quant import zoo

# the labels in the file names of foolbox 3.3.4's foolbox/data/imagenet_<idx>_<label>.jpg
LABELS = [243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22, 317, 305]


@pytest.fixture(scope="module")
def photos():
    return ph.load_photos()


def test_twenty_photos_labels_parsed(photos):
    assert len(photos) == 20
    assert [p.index for p in photos] == list(range(20))
    assert [p.label for p in photos] == LABELS
    for p in photos:
        assert p.path.name == f"imagenet_{p.index:02d}_{p.label}.jpg"
        assert p.image.mode == "RGB" and min(p.image.size) >= 299


def test_foolbox_not_imported(photos):
    assert "foolbox" not in sys.modules


def test_env_override_and_missing_dir(tmp_path, monkeypatch, photos):
    for p in photos:
        shutil.copy(p.path, tmp_path / p.path.name)
    (tmp_path / "imagenet_readme.txt").write_text("not a photo")
    monkeypatch.setenv(ph.ENV_VAR, str(tmp_path))
    assert ph.photo_dir() == tmp_path
    assert [p.label for p in ph.load_photos()] == LABELS
    monkeypatch.setenv(ph.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="foolbox==3.3.4"):
        ph.photo_dir()


def test_incomplete_directory_rejected(tmp_path, photos):
    for p in photos[:19]:
        shutil.copy(p.path, tmp_path / p.path.name)
    with pytest.raises(ValueError, match=str(tmp_path)):
        ph.load_photos(tmp_path)


def test_split_is_disjoint(photos):
    calibration, evaluation = ph.split_photos(list(reversed(photos)))
    assert [p.index for p in calibration] == list(range(10))
    assert [p.index for p in evaluation] == list(range(10, 20))
    assert not {p.path for p in calibration} & {p.path for p in evaluation}
    a, b = ph.split_photos(photos, n_calibration=4)
    assert len(a) == 4 and len(b) == 16
    with pytest.raises(ValueError, match="n_calibration"):
        ph.split_photos(photos, n_calibration=20)


def test_crops_deterministic_per_seed_and_photo(photos):
    kw = dict(n_per_photo=3, size=64)
    a = ph.crops(photos[:2], seed=7, **kw)
    assert a.shape == (6, 3, 64, 64) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, ph.crops(photos[:2], seed=7, **kw))
    assert not torch.equal(a, ph.crops(photos[:2], seed=8, **kw))
    # crops of a photo do not depend on the other photos passed with it
    assert torch.equal(a[3:], ph.crops(photos[1:2], seed=7, **kw))
    # the crops of one photo differ from each other
    assert not torch.equal(a[0], a[1])
    with pytest.raises(ValueError, match="n_per_photo"):
        ph.crops(photos[:1], n_per_photo=0, size=64, seed=0)


def test_crop_batch_normalised_for_model(photos):
    calibration, _ = ph.split_photos(photos)
    x = ph.crop_batch(calibration[:2], model_name="resnet18", n_per_photo=2, seed=0)
    assert x.shape == (4, 3, 224, 224)
    raw = ph.crops(calibration[:2], n_per_photo=2, size=224, seed=0)
    mean = torch.tensor(zoo.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(zoo.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    lite = ph.crop_batch(calibration[:1], model_name="efficientnet_lite0", n_per_photo=1, seed=0)
    assert -1.0 <= float(lite.min()) and float(lite.max()) <= 128 / 128   # (x - 127) / 128 on 0..255
    with pytest.raises(ValueError, match="model_name"):
        ph.crop_batch(calibration, model_name="resnet20_fmnist", n_per_photo=1, seed=0)


def test_photo_batch(photos):
    _, evaluation = ph.split_photos(photos)
    x, labels = ph.photo_batch(evaluation, model_name="inception_v3")
    assert x.shape == (10, 3, 299, 299) and x.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == LABELS[10:]
    one = zoo.preprocess("inception_v3")(evaluation[0].image)
    torch.testing.assert_close(x[0], one)


# -- flat folders of unlabelled photos ----------------------------------------------------------------------

def _smooth_image(rng, height, width):
    """A smooth random RGB image (a low-resolution field upsampled), so JPEG keeps it recognisable."""
    from PIL import Image

    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


@pytest.fixture
def flat(tmp_path):
    """photo_a.png, photo_b.JPG, photo_c.jpeg (grayscale), notes.txt and a subfolder."""
    rng = np.random.default_rng(0)
    _smooth_image(rng, 60, 80).save(tmp_path / "photo_a.png")
    _smooth_image(rng, 90, 70).save(tmp_path / "photo_b.JPG", quality=95)
    _smooth_image(rng, 50, 50).convert("L").save(tmp_path / "photo_c.jpeg")
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "sub").mkdir()
    _smooth_image(rng, 40, 40).save(tmp_path / "sub" / "inside.png")
    return tmp_path


def test_flat_folder_photos_sorted_unlabelled_rgb(flat):
    from PIL import Image

    assert [p.name for p in ph.image_files(flat)] == ["photo_a.png", "photo_b.JPG", "photo_c.jpeg"]
    photos = ph.load_folder(flat)
    assert [p.index for p in photos] == [0, 1, 2] and all(p.label is None for p in photos)
    assert [p.image.size for p in photos] == [(80, 60), (70, 90), (50, 50)]
    assert all(p.image.mode == "RGB" for p in photos)
    with Image.open(flat / "photo_a.png") as image:   # the PNG is decoded losslessly
        assert np.array_equal(np.asarray(photos[0].image), np.asarray(image.convert("RGB")))


def test_flat_folder_crops_keyed_by_position(flat):
    photos = ph.load_folder(flat)
    x = ph.crop_batch(photos, model_name="resnet18", n_per_photo=2, seed=3)
    assert x.shape == (6, 3, 224, 224)
    assert torch.equal(x[2:4], ph.crop_batch(photos[1:2], model_name="resnet18", n_per_photo=2, seed=3))
    gray = x[4:].view(2, 3, -1) * torch.tensor(zoo.IMAGENET_STD).view(1, 3, 1) \
        + torch.tensor(zoo.IMAGENET_MEAN).view(1, 3, 1)
    torch.testing.assert_close(gray[:, 0], gray[:, 1], atol=1e-5, rtol=0)   # a grayscale photo: R = G = B


@pytest.mark.parametrize("make, match", [
    (lambda d: None, "holds no image file"),                                   # empty
    (lambda d: (d / "readme.txt").write_text("x"), "holds no image file"),     # no image among the files
])
def test_flat_folder_without_photos_named(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(ValueError, match=f"{tmp_path}.*{match}"):
        ph.load_folder(tmp_path)
    with pytest.raises(ValueError, match="nowhere.*not a folder"):
        ph.load_folder(tmp_path / "nowhere")


def test_unreadable_photo_named(flat):
    import io

    (flat / "zz_corrupt.jpg").write_bytes(b"this is not a JPEG file")
    with pytest.raises(ValueError, match="zz_corrupt.jpg.*cannot be read"):
        ph.load_folder(flat)
    (flat / "zz_corrupt.jpg").unlink()
    buffer = io.BytesIO()
    _smooth_image(np.random.default_rng(1), 200, 200).save(buffer, format="JPEG")
    (flat / "zz_truncated.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="zz_truncated.jpg"):
        ph.load_folder(flat)


def test_spread_crops_interleave_the_photos(photos):
    x = ph.crop_batch(photos[:2], model_name="resnet18", n_per_photo=3, seed=5)   # photo-major: p0c0..p0c2, p1c0..
    spread = ph.spread_crops(photos[:2], model_name="resnet18", n=5, seed=5)
    assert torch.equal(spread, x[[0, 3, 1, 4, 2]])
    assert torch.equal(ph.spread_crops(photos[:3], model_name="resnet18", n=2, seed=5),
                       ph.crop_batch(photos[:2], model_name="resnet18", n_per_photo=1, seed=5))
    with pytest.raises(ValueError, match="n must"):
        ph.spread_crops(photos, model_name="resnet18", n=0, seed=0)


def test_check_disjoint_compares_file_bytes(flat, tmp_path):
    import shutil

    files = ph.image_files(flat)
    ph.check_disjoint(files[:2], files[2:])                       # distinct files pass
    other = tmp_path / "other"
    other.mkdir()
    same_size = other / "same_size.png"
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 0xFF                                              # equal size, one byte differs: not a copy
    same_size.write_bytes(bytes(data))
    ph.check_disjoint(ph.load_folder(flat), [same_size])
    shutil.copy(files[1], other / "renamed.jpg")
    with pytest.raises(ValueError, match=f"renamed.jpg is the calibration photo .*{files[1].name}"):
        ph.check_disjoint(ph.load_folder(flat), ph.image_files(other))
