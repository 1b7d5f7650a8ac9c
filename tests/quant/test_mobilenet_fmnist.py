"""The MobileNetV2-style Fashion-MNIST network: architecture, committed weights and card, loading errors,
training determinism, and that the quantizer goes through its depthwise convs."""
import doctest
import hashlib
import json
import re

import pytest
import torch
from torch import nn

import aciq.quant.mobilenet_fmnist as mnf
from aciq.quant import fashion_mnist as fm
from aciq.quant import QuantConfig, preset, quantize
from aciq.quant.modules import QuantizedLayer
from aciq.quant.mobilenet_fmnist import (BLOCKS, WEIGHTS, InvertedResidual, evaluate_float, load_mobilenet_fmnist,
                                         mobilenet_fmnist, train)

CARD = WEIGHTS.with_suffix(".json")
needs_data = pytest.mark.skipif(not fm.DEFAULT_ROOT.is_dir(),
                                reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def card():
    return json.loads(CARD.read_text())


@pytest.fixture(scope="module")
def model():
    return load_mobilenet_fmnist()


def test_docstring_examples():
    assert doctest.testmod(mnf).failed == 0


def test_forward_shape_and_layout():
    net = mobilenet_fmnist().eval()
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert mobilenet_fmnist(num_classes=5, in_channels=3).eval()(torch.zeros(2, 3, 28, 28)).shape == (2, 5)
    blocks = [m for m in net.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == sum(n for _, _, n, _ in BLOCKS)
    # a residual exactly where stride is 1 and the channels match: every repeat after the first of a stage,
    # and the first block of a stage whose input already has its channels
    expected, shapes, c_in = [], [], mnf.STEM
    for t, c, n, s in BLOCKS:
        expected += [s == 1 and c_in == c] + [True] * (n - 1)
        shapes += [(c_in, c_in * t, c, s)] + [(c, c * t, c, 1)] * (n - 1)
        c_in = c
    assert [b.residual for b in blocks] == expected and any(expected) and not all(expected)
    for b, (c_in, hidden, c_out, stride) in zip(blocks, shapes):
        assert (b.expand.in_channels, b.expand.out_channels, b.project.out_channels) == (c_in, hidden, c_out)
        assert b.depthwise.groups == b.depthwise.in_channels == b.depthwise.out_channels == hidden
        assert b.depthwise.kernel_size == (3, 3) and b.depthwise.stride == (stride, stride)
        assert b.expand.kernel_size == b.project.kernel_size == (1, 1)
    # spatial sizes: the stem halves 28 -> 14, the stride-2 stage halves again
    assert net.blocks(net.relu1(net.bn1(net.conv1(torch.zeros(1, 1, 28, 28))))).shape[-2:] == (7, 7)
    n_params = sum(p.numel() for p in net.parameters())
    assert 10_000 < n_params < 300_000


def test_every_relu6_is_a_distinct_module_called_once():
    net = mobilenet_fmnist().eval()
    relus = [m for _, m in net.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU6)]
    n_blocks = sum(n for _, _, n, _ in BLOCKS)
    assert len(relus) == 2 + 2 * n_blocks and len({id(m) for m in relus}) == len(relus)
    assert not any(m.inplace for m in relus)
    calls = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.ReLU6):
            m.register_forward_hook(lambda mod, inp, out, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    with torch.no_grad():
        net(torch.randn(2, 1, 28, 28))
    assert len(calls) == len(relus) and set(calls.values()) == {1}


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_classes=0), "num_classes"), (dict(in_channels=1.5), "in_channels"), (dict(stem=0), "stem"),
    (dict(head=-3), "head"), (dict(blocks=()), "blocks"), (dict(blocks=((4, 16, 1),)), "blocks"),
    (dict(blocks=((4, 16, 0, 1),)), r"blocks\[0\]"), (dict(blocks=5), "blocks"),
])
def test_bad_architecture_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mobilenet_fmnist(**kwargs)


def test_committed_weights_load_with_weights_only(card):
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert set(state) == set(mobilenet_fmnist().state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == card["sha256"]
    assert WEIGHTS.stat().st_size < 1_000_000
    assert card["architecture"] == dict(stem=mnf.STEM, blocks=[list(b) for b in BLOCKS], head=mnf.HEAD)
    net = load_mobilenet_fmnist()
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])


