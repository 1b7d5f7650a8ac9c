"""Evaluation: a quantized model against its float original, batch by batch, and the results CSV.

The quantized model's grids are fixed before evaluation starts (statistics come from calibration images
only), so every number here is independent of the evaluation batch size and order.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .metrics import Accumulator

__all__ = ["evaluate", "Loader", "image_folder", "folder_kind", "PhotoFolder", "collate_unlabelled", "logits",
           "append_csv", "write_csv", "RESULT_COLUMNS", "markdown_table"]

RESULT_COLUMNS = ("time", "model", "preset", "config", "weight_bits", "act_bits", "top1", "top5", "agreement",
                  "mean_kl", "logit_sqnr_db", "n", "calib_images", "calib_s", "eval_s", "float_eval_s",
                  "device", "batch_size", "backend", "data")


@dataclass
class Loader:
    """Batches of ``(images, labels)`` from an in-memory tensor pair (labels may be None)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    batch_size: int

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    def __len__(self):
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for i in range(0, len(self.images), self.batch_size):
            y = None if self.labels is None else self.labels[i:i + self.batch_size]
            yield self.images[i:i + self.batch_size], y


def image_folder(path, transform):
    """An ImageFolder-style dataset (``<path>/<class>/<image>``, or ``<path>/val/...`` as ILSVRC2012).

    Class indices follow the sorted folder names, which for the 1000 ILSVRC2012 synset folders is the
    torchvision ImageNet class order.
    """
    from torchvision.datasets import ImageFolder

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"data path {root} does not exist or is not a folder")
    if (root / "val").is_dir():
        root = root / "val"
    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ValueError(f"data path {root} is not an ImageFolder (<class>/<image> files): {exc}") from None


def folder_kind(path) -> str:
    """``"photos"`` for a flat folder of unlabelled images (``<path>/<image>``, see
    :func:`aciq.quant.photos.image_files`), ``"classes"`` for an ImageFolder (``<path>/<class>/<image>``).

    A folder with image files at its top level and no subfolder is flat; one with subfolders and no top-level
    image is an ImageFolder. Raises ``ValueError`` naming ``path`` when it is not a folder, is empty, or
    holds both top-level images and subfolders (which of the two was meant cannot be told).
    """
    from .photos import IMAGE_SUFFIXES

    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"data path {root} does not exist or is not a folder")
    entries = list(root.iterdir())
    images = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    folders = [p.name for p in entries if p.is_dir()]
    if images and folders:
        raise ValueError(f"data path {root} holds both image files ({images[0]}, ...) and subfolders "
                         f"({folders[0]}, ...): give a flat folder of unlabelled photos or an ImageFolder "
                         "(<class>/<image>), not both")
    if not images and not folders:
        raise ValueError(f"data path {root} holds no image file ({', '.join(IMAGE_SUFFIXES)}) and no class "
                         "subfolder")
    return "photos" if images else "classes"


class PhotoFolder(torch.utils.data.Dataset):
    """Unlabelled photos, each read when indexed: item ``i`` is a float tensor ``[k, C, H, W]`` of
    ``files[i]`` for model ``model_name``.

    ``crops=0``: the model's eval preprocessing (:func:`aciq.quant.zoo.preprocess`), ``k = 1``.
    ``crops=K``: ``K`` random crops (:func:`aciq.quant.photos.crop_batch` with ``seed``), keyed by the photo's
    position ``i`` in ``files``, so a photo's crops do not depend on which others are scored with it.
    Batch it with ``DataLoader(..., collate_fn=collate_unlabelled)``: batches are ``(images, None)``.
    A file that cannot be decoded raises ``ValueError`` naming it.
    """

    def __init__(self, files, model_name: str, *, crops: int = 0, seed: int = 0):
        from . import zoo

        if isinstance(crops, bool) or not isinstance(crops, int) or crops < 0:
            raise ValueError(f"crops must be an int >= 0, got {crops!r}")
        self.files = [Path(f) for f in files]
        self.model_name, self.crops, self.seed = model_name, crops, seed
        self._transform = zoo.preprocess(model_name) if crops == 0 else None

    @property
    def per_item(self) -> int:
        """Images per item: ``crops``, or 1 for the eval preprocessing."""
        return self.crops or 1

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i) -> torch.Tensor:
        from .photos import crop_batch, read_photo

        photo = read_photo(self.files[i], index=i)
        if self._transform is not None:
            return self._transform(photo.image).unsqueeze(0)
        return crop_batch([photo], model_name=self.model_name, n_per_photo=self.crops, seed=self.seed)


def collate_unlabelled(items) -> tuple[torch.Tensor, None]:
    """``DataLoader`` collate for :class:`PhotoFolder`: the items' images concatenated, no labels."""
    return torch.cat(list(items)), None


@torch.no_grad()
def logits(model, x: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """``model(x)`` in batches of ``batch_size`` along the first dimension, concatenated."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(qmodel, float_model, loader, *, device="cpu", progress: bool = True, desc: str = "eval",
             dist=None) -> dict:
    """Top-1/top-5 (where labels come), agreement, KL and logit SQNR against ``float_model``, and times.

    ``float_model=None`` scores ``qmodel`` alone (labels only). With ``dist`` (a
    :class:`aciq.quant.distributed.Dist`), ``loader`` holds this rank's shard; the sums and counts of every
    rank are added before the metrics are computed, and the times are the slowest rank's.
    """
    from tqdm import tqdm

    device = torch.device(device)
    qmodel = qmodel.to(device).eval()
    if float_model is not None:
        float_model = float_model.to(device).eval()
    acc = Accumulator()
    t_q = t_f = 0.0
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        x = x.to(device)
        ref = None
        if float_model is not None:
            t0 = time.perf_counter()
            ref = float_model(x)
            t_f += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = qmodel(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_q += time.perf_counter() - t0
        acc.update(out.float().cpu(), labels=None if y is None else torch.as_tensor(y).cpu(),
                   reference=None if ref is None else ref.float().cpu())
    if dist is not None and dist.active:
        from .distributed import reduce_accumulator

        acc = reduce_accumulator(acc, dist)
        t_q, t_f = dist.all_reduce([t_q, t_f], "max")
    if acc.n == 0:
        raise ValueError("the evaluation data is empty")
    result = acc.compute()
    result.update(eval_s=t_q, float_eval_s=t_f if float_model is not None else None)
    return result


def append_csv(path, row: dict) -> Path:
    """Append ``row`` (columns :data:`RESULT_COLUMNS`) to the CSV at ``path``, writing the header once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: _cell(row.get(k)) for k in RESULT_COLUMNS})
    return path


def write_csv(path, rows: list[dict], columns=RESULT_COLUMNS) -> Path:
    """Write ``rows`` to a new CSV at ``path`` (header ``columns``; other keys are left out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(row.get(k)) for k in columns})
    return path


def _cell(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else v


def _fmt(v, digits=2):
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict], columns) -> str:
    """A markdown table of ``rows`` with ``columns`` given as ``(key, header)`` or ``(key, header, digits)``."""
    cols = [c if len(c) == 3 else (*c, 2) for c in columns]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), d) for k, _, d in cols) + " |")
    return "\n".join(lines) + "\n"
