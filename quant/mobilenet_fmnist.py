"""A small MobileNetV2-style network (Sandler et al., 2018) for 28x28 one-channel images, and its
Fashion-MNIST training: the embedded depthwise network, where 4-bit post-training quantization hurts.

Stem conv3x3 (stride 2) + BN + ReLU6, inverted-residual blocks (1x1 expand -> BN -> ReLU6 -> depthwise 3x3 -> BN ->
ReLU6 -> 1x1 project -> BN, the "linear bottleneck", plus the block's input when stride and channels allow),
a 1x1 head conv + BN + ReLU6, global average pooling, linear. As in :mod:`aciq.quant.resnet20`, every
operation but the residual addition is a module and every ReLU6 a distinct ``nn.ReLU6`` called once, so
BN folding, observers and module swaps see the whole graph through ``named_modules``.

The width is chosen so that 4 bits hurt, as they do on ImageNet depthwise networks. Trained for 10 epochs
(otherwise the same schedule), scored on the 10 000 test images (float top-1; top-1 lost by ``w4a4-naive``,
``w4a4-pt-minmax``; calibration as in :mod:`aciq.quant.embedded`):

* 8/3 as wide (16-channel stem, 104 K parameters): 91.81 %; 1.0 and 5.2 points;
* 4/3 as wide (8-channel stem, 30 K parameters): 91.17 %; 2.5 and 4.2 points;
* this network (6-channel stem, 18 K parameters): 90.29 %; 4.5 and 26.7 points;
* 2/3 as wide (4-channel stem, 9 K parameters): 88.88 %; 4.2 and 11.0 points.

The committed weights are this network trained for 20 epochs: 91.07 %; 5.2 and 6.2 points.

Train the committed weights with (one thread, as they were: other thread counts change the float sums)::

    python -m aciq.quant.mobilenet_fmnist --out quant/weights/mobilenet_fmnist.pt --threads 1
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from . import train_fmnist
from .train_fmnist import TrainResult, evaluate_float, load_weights

__all__ = ["WEIGHTS", "STEM", "BLOCKS", "HEAD", "InvertedResidual", "MobileNetFMNIST", "mobilenet_fmnist",
           "load_mobilenet_fmnist", "train", "main", "TrainResult", "evaluate_float"]

WEIGHTS = Path(__file__).parent / "weights" / "mobilenet_fmnist.pt"
"""The committed Fashion-MNIST weights (state dict, tensors only); the JSON card lies beside it."""

STEM = 6
"""Output channels of the stem conv3x3 (stride 2, as in MobileNetV2: 14x14 maps)."""
BLOCKS = ((4, 6, 1, 1), (4, 9, 2, 2), (4, 12, 3, 1), (4, 24, 2, 1))
"""Stages of inverted residuals as MobileNetV2's table 2 writes them: (expansion t, output channels c,
repeats n, stride s of the first block); maps of 14 -> 14 -> 7 -> 7 -> 7 pixels."""
HEAD = 72
"""Output channels of the 1x1 head conv."""


class InvertedResidual(nn.Module):
    """1x1 expand (``expansion`` x) - BN - ReLU6 - depthwise 3x3 (``stride``) - BN - ReLU6 - 1x1 project - BN,
    plus the input when ``stride == 1`` and the channels match (no activation after the sum)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU6(inplace=False)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU6(inplace=False)
        self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.relu1(self.bn1(self.expand(x)))
        out = self.relu2(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        return x + out if self.residual else out


class MobileNetFMNIST(nn.Module):
    """Stem conv3x3(``stem``, stride 2) + the inverted-residual stages ``blocks`` + 1x1 conv(``head``) + avgpool +
    linear (see :data:`BLOCKS` for the layout of ``blocks``)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, stem: int = STEM, blocks=BLOCKS,
                 head: int = HEAD):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu1 = nn.ReLU6(inplace=False)
        layers, c_in = [], stem
        for expansion, channels, repeats, stride in blocks:
            for j in range(repeats):
                layers.append(InvertedResidual(c_in, channels, stride if j == 0 else 1, expansion))
                c_in = channels
        self.blocks = nn.Sequential(*layers)
        self.conv2 = nn.Conv2d(c_in, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.relu2 = nn.ReLU6(inplace=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(head, num_classes)
        for m in self.modules():   # torchvision's MobileNetV2 initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(self.blocks(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _positive(name, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def mobilenet_fmnist(num_classes: int = 10, in_channels: int = 1, *, stem: int = STEM, blocks=BLOCKS,
                     head: int = HEAD) -> nn.Module:
    """A freshly initialised :class:`MobileNetFMNIST` for ``in_channels`` x 28 x 28 inputs; the defaults are
    the architecture of the committed weights.

    Examples
    --------
    >>> net = mobilenet_fmnist()
    >>> sum(p.numel() for p in net.parameters())
    18256
    """
    num_classes, in_channels = _positive("num_classes", num_classes), _positive("in_channels", in_channels)
    stem, head = _positive("stem", stem), _positive("head", head)
    try:
        blocks = tuple(tuple(_positive(f"blocks[{i}] entries", v) for v in row) for i, row in enumerate(blocks))
    except TypeError:
        raise ValueError(f"blocks must be rows (expansion, channels, repeats, stride), got {blocks!r}") from None
    if not blocks or any(len(row) != 4 for row in blocks):
        raise ValueError(f"blocks must be a non-empty sequence of (expansion, channels, repeats, stride) rows, "
                         f"got {blocks!r}")
    return MobileNetFMNIST(num_classes=num_classes, in_channels=in_channels, stem=stem, blocks=blocks, head=head)


def load_mobilenet_fmnist(weights=None) -> nn.Module:
    """:func:`mobilenet_fmnist` with the trained Fashion-MNIST weights (default :data:`WEIGHTS`), in eval
    mode, on CPU.

    Inputs are :func:`aciq.quant.fashion_mnist.to_tensor` images, float32 (N, 1, 28, 28). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for one that does not hold this model's
    state dict (:func:`aciq.quant.train_fmnist.load_weights`).
    """
    return load_weights(mobilenet_fmnist(), WEIGHTS if weights is None else weights,
                        label="MobileNet (Fashion-MNIST)", module="aciq.quant.mobilenet_fmnist")


def train(*, epochs: int = 20, seed: int = 0, batch_size: int = 128, max_lr: float = 0.2,
          weight_decay: float = 5e-4, momentum: float = 0.9, root=None, threads: int | None = 2,
          limit: int | None = None, log=None) -> TrainResult:
    """Train :func:`mobilenet_fmnist` on the Fashion-MNIST training images (:func:`aciq.quant.train_fmnist.train`:
    SGD, one-cycle schedule, crops and flips, seeded); the defaults trained the committed weights."""
    return train_fmnist.train(mobilenet_fmnist, epochs=epochs, seed=seed, batch_size=batch_size, max_lr=max_lr,
                              weight_decay=weight_decay, momentum=momentum, root=root, threads=threads,
                              limit=limit, log=log)


def main(argv=None) -> int:
    """Train the MobileNetV2-style network on Fashion-MNIST; write the state dict and its JSON card."""
    return train_fmnist.main(
        argv, module="aciq.quant.mobilenet_fmnist", description=main.__doc__, weights=WEIGHTS, train_fn=train,
        epochs=20, lr=0.2,
        model_card="MobileNetV2-style (inverted residuals, depthwise 3x3, ReLU6, BatchNorm), 1x28x28 input, "
                   "10 classes",
        extra_card=dict(architecture=dict(stem=STEM, blocks=[list(b) for b in BLOCKS], head=HEAD)))


if __name__ == "__main__":
    raise SystemExit(main())
