"""ResNet-20 (He et al., 2016, CIFAR variant) for 28x28 one-channel images, and its Fashion-MNIST training.

Every operation but the residual addition is a module (conv, BN, a distinct ``nn.ReLU`` per use,
pooling, flatten, linear), so that BN folding, observers and module swaps see the whole graph
through ``named_modules``. Shortcuts that change shape are 1x1 conv + BN (option B).

Train the committed weights with::

    python -m aciq.quant.resnet20 --out quant/weights/resnet20_fmnist.pt
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

import numpy as np
import torch
from torch import nn

from . import fashion_mnist

WEIGHTS = Path(__file__).parent / "weights" / "resnet20_fmnist.pt"
"""The committed Fashion-MNIST weights (state dict, tensors only); the JSON card lies beside it."""


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut (identity or 1x1 conv + BN), then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """Stem conv3x3(16) + 3 stages x 3 :class:`BasicBlock` (16, 32, 64 channels) + avgpool + linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU(inplace=False)
        widths, blocks = (16, 32, 64), 3
        stages, c_in = [], 16
        for i, width in enumerate(widths):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet20(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A freshly initialised ResNet-20 (0.27 M parameters) for ``in_channels`` x 28 x 28 inputs."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels!r}")
    return ResNet20(num_classes=int(num_classes), in_channels=int(in_channels))


def load_resnet20_fmnist(weights=None) -> nn.Module:
    """ResNet-20 with the trained Fashion-MNIST weights (default :data:`WEIGHTS`), in eval mode, on CPU.

    Inputs are :func:`aciq.quant.fashion_mnist.to_tensor` images, float32 (N, 1, 28, 28).
    """
    path = Path(WEIGHTS if weights is None else weights)
    if not path.is_file():
        raise FileNotFoundError(f"ResNet-20 weights {path} do not exist; train them with "
                                f"`python -m aciq.quant.resnet20 --out {path}`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or non-tensor file
        raise ValueError(f"ResNet-20 weights {path} cannot be loaded with weights_only=True: {exc}") from exc
    model = resnet20()
    if not isinstance(state, dict):
        raise ValueError(f"ResNet-20 weights {path} hold a {type(state).__name__}, not a state dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"ResNet-20 weights {path} do not match the model: missing keys {missing}, "
                         f"unexpected keys {unexpected}")
    bad = [k for k, v in state.items()
           if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"ResNet-20 weights {path} have wrong shapes for {bad}")
    model.load_state_dict(state)
    return model.eval()


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


def _augment(batch: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
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


def train(*, epochs: int = 7, seed: int = 0, batch_size: int = 128, max_lr: float = 0.2,
          weight_decay: float = 5e-4, momentum: float = 0.9, root=None, threads: int | None = 2,
          limit: int | None = None, log=None) -> TrainResult:
    """Train :func:`resnet20` on the Fashion-MNIST training images.

    SGD (Nesterov momentum) with a one-cycle schedule (linear warm-up over the first 20% of the steps to
    ``max_lr``, cosine annealing to ``max_lr / 1e4``), cross-entropy, weight decay on every parameter,
    random 2-pixel-shift crops and horizontal flips. The data order and augmentation come from one
    ``torch.Generator`` seeded with ``seed``; training runs in channels-last memory format (faster on
    CPU), the returned model is back in the default format; ``limit`` trains on the first ``limit`` images (smoke tests).
    """
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    previous_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
            return _train(epochs=int(epochs), seed=seed, batch_size=int(batch_size), max_lr=max_lr,
                          weight_decay=weight_decay, momentum=momentum, root=root, threads=threads,
                          limit=limit, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(*, epochs, seed, batch_size, max_lr, weight_decay, momentum, root, threads, limit, log):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = fashion_mnist.load("train", root=root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    n = len(labels)
    steps_per_epoch = -(-n // batch_size)
    model = resnet20().to(memory_format=torch.channels_last)  # ~1.4x faster convolutions on CPU
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
            x = fashion_mnist.to_tensor(_augment(images[idx], generator))
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
                    nesterov=True, weight_decay=weight_decay, lr_schedule=schedule,
                    augmentation="random crop 28x28 from 2-pixel zero padding, horizontal flip p=0.5",
                    loss="cross-entropy", train_images=n, threads=threads)
    return TrainResult(model=model.eval(), settings=settings, epochs=tuple(history), train_time_s=elapsed)


def main(argv=None) -> int:
    """Train ResNet-20 on Fashion-MNIST; write the state dict and its JSON card (same stem, ``.json``)."""
    parser = argparse.ArgumentParser(prog="python -m aciq.quant.resnet20", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="state dict to write (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST directory")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args(argv)

    result = train(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, max_lr=args.lr,
                   root=args.data_root, threads=args.threads, limit=args.limit,
                   log=lambda r: print(json.dumps(r), flush=True))
    images, labels = fashion_mnist.load("test", root=args.data_root)
    top1 = evaluate_float(result.model, images, labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in result.model.state_dict().items()}, args.out)
    card = dict(
        model="ResNet-20 (He et al. 2016, CIFAR variant, option-B shortcuts), 1x28x28 input, 10 classes",
        dataset="Fashion-MNIST", weights=args.out.name,
        sha256=hashlib.sha256(args.out.read_bytes()).hexdigest(),
        **result.settings,
        test_top1=round(100.0 * top1, 2), test_correct=int(round(top1 * len(labels))), test_images=len(labels),
        train_time_s=round(result.train_time_s, 1), history=list(result.epochs),
        normalisation=dict(mean=fashion_mnist.MEAN, std=fashion_mnist.STD),
        torch=torch.__version__, numpy=np.__version__, python=platform.python_version(),
        machine=platform.machine(), command="python -m aciq.quant.resnet20 " + " ".join(
            sys.argv[1:] if argv is None else argv),
    )
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(dict(test_top1=card["test_top1"], sha256=card["sha256"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
