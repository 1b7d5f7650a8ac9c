"""Twenty labelled ImageNet photos, read from the files foolbox ships, and deterministic crops of them.

foolbox 3.3.4 installs ``foolbox/data/imagenet_<idx>_<label>.jpg`` (512x512 RGB JPEGs of 20 ImageNet
validation-style images, ``idx`` 00..19, ``label`` the ImageNet class index). They are found through the
installed distribution's file list (``importlib.metadata``), so foolbox itself (and its eagerpy/GitPython
imports) is never imported; the environment variable ``ACIQ_PHOTOS`` names another directory instead.

Twenty photos are too few to measure accuracy, but enough to measure *fidelity* of a quantized model to its
float model on many crops. The intended protocol keeps calibration and evaluation images disjoint::

    photos = load_photos()
    calibration, evaluation = split_photos(photos)            # photos 0..9 and 10..19
    x_cal = crop_batch(calibration, model_name="resnet50", n_per_photo=8, seed=0)
    x_eval, labels = photo_batch(evaluation, model_name="resnet50")
    x_eval_crops = crop_batch(evaluation, model_name="resnet50", n_per_photo=8, seed=1)

The crops of a photo depend only on ``seed`` and the photo's index, not on which other photos are passed.

Any other folder of photos, without labels (``<dir>/<image>.jpg|.jpeg|.png``), is read by
:func:`load_folder` (or file by file: :func:`image_files`, :func:`read_photo`); its photos carry
``label=None`` and the index of their file in the name-sorted list, so the same crop functions apply::

    heldout = load_folder("/path/to/photos")
    x_scored = crop_batch(heldout, model_name="efficientnet_lite1", n_per_photo=8, seed=1)
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["ENV_VAR", "N_PHOTOS", "IMAGE_SUFFIXES", "Photo", "photo_dir", "load_photos", "split_photos",
           "image_files", "read_photo", "load_folder", "check_disjoint", "crops", "crop_batch", "spread_crops",
           "photo_batch"]

ENV_VAR = "ACIQ_PHOTOS"
N_PHOTOS = 20
_PATTERN = re.compile(r"^imagenet_(\d+)_(\d+)\.jpg$")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""The file name endings (any case) :func:`image_files` takes for photos."""
_HINT = f"install foolbox's data files (pip install foolbox==3.3.4) or set {ENV_VAR} to a directory of them"

SCALE = (0.25, 1.0)
"""Area fraction range of the random crops (torchvision's RandomResizedCrop samples (0.08, 1) for training;
crops for fidelity stay closer to what the model sees at evaluation)."""
RATIO = (3.0 / 4.0, 4.0 / 3.0)
"""Aspect-ratio range of the random crops (sampled log-uniformly)."""


@dataclass(frozen=True)
class Photo:
    """One photo: its ``path``, ``index`` (the ``idx`` of the file name; for a photo of an unlabelled
    folder, its position in the folder), ImageNet ``label`` (None when unlabelled) and the decoded RGB
    ``image`` (``PIL.Image``; left out of comparisons and hashing)."""

    path: Path
    index: int
    label: int | None
    image: object = field(compare=False, repr=False)


