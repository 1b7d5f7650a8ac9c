"""Train, save, load and score the small networks this project trains on Fashion-MNIST.

Shared by :mod:`aciq.quant.resnet20` and :mod:`aciq.quant.mobilenet_fmnist`: a seeded training loop
(:func:`train`), the weights file and its JSON card (:func:`main`), the safe loader (:func:`load_weights`,
``torch.load(..., weights_only=True)``) and the float top-1 (:func:`evaluate_float`). Each model module
supplies only its builder, its default schedule and its name.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import fashion_mnist

__all__ = ["TrainResult", "train", "evaluate_float", "load_weights", "main", "augment"]

AUGMENTATION = "random crop 28x28 from 2-pixel zero padding, horizontal flip p=0.5"


@torch.no_grad()
def evaluate_float(model: nn.Module, images, labels, batch_size: int = 500) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on uint8 images (N, 28, 28) or a float
    tensor (N, 1, 28, 28) already normalised with :func:`aciq.quant.fashion_mnist.to_tensor`."""
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if len(images) != len(labels) or len(labels) == 0:
        raise ValueError(f"images and labels must be non-empty and of equal length, got "
                         f"{len(images)} and {len(labels)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    model.eval()
    correct = 0
    for start in range(0, len(labels), int(batch_size)):
        batch = images[start:start + int(batch_size)]
        if not (isinstance(batch, torch.Tensor) and batch.is_floating_point()):
            batch = fashion_mnist.to_tensor(batch)
        correct += int((model(batch).argmax(1) == labels[start:start + int(batch_size)]).sum())
    return correct / len(labels)


def augment(batch: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (zero padding of ``pad`` pixels) and horizontal flip of uint8 images (B, 28, 28)."""
    b, h, w = batch.shape
    padded = nn.functional.pad(batch, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, :, None]
    cols = (dx + torch.arange(w))[:, None, :]
    out = padded[torch.arange(b)[:, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None], out.flip(-1), out)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the model (eval mode), its settings, per-epoch logs, wall time."""

    model: nn.Module
    settings: dict
    epochs: tuple
    train_time_s: float


def train(build: Callable[[], nn.Module], *, epochs: int, max_lr: float, seed: int = 0, batch_size: int = 128,
          weight_decay: float = 5e-4, momentum: float = 0.9, root=None, threads: int | None = 2,
          limit: int | None = None, log=None) -> TrainResult:
    """Train the model ``build()`` returns on the Fashion-MNIST training images.

    SGD (Nesterov momentum) with a one-cycle schedule (linear warm-up over the first 20% of the steps to
    ``max_lr``, cosine annealing to ``max_lr / 1e4``), cross-entropy, weight decay on every parameter,
    random 2-pixel-shift crops and horizontal flips. ``build`` is called right after
    ``torch.manual_seed(seed)`` (its initialisation is seeded); the data order and augmentation come from
    one ``torch.Generator`` seeded with ``seed``. Training runs in channels-last memory format (faster on
    CPU), the returned model is back in the default format; ``limit`` trains on the first ``limit`` images
    (smoke tests); ``threads`` torch threads during training (the caller's setting is restored).
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if not max_lr > 0:
        raise ValueError(f"max_lr must be > 0, got {max_lr!r}")
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
            return _train(build, epochs=int(epochs), seed=seed, batch_size=int(batch_size), max_lr=max_lr,
                          weight_decay=weight_decay, momentum=momentum, root=root, threads=threads,
                          limit=limit, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(build, *, epochs, seed, batch_size, max_lr, weight_decay, momentum, root, threads, limit, log):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = fashion_mnist.load("train", root=root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    n = len(labels)
    steps_per_epoch = -(-n // batch_size)
    model = build().to(memory_format=torch.channels_last)  # ~1.4x faster convolutions on CPU (ResNet-20)
    optimizer = torch.optim.SGD(model.parameters(), lr=max_lr, momentum=momentum, nesterov=True,
                                weight_decay=weight_decay)
    schedule = dict(name="OneCycleLR", max_lr=max_lr, pct_start=0.2, anneal_strategy="cos",
                    div_factor=25.0, final_div_factor=400.0, steps_per_epoch=steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=0.2,
        anneal_strategy="cos", div_factor=25.0, final_div_factor=400.0, cycle_momentum=False)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=generator)
        total_loss, correct, t0 = 0.0, 0, time.perf_counter()
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            x = fashion_mnist.to_tensor(augment(images[idx], generator))
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach().item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
        record = dict(epoch=epoch + 1, train_loss=round(total_loss / n, 5),
                      train_top1=round(100.0 * correct / n, 3), seconds=round(time.perf_counter() - t0, 1))
        history.append(record)
        if log is not None:
            log(record)
    elapsed = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format)
    settings = dict(seed=seed, epochs=epochs, batch_size=batch_size, optimizer="SGD", momentum=momentum,
                    nesterov=True, weight_decay=weight_decay, lr_schedule=schedule, augmentation=AUGMENTATION,
                    loss="cross-entropy", train_images=n, threads=threads)
    return TrainResult(model=model.eval(), settings=settings, epochs=tuple(history), train_time_s=elapsed)


def load_weights(model: nn.Module, path, *, label: str, module: str) -> nn.Module:
    """Load the state dict in file ``path`` into ``model`` (strictly), in eval mode, on CPU.

    The file is read with ``torch.load(..., weights_only=True)``. ``label`` names the network in the
    messages (``"ResNet-20"``), ``module`` is the ``python -m`` module that trains the weights.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist (the message names the file and the training command).
    ValueError
        The file cannot be read with ``weights_only=True``, holds no state dict, or its keys or shapes do
        not match ``model`` (the message names the file and the keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{label} weights {path} do not exist; train them with "
                                f"`python -m {module} --out {path}`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or non-tensor file
        raise ValueError(f"{label} weights {path} cannot be loaded with weights_only=True: {exc}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{label} weights {path} hold a {type(state).__name__}, not a state dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{label} weights {path} do not match the model: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    bad = [k for k, v in state.items()
           if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"{label} weights {path} have wrong shapes for {bad}")
    model.load_state_dict(state)
    return model.eval()


def main(argv, *, module: str, description: str, weights: Path, model_card: str,
         train_fn: Callable[..., TrainResult], epochs: int, lr: float, extra_card: dict | None = None) -> int:
    """The ``python -m <module>`` training command of one model: train, then write the state dict and its
    JSON card (same stem, ``.json``: settings, per-epoch log, test top-1, sha256, versions).

    ``train_fn`` takes :func:`train`'s keywords but ``build``; ``epochs`` and ``lr`` are the defaults of
    ``--epochs`` and ``--lr``; ``extra_card`` adds fields to the card (the architecture's settings).
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--out", type=Path, default=weights, help="state dict to write (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=lr, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST directory")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args(argv)

    result = train_fn(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, max_lr=args.lr,
                      root=args.data_root, threads=args.threads, limit=args.limit,
                      log=lambda r: print(json.dumps(r), flush=True))
    images, labels = fashion_mnist.load("test", root=args.data_root)
    top1 = evaluate_float(result.model, images, labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in result.model.state_dict().items()}, args.out)
    card = dict(
        model=model_card, **(extra_card or {}),
        dataset="Fashion-MNIST", weights=args.out.name,
        sha256=hashlib.sha256(args.out.read_bytes()).hexdigest(),
        **result.settings,
        test_top1=round(100.0 * top1, 2), test_correct=int(round(top1 * len(labels))), test_images=len(labels),
        train_time_s=round(result.train_time_s, 1), history=list(result.epochs),
        normalisation=dict(mean=fashion_mnist.MEAN, std=fashion_mnist.STD),
        torch=torch.__version__, numpy=np.__version__, python=platform.python_version(),
        machine=platform.machine(), command=f"python -m {module} " + " ".join(
            sys.argv[1:] if argv is None else argv),
    )
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(dict(test_top1=card["test_top1"], sha256=card["sha256"])))
    return 0
