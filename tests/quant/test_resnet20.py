"""ResNet-20: architecture, the committed Fashion-MNIST weights and their card, training determinism."""
import hashlib
import json
import re

import pytest
import torch
from torch import nn

from aciq.quant import fashion_mnist as fm
from aciq.quant.resnet20 import WEIGHTS, evaluate_float, load_resnet20_fmnist, resnet20, train

CARD = WEIGHTS.with_suffix(".json")
needs_data = pytest.mark.skipif(not fm.DEFAULT_ROOT.is_dir(),
                                reason="Debian package dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def card():
    return json.loads(CARD.read_text())


@pytest.fixture(scope="module")
def model():
    return load_resnet20_fmnist()


def test_forward_shape_and_size():
    net = resnet20().eval()
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert resnet20(num_classes=5, in_channels=3).eval()(torch.zeros(2, 3, 28, 28)).shape == (2, 5)
    assert sum(p.numel() for p in net.parameters()) == 272_186
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 21 and sum(m.kernel_size == (1, 1) for m in convs) == 2  # 19 3x3 + 2 shortcuts
    shortcut = net.layer2[0].shortcut
    assert isinstance(shortcut[0], nn.Conv2d) and shortcut[0].stride == (2, 2)
    assert isinstance(shortcut[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="num_classes"):
        resnet20(num_classes=0)


def test_every_relu_is_a_distinct_module_called_once():
    net = resnet20().eval()
    relus = [m for _, m in net.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == 19 and len({id(m) for m in relus}) == 19
    assert not any(m.inplace for m in relus)
    calls = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    with torch.no_grad():
        net(torch.randn(2, 1, 28, 28))
    assert len(calls) == 19 and set(calls.values()) == {1}


def test_committed_weights_load_with_weights_only(card):
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert set(state) == set(resnet20().state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == card["sha256"]
    assert WEIGHTS.stat().st_size < 1_500_000
    net = load_resnet20_fmnist()
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
def test_evaluate_float_takes_pixels_or_tensors(model):
    images, labels = fm.load("test")
    images, labels = images[:300], labels[:300]
    from_pixels = evaluate_float(model, images, labels, batch_size=128)
    assert from_pixels == evaluate_float(model, fm.to_tensor(images), torch.from_numpy(labels))
    assert from_pixels > 0.8
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_float(model, images, labels, batch_size=0)
    with pytest.raises(ValueError, match="equal length"):
        evaluate_float(model, images, labels[:10])


def test_missing_weights_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))) as info:
        load_resnet20_fmnist(path)
    assert "python -m aciq.quant.resnet20" in str(info.value)


def test_mismatched_keys_name_the_file_and_the_keys(tmp_path):
    state = resnet20().state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*fc.bias.*extra.weight"):
        load_resnet20_fmnist(path)
    state = resnet20(num_classes=5).state_dict()
    torch.save(state, path)
    with pytest.raises(ValueError, match="shapes.*fc.weight"):
        load_resnet20_fmnist(path)


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
    assert not runs[0].model.training


@needs_data
@pytest.mark.slow
def test_main_writes_weights_and_card(tmp_path):
    from aciq.quant.resnet20 import main

    out = tmp_path / "w" / "r20.pt"
    assert main(["--out", str(out), "--epochs", "1", "--limit", "256", "--threads", "1"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert card["train_images"] == 256 and card["test_images"] == 10_000 and card["epochs"] == 1
    assert card["test_correct"] == round(card["test_top1"] * 100)
    assert card["lr_schedule"]["name"] == "OneCycleLR" and card["torch"] == torch.__version__
    assert not load_resnet20_fmnist(out).training
