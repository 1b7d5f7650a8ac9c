"""Fashion-MNIST: find, verify and read the four IDX files (Xiao, Rasul & Vollgraf, 2017).

The data are looked up, in order, in the ``root`` argument, the directory named by the environment
variable ``ACIQ_FASHION_MNIST``, and ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``). Nothing is downloaded at run time; :func:`download` fetches the official
files on request, for machines without the Debian package.

Checksums are of the *uncompressed* IDX bytes. The Debian package ships the official gzip streams with
the gzip header normalised (file name dropped, time stamp reset), so the ``.gz`` files differ from the
ones the upstream README lists (:data:`MD5_GZ`) while their content is the same byte for byte; a hash of
the content holds for both, and for files someone decompressed.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

ENV_VAR = "ACIQ_FASHION_MNIST"
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
"""The ten class names, indexed by label."""

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""(images, labels) IDX file names of each split, without the ``.gz`` suffix."""

SIZES = {"train": 60000, "test": 10000}

SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
"""sha256 of the uncompressed IDX content of each file (same for the official and the Debian files)."""

MD5_GZ = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
"""md5 of the official ``.gz`` downloads, as listed in the upstream README (informative only)."""

MEAN = 0.2860405969887955
"""Mean pixel of the 60 000 training images, in [0, 1] units."""
STD = 0.35302424451492254
"""Standard deviation of the pixels of the 60 000 training images, in [0, 1] units."""

_MAGIC = {3: 2051, 1: 2049}  # IDX magic of uint8 data with 3 (images) or 1 (labels) dimensions
_HINT = ("install the Debian package (apt-get install dataset-fashion-mnist), set "
         f"{ENV_VAR} to a directory holding the four IDX files (.gz or plain), or fetch them "
         "with aciq.quant.fashion_mnist.download(root)")


def _check_split(split) -> str:
    if split not in FILES:
        raise ValueError(f"split must be one of {tuple(FILES)}, got {split!r}")
    return split


def _locate(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def find_root(root=None, *, split=None) -> Path:
    """Directory holding the Fashion-MNIST IDX files.

    Parameters
    ----------
    root : path-like, optional
        Explicit directory. Default: ``$ACIQ_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``.
    split : {"train", "test"}, optional
        Only require the files of this split (default: all four).

    Raises
    ------
    FileNotFoundError
        The directory or one of the files is missing; the message names the path and how to get the data.
    """
    if root is not None:
        where, source = Path(root), "root argument"
    elif os.environ.get(ENV_VAR):
        where, source = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        where, source = DEFAULT_ROOT, "default location"
    if not where.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST directory {where} ({source}) does not exist: {_HINT}")
    splits = FILES if split is None else (_check_split(split),)
    missing = [name for s in splits for name in FILES[s] if _locate(where, name) is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST directory {where} ({source}) lacks {', '.join(missing)} (.gz or plain): {_HINT}")
    return where


def _read(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc


def parse_idx(data: bytes, *, ndim: int, name="IDX data") -> np.ndarray:
    """Parse uint8 IDX bytes with ``ndim`` dimensions; ValueError naming ``name`` when malformed.

    Examples
    --------
    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]), ndim=1).tolist()
    [7, 9]
    """
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    magic = int.from_bytes(data[:4], "big")
    if magic != _MAGIC[ndim]:
        raise ValueError(f"{name}: bad IDX magic number {magic} (expected {_MAGIC[ndim]}, uint8 with "
                         f"{ndim} dimension{'s' if ndim > 1 else ''})")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + size:
        raise ValueError(f"{name}: IDX size mismatch, header says {shape} = {size} bytes of data, "
                         f"file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _load_file(root: Path, name: str, ndim: int, verify: bool) -> np.ndarray:
    path = _locate(root, name)
    if path is None:
        raise FileNotFoundError(f"{root / name}(.gz) does not exist: {_HINT}")
    data = _read(path)
    array = parse_idx(data, ndim=ndim, name=str(path))
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256[name]:
            raise ValueError(f"{path}: sha256 of the IDX content is {digest}, expected {SHA256[name]}; "
                             f"the file is corrupt or not the official Fashion-MNIST ({_HINT})")
    return array


def load(split: str = "test", root=None, verify: bool = True):
    """Images and labels of one split.

    Parameters
    ----------
    split : {"test", "train"}
    root : path-like, optional
        See :func:`find_root`.
    verify : bool
        Check the sha256 of each file's content against :data:`SHA256`.

    Returns
    -------
    images : numpy.ndarray, uint8, shape (N, 28, 28)
    labels : numpy.ndarray, int64, shape (N,), values in 0..9 (see :data:`CLASSES`)
    """
    split = _check_split(split)
    where = find_root(root, split=split)
    image_name, label_name = FILES[split]
    images = _load_file(where, image_name, 3, verify)
    labels = _load_file(where, label_name, 1, verify)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{where / image_name}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise ValueError(f"{where}: {len(images)} images in {image_name} but {len(labels)} labels in {label_name}")
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"{where / label_name}: label {labels.max()} outside 0..{len(CLASSES) - 1}")
    return images, labels.astype(np.int64)


def to_tensor(images):
    """uint8 images (N, 28, 28) or (28, 28), numpy or torch -> normalised float32 tensor (N, 1, 28, 28).

    .. math:: x = (p / 255 - \\mathrm{MEAN}) / \\mathrm{STD}
    """
    import torch

    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 pixels, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or tuple(x.shape[1:]) != (28, 28):
        raise ValueError(f"images must have shape (N, 28, 28) or (28, 28), got {tuple(x.shape)}")
    return ((x.to(torch.float32) / 255.0 - MEAN) / STD).unsqueeze(1)


def download(root) -> Path:
    """Fetch the four official ``.gz`` files from :data:`URL` into ``root`` and verify them.

    Files already present with the right content are kept. Raises ``ValueError`` on a checksum
    mismatch (the bad download is not kept). Needs internet access; nothing else in aciq calls it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for names in FILES.values():
        for name in names:
            target = root / f"{name}.gz"
            if target.is_file() and hashlib.sha256(_read(target)).hexdigest() == SHA256[name]:
                continue
            url = URL + f"{name}.gz"
            with urllib.request.urlopen(url, timeout=120) as response:
                raw = response.read()
            try:
                digest = hashlib.sha256(gzip.decompress(raw)).hexdigest()
            except (OSError, EOFError, zlib.error) as exc:
                raise ValueError(f"{url}: download is not a valid gzip file ({exc})") from exc
            if digest != SHA256[name]:
                raise ValueError(f"{url}: sha256 of the content is {digest}, expected {SHA256[name]}")
            with tempfile.NamedTemporaryFile(dir=root, delete=False, suffix=".part") as tmp:
                tmp.write(raw)
            Path(tmp.name).replace(target)
    return root
