"""ResNet-20 (He et al., 2016, CIFAR variant) for 28x28 one-channel images, and its Fashion-MNIST training.

Every operation but the residual addition is a module (conv, BN, a distinct ``nn.ReLU`` per use,
pooling, flatten, linear), so that BN folding, observers and module swaps see the whole graph
through ``named_modules``. Shortcuts that change shape are 1x1 conv + BN (option B).

Train the committed weights with::

    python -m aciq.quant.resnet20 --out quant/weights/resnet20_fmnist.pt
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from . import train_fmnist
from .train_fmnist import TrainResult, evaluate_float, load_weights

__all__ = ["WEIGHTS", "BasicBlock", "ResNet20", "resnet20", "load_resnet20_fmnist", "train", "main",
           "TrainResult", "evaluate_float"]

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

    Inputs are :func:`aciq.quant.fashion_mnist.to_tensor` images, float32 (N, 1, 28, 28). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for one that does not hold this model's
    state dict (:func:`aciq.quant.train_fmnist.load_weights`).
    """
    return load_weights(resnet20(), WEIGHTS if weights is None else weights, label="ResNet-20",
                        module="aciq.quant.resnet20")


def train(*, epochs: int = 7, seed: int = 0, batch_size: int = 128, max_lr: float = 0.2,
          weight_decay: float = 5e-4, momentum: float = 0.9, root=None, threads: int | None = 2,
          limit: int | None = None, log=None) -> TrainResult:
    """Train :func:`resnet20` on the Fashion-MNIST training images (:func:`aciq.quant.train_fmnist.train`:
    SGD, one-cycle schedule, crops and flips, seeded); the defaults trained the committed weights."""
    return train_fmnist.train(resnet20, epochs=epochs, seed=seed, batch_size=batch_size, max_lr=max_lr,
                              weight_decay=weight_decay, momentum=momentum, root=root, threads=threads,
                              limit=limit, log=log)


def main(argv=None) -> int:
    """Train ResNet-20 on Fashion-MNIST; write the state dict and its JSON card (same stem, ``.json``)."""
    return train_fmnist.main(
        argv, module="aciq.quant.resnet20", description=main.__doc__, weights=WEIGHTS, train_fn=train, epochs=7,
        lr=0.2,
        model_card="ResNet-20 (He et al. 2016, CIFAR variant, option-B shortcuts), 1x28x28 input, 10 classes")


if __name__ == "__main__":
    raise SystemExit(main())
