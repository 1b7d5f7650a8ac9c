"""Fashion-MNIST reader: checksums, discovery, IDX parsing and its errors."""
import doctest
import gzip
import hashlib
import re
import struct

import numpy as np
import pytest
import torch

from aciq.quant import fashion_mnist as fm

pytestmark = pytest.mark.skipif(not fm.DEFAULT_ROOT.is_dir(),
                                reason="Debian package dataset-fashion-mnist not installed")

# gzip header time stamps of the official downloads. Debian's files hold the official deflate streams with
# the header normalised (no file name, another time stamp); putting the original header back must give
# the md5 that the upstream README lists.
OFFICIAL_MTIME = {
    "train-images-idx3-ubyte": 1504176606,
    "train-labels-idx1-ubyte": 1504176606,
    "t10k-images-idx3-ubyte": 1504176627,
    "t10k-labels-idx1-ubyte": 1504176627,
}


@pytest.fixture(scope="module")
def test_split():
    return fm.load("test")


def _gz(name):
    return fm.DEFAULT_ROOT / f"{name}.gz"


def test_docstring_examples():
    assert doctest.testmod(fm).failed == 0


@pytest.mark.parametrize("name", sorted(fm.SHA256))
def test_sha256_table_matches_the_debian_files(name):
    assert hashlib.sha256(gzip.decompress(_gz(name).read_bytes())).hexdigest() == fm.SHA256[name]


@pytest.mark.parametrize("name", sorted(fm.MD5_GZ))
def test_debian_files_are_the_official_gzip_streams(name):
    raw = _gz(name).read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00"  # deflate, no flags: Debian dropped the file name
    official = (b"\x1f\x8b\x08\x08" + struct.pack("<I", OFFICIAL_MTIME[name]) + b"\x00\x03"
                + name.encode() + b"\x00" + raw[10:])
    assert hashlib.md5(official).hexdigest() == fm.MD5_GZ[name]


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_shapes_dtypes_and_labels(split):
    images, labels = fm.load(split)
    n = fm.SIZES[split]
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    # Fashion-MNIST is balanced: 6000 (train) or 1000 (test) images per class.
    assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
    assert images.flags.writeable and images.max() == 255 and images.min() == 0
    if split == "train":
        counts = np.bincount(images.ravel(), minlength=256)  # exact moments from the pixel histogram
        values = np.arange(256) / 255.0
        mean = counts @ values / images.size
        assert mean == pytest.approx(fm.MEAN, abs=1e-12)
        assert np.sqrt(counts @ (values - mean) ** 2 / images.size) == pytest.approx(fm.STD, abs=1e-12)


def test_classes():
    assert len(fm.CLASSES) == 10 and fm.CLASSES[0] == "T-shirt/top" and fm.CLASSES[9] == "Ankle boot"


def test_to_tensor(test_split):
    images, _ = test_split
    x = fm.to_tensor(images[:100])
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    expected = (images[:100].astype(np.float64) / 255.0 - fm.MEAN) / fm.STD
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert fm.to_tensor(torch.from_numpy(images[0])).shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="uint8"):
        fm.to_tensor(images[:2].astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        fm.to_tensor(np.zeros((2, 28, 27), np.uint8))


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        fm.load("val")


def _test_dir(tmp_path, labels: bytes, *, gz=False):
    """tmp dir with the real test images (symlink) and the given labels file content."""
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(_gz("t10k-images-idx3-ubyte"))
    path = tmp_path / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))
    path.write_bytes(labels)
    return path


def _labels_idx():
    return gzip.decompress(_gz("t10k-labels-idx1-ubyte").read_bytes())


def test_truncated_gzip_names_the_file(tmp_path):
    raw = _gz("t10k-labels-idx1-ubyte").read_bytes()
    path = _test_dir(tmp_path, raw[: len(raw) // 2], gz=True)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        fm.load("test", root=tmp_path)


def test_truncated_idx_names_the_file(tmp_path):
    path = _test_dir(tmp_path, _labels_idx()[:-10])
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*size mismatch"):
        fm.load("test", root=tmp_path, verify=False)
    path.write_bytes(_labels_idx()[:6])
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*truncated"):
        fm.load("test", root=tmp_path, verify=False)


def test_bad_magic_names_the_file(tmp_path):
    data = bytearray(_labels_idx())
    data[3] = 3  # images magic (2051) where labels (2049) belong
    path = _test_dir(tmp_path, bytes(data))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*magic"):
        fm.load("test", root=tmp_path, verify=False)


def test_corrupt_content_fails_the_checksum(tmp_path, test_split):
    data = bytearray(_labels_idx())
    data[8] = (data[8] + 1) % 10  # a valid IDX file with one wrong label
    path = _test_dir(tmp_path, gzip.compress(bytes(data)), gz=True)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*sha256"):
        fm.load("test", root=tmp_path)
    _, labels = fm.load("test", root=tmp_path, verify=False)
    assert (labels != test_split[1]).sum() == 1


def test_missing_root_names_the_path_and_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        fm.load("test", root=missing)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert "download(root)" in str(info.value)


def test_missing_file_names_it(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").symlink_to(_gz("t10k-images-idx3-ubyte"))
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as info:
        fm.find_root(tmp_path, split="test")
    assert str(tmp_path) in str(info.value) and "apt-get install" in str(info.value)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        fm.find_root(tmp_path)


def test_find_root_honours_the_environment(tmp_path, monkeypatch, test_split):
    # plain (decompressed) IDX files are read as well as .gz ones
    for name in fm.FILES["test"]:
        (tmp_path / name).write_bytes(gzip.decompress(_gz(name).read_bytes()))
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    assert fm.find_root(split="test") == tmp_path
    images, labels = fm.load("test")
    assert np.array_equal(images, test_split[0]) and np.array_equal(labels, test_split[1])
    assert fm.find_root(fm.DEFAULT_ROOT) == fm.DEFAULT_ROOT  # the argument wins over the variable
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path / 'gone'))}.*{fm.ENV_VAR}"):
        fm.find_root()
    monkeypatch.delenv(fm.ENV_VAR)
    assert fm.find_root() == fm.DEFAULT_ROOT


def test_parse_idx_rejects_bad_headers():
    with pytest.raises(ValueError, match="labels.idx.*magic"):
        fm.parse_idx(b"\x00\x00\x08\x03\x00\x00\x00\x00", ndim=1, name="labels.idx")
    assert fm.parse_idx(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x01" * 3 + b"\x07", ndim=3).shape == (1, 1, 1)