def photo_dir() -> Path:
    """The directory holding ``imagenet_<idx>_<label>.jpg``: ``$ACIQ_PHOTOS`` or foolbox's ``data/``.

    Raises ``FileNotFoundError`` telling how to install the files when neither exists.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise FileNotFoundError(f"{ENV_VAR}={env} is not a directory: {_HINT}")
        return path
    try:
        dist = importlib.metadata.distribution("foolbox")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"foolbox is not installed, so its photos are not available: {_HINT}") from exc
    path = Path(dist.locate_file("foolbox/data"))
    if not path.is_dir():
        raise FileNotFoundError(f"foolbox is installed but {path} does not exist: {_HINT}")
    return path


def load_photos(directory=None) -> list[Photo]:
    """The 20 photos, sorted by index (``directory`` defaults to :func:`photo_dir`).

    Raises ``ValueError`` naming the directory unless it holds exactly the indices 0..19.
    """
    from PIL import Image

    directory = photo_dir() if directory is None else Path(directory)
    found = []
    for path in directory.iterdir() if directory.is_dir() else ():
        match = _PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), path))
    found.sort()
    indices = [index for index, _, _ in found]
    if indices != list(range(N_PHOTOS)):
        raise ValueError(f"directory {directory} must hold imagenet_<idx>_<label>.jpg for idx 00..19 "
                         f"exactly once each, found indices {indices}: {_HINT}")
    photos = []
    for index, label, path in found:
        with Image.open(path) as image:
            photos.append(Photo(path=path, index=index, label=label, image=image.convert("RGB")))
    return photos


def split_photos(photos, *, n_calibration: int = 10) -> tuple[list[Photo], list[Photo]]:
    """Disjoint (calibration, evaluation) lists: the first ``n_calibration`` photos by index, the rest."""
    photos = sorted(photos, key=lambda p: p.index)
    if not isinstance(n_calibration, int) or not 0 < n_calibration < len(photos):
        raise ValueError(f"n_calibration must be an int in 1..{len(photos) - 1}, got {n_calibration!r}")
    return photos[:n_calibration], photos[n_calibration:]


def image_files(directory) -> list[Path]:
    """The photos of a flat folder: its files ending in :data:`IMAGE_SUFFIXES` (any case), sorted by name.

    Other files and subfolders are left out. Raises ``ValueError`` naming ``directory`` when it is not a
    folder or holds no such file.
    """
    directory = Path(os.fspath(directory))
    if not directory.is_dir():
        raise ValueError(f"photo folder {directory} does not exist or is not a folder")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"photo folder {directory} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_photo(path, *, index: int, label: int | None = None) -> Photo:
    """Decode the image file ``path`` into an RGB :class:`Photo`.

    Raises ``ValueError`` naming the file when it cannot be decoded (not an image, truncated, corrupt).
    """
    from PIL import Image

    path = Path(os.fspath(path))
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")   # decodes the whole file: a truncated one fails here
    except (OSError, ValueError, SyntaxError) as exc:   # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"image file {path} cannot be read: {exc}") from None
    return Photo(path=path, index=index, label=label, image=rgb)


def load_folder(directory) -> list[Photo]:
    """Every photo of a flat folder (:func:`image_files`), decoded, unlabelled, ``index`` = position.

    Raises ``ValueError`` naming the folder (missing, no image) or the file that cannot be read.
    """
    return [read_photo(path, index=i) for i, path in enumerate(image_files(directory))]


def check_disjoint(calibration, scored) -> None:
    """Raise ``ValueError`` naming both files when a file of ``scored`` has the same bytes as one of
    ``calibration`` (a calibration photo copied into the folder being scored). Items are paths or
    :class:`Photo`; only files of equal size are read and hashed (SHA-256)."""
    def path(item):
        return Path(os.fspath(item.path if isinstance(item, Photo) else item))

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    calibration = [path(c) for c in calibration]
    sizes = {p.stat().st_size for p in calibration}
    suspects = [p for p in map(path, scored) if p.stat().st_size in sizes]
    if not suspects:
        return
    known = {digest(p): p for p in calibration if p.stat().st_size in {s.stat().st_size for s in suspects}}
    for p in suspects:
        twin = known.get(digest(p))
        if twin is not None:
            raise ValueError(f"scored photo {p} is the calibration photo {twin} (the same bytes): calibration "
                             "and scored images must be disjoint")


def _crop_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws them, from ``rng``."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    side = min(width, height)   # fallback: the central square
    return (height - side) // 2, (width - side) // 2, side, side


def _image_and_key(item, position: int):
    if isinstance(item, Photo):
        return item.image, item.index
    return item, position


def crops(photo_images, *, n_per_photo: int, size: int, seed: int, interpolation: str = "bilinear",
          mean=None, std=None) -> torch.Tensor:
    """``n_per_photo`` random-resized crops (area fraction in :data:`SCALE`, aspect ratio in :data:`RATIO`)
    of each image, each flipped left-right with probability 1/2, resized to ``size`` x ``size``.

    Parameters
    ----------
    photo_images : sequence of Photo or PIL.Image
        A crop of a :class:`Photo` depends on ``(seed, photo.index)`` only; a bare image uses its position.
    n_per_photo, size, seed : int
    interpolation : str
        ``torchvision.transforms.InterpolationMode`` name of the resize.
    mean, std : sequence of float, optional
        Per-channel normalisation applied after scaling pixels to [0, 1] (none if omitted).

    Returns
    -------
    torch.Tensor
        float32 ``[len(photo_images) * n_per_photo, 3, size, size]``, photo-major.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if not isinstance(n_per_photo, int) or n_per_photo < 1:
        raise ValueError(f"n_per_photo must be a positive int, got {n_per_photo!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    items = list(photo_images)
    if not items:
        raise ValueError("photo_images must not be empty")
    mode = InterpolationMode(interpolation)
    out = []
    for position, item in enumerate(items):
        image, key = _image_and_key(item, position)
        image = image if image.mode == "RGB" else image.convert("RGB")
        rng = np.random.default_rng([seed, key])
        for _ in range(n_per_photo):
            top, left, h, w = _crop_box(rng, *image.size)
            crop = F.resized_crop(image, top, left, h, w, [size, size], interpolation=mode, antialias=True)
            if rng.random() < 0.5:
                crop = F.hflip(crop)
            out.append(np.asarray(crop, dtype=np.uint8))
    # one conversion of the whole uint8 batch (what F.to_tensor does per image: HWC -> CHW, / 255)
    batch = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0).contiguous()
    if mean is not None or std is not None:
        batch = F.normalize(batch, mean=list(mean), std=list(std))
    return batch


