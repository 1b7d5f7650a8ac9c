"""Every target architecture quantizes and runs; a quality floor on a random-init ResNet-18.

Random weights (``weights=None``): no download. Small inputs (64x64, Inception 80x80) and one calibration
image keep the whole file near 40 s on one CPU thread (VGG-16's 138 M weights dominate).
"""
import pytest
import torch
from torch import nn

from aciq.quant import QuantConfig, preset, quantize
from aciq.quant.modules import QuantizedLayer

torchvision = pytest.importorskip("torchvision")


def build(name):
    if name == "efficientnet_lite0":
        zoo = pytest.importorskip("aciq.quant.zoo")
        return zoo.load_model(name, pretrained=False)
    kwargs = dict(aux_logits=False, init_weights=False) if name == "inception_v3" else {}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


def count(model, types):
    return sum(isinstance(m, types) for m in model.modules())


BN = (nn.BatchNorm1d, nn.BatchNorm2d)
CASES = [
    # name, preset, input size, mark
    ("resnet18", "w4a4-all", 64, ()),
    ("mobilenet_v2", "w4a4-all", 64, ()),          # depthwise convs + BN, ReLU6
    ("efficientnet_lite0", "w4a4-all", 64, ()),
    ("inception_v3", "w4a4-all", 80, ()),           # needs >= 75x75
    ("resnet50", "w4a4-all", 64, (pytest.mark.slow,)),
    ("resnet101", "seed-w4a4-all", 64, (pytest.mark.slow,)),
    ("vgg16", "w4a4-naive", 64, (pytest.mark.slow,)),      # heavy: per-channel, no allocation
    ("vgg16_bn", "w8a4-aciq", 64, (pytest.mark.slow,)),
]


@pytest.mark.parametrize("name, cfg, size", [pytest.param(*c[:3], marks=c[3], id=c[0]) for c in CASES])
def test_architecture_quantizes_and_runs(name, cfg, size):
    torch.manual_seed(0)
    model = build(name)
    layers, bns = count(model, (nn.Conv2d, nn.Linear)), count(model, BN)
    x = torch.randn(1, 3, size, size)
    q = quantize(model, preset(cfg), x)
    with torch.no_grad():
        out = q(torch.randn(2, 3, size, size))
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert count(q, QuantizedLayer) == layers
    assert count(q, (nn.Conv2d, nn.Linear)) == layers        # each inside its QuantizedLayer, none left bare
    assert count(q, BN) == 0 and len(q.aciq_folded) == bns   # every BN of these models follows a conv
    assert count(model, BN) == bns                           # the float model keeps its BNs


def sqnr_db(ref, y):
    return float(10 * torch.log10((ref ** 2).sum() / ((ref - y) ** 2).sum()))


@pytest.fixture(scope="module")
def resnet18_sqnr():
    torch.manual_seed(0)
    model = build("resnet18")
    calib, x = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        return {name: sqnr_db(ref, quantize(model, cfg, calib)(x)) for name, cfg in [
            ("w8a8-minmax", QuantConfig(weight_bits=8, act_bits=8)),
            ("w4a4-naive", preset("w4a4-naive")),
            ("w4a4-all", preset("w4a4-all"))]}


def test_w8a8_minmax_sqnr(resnet18_sqnr):
    assert resnet18_sqnr["w8a8-minmax"] > 25.0        # measured 36.3 dB (seeds 0-2: 35.8-36.3)


def test_w4a4_aciq_beats_naive(resnet18_sqnr):
    # measured 17.1 vs 15.0 dB (seeds 0-2: +1.1 to +2.2 dB); per-channel allocation and bias correction
    # carry the gain: ACIQ clipping alone (w4a4-aciq) equals naive here, the random-init activations are
    # near Gaussian and the Laplace window lies beyond the calibration maximum
    assert resnet18_sqnr["w4a4-all"] > resnet18_sqnr["w4a4-naive"] + 0.5