@needs_data
@pytest.mark.slow
def test_committed_weights_reach_the_card_top1(model, card):
    images, labels = fm.load("test")
    top1 = 100.0 * evaluate_float(model, images, labels)
    assert card["test_images"] == len(labels) == 10_000
    assert top1 >= 90.0
    assert abs(top1 - card["test_top1"]) <= 0.1


@needs_data
@pytest.mark.slow
def test_four_bits_hurt_and_the_paper_methods_recover(model):
    """What the network is for. Calibrated like aciq.quant.embedded's tables (64 seeded training images),
    measured: float 91.07 %, w4a4-naive 85.85 %, w4a4-all 88.41 % on the 10 000 test images."""
    train_x, _ = fm.load("train")
    test_x, test_y = fm.load("test")
    g = torch.Generator().manual_seed(0)
    calib = fm.to_tensor(train_x[torch.randperm(len(train_x), generator=g)[:64].numpy()])
    x = fm.to_tensor(test_x)
    top1 = {name: 100 * evaluate_float(quantize(model, preset(name), [calib[:32], calib[32:]]), x, test_y)
            for name in ("w4a4-naive", "w4a4-all")}
    float_top1 = 100 * evaluate_float(model, x, test_y)
    assert float_top1 - top1["w4a4-naive"] >= 3.0
    assert top1["w4a4-all"] - top1["w4a4-naive"] >= 1.0


def test_missing_weights_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as info:
        load_mobilenet_fmnist(path)
    assert "python -m aciq.quant.mobilenet_fmnist" in str(info.value)


def test_wrong_or_unsafe_weights_name_the_file(tmp_path):
    path = tmp_path / "bad.pt"
    state = mobilenet_fmnist().state_dict()
    del state["fc.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*missing keys.*fc.bias"):
        load_mobilenet_fmnist(path)
    torch.save(mobilenet_fmnist(num_classes=5).state_dict(), path)
    with pytest.raises(ValueError, match="shapes.*fc.weight"):
        load_mobilenet_fmnist(path)
    from aciq.quant.resnet20 import resnet20   # another Fashion-MNIST network's weights

    torch.save(resnet20().state_dict(), path)
    with pytest.raises(ValueError, match="do not match"):
        load_mobilenet_fmnist(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        load_mobilenet_fmnist(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*weights_only"):
        load_mobilenet_fmnist(path)


def test_quantize_folds_every_batchnorm_and_keeps_the_float_model():
    net = load_mobilenet_fmnist()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    calib = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    float_config = QuantConfig(weight_bits=None, act_bits=None, first_layer_bits=None, last_layer_bits=None)
    q = quantize(net, float_config, [calib])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules())
    assert sum(isinstance(m, QuantizedLayer) for m in q.modules()) == n_layers
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(q(x), net(x), rtol=1e-4, atol=1e-4)   # folding alone changes nothing
        w4 = quantize(net, preset("w4a8-naive"), [calib])(x)
    assert w4.shape == (4, 10) and torch.isfinite(w4).all() and not torch.allclose(w4, net(x))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@needs_data
def test_training_is_deterministic():
    threads = torch.get_num_threads()
    try:
        runs = [train(epochs=1, limit=256, batch_size=64, seed=3, threads=1) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [[{k: v for k, v in e.items() if k != "seconds"} for e in r.epochs] for r in runs]
    assert strip[0] == strip[1] and len(strip[0]) == 1
    assert runs[0].settings["lr_schedule"]["name"] == "OneCycleLR" and runs[0].settings["epochs"] == 1
    assert not runs[0].model.training and isinstance(runs[0].model, mnf.MobileNetFMNIST)


@needs_data
@pytest.mark.slow
def test_main_writes_weights_and_card(tmp_path):
    out = tmp_path / "w" / "mnf.pt"
    assert mnf.main(["--out", str(out), "--epochs", "1", "--limit", "256", "--threads", "1"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["train_images"] == 256 and card["test_images"] == 10_000 and card["epochs"] == 1
    assert card["architecture"]["blocks"] == [list(b) for b in BLOCKS]
    assert card["command"].startswith("python -m aciq.quant.mobilenet_fmnist ")
    assert not load_mobilenet_fmnist(out).training