def _imagenet_model(model_name: str):
    from . import zoo

    p = zoo.preprocessing(model_name)
    if zoo.num_classes(model_name) != 1000 or p.channels != 3:
        raise ValueError(f"model_name {model_name!r} is not an ImageNet RGB model; the foolbox photos are "
                         "ImageNet photos")
    return p


def crop_batch(photos, *, model_name: str, n_per_photo: int, seed: int) -> torch.Tensor:
    """Random-resized crops of ``photos`` (see :func:`crops`) at the input size of ``model_name``,
    normalised as its preprocessing does: float32 ``[len(photos) * n_per_photo, 3, H, W]``."""
    p = _imagenet_model(model_name)
    return crops(photos, n_per_photo=n_per_photo, size=p.crop, seed=seed, interpolation=p.interpolation,
                 mean=p.mean, std=p.std)


def spread_crops(photos, *, model_name: str, n: int, seed: int) -> torch.Tensor:
    """``n`` crops of :func:`crop_batch` spread over ``photos``: crop 1 of every photo, then crop 2 of every
    photo, ..., cut after ``n`` (so ``n >= len(photos)`` uses every photo). Crop ``j`` of a photo is the one
    :func:`crop_batch` makes with the same ``seed``: float32 ``[n, 3, H, W]``."""
    photos = list(photos)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not photos:
        raise ValueError("photos must not be empty")
    per_photo = math.ceil(n / len(photos))
    x = crop_batch(photos, model_name=model_name, n_per_photo=per_photo, seed=seed)
    return x.view(len(photos), per_photo, *x.shape[1:]).transpose(0, 1).reshape(-1, *x.shape[1:])[:n].contiguous()


def photo_batch(photos, *, model_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``photos`` through the standard eval preprocessing of ``model_name``: (float32 ``[n, 3, H, W]``,
    int64 labels ``[n]``)."""
    from . import zoo

    _imagenet_model(model_name)
    photos = list(photos)
    if not photos:
        raise ValueError("photos must not be empty")
    transform = zoo.preprocess(model_name)
    images = torch.stack([transform(p.image) for p in photos])
    labels = torch.tensor([p.label for p in photos], dtype=torch.int64)
    return images, labels
