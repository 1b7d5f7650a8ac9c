"""aciq.quant.equalize: cross-layer equalization and bias absorption keep the float function, balance what
they target, and leave alone what they cannot rewrite exactly."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from aciq.quant import fold_batchnorm
from aciq.quant.clamp import ChannelClamp
from aciq.quant.equalize import (EqualizationReport, PairState, balance_activations, balance_weights, equalize,
                                 input_ranges)
from aciq.quant.pairs import find_pairs, in_ranges, out_ranges


def spread_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorms with channel scales over two decades, so that folded channel ranges differ widely."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(10 ** (torch.rand(n, generator=g) * 2 - 1))
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.5)
    return model.eval()


def folded(model, x):
    model = spread_bn(model).eval()
    fold_batchnorm(model, x[:1])
    return model


def assert_same(model, ref_model, x, rel=1e-5):
    with torch.no_grad():
        ref, out = ref_model(x), model(x)
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= rel * scale, (out - ref).abs().max().item() / scale


def log_imbalance(model, pair):
    r1, r2 = out_ranges(model, pair), in_ranges(model, pair)
    live = (r1 > 0) & (r2 > 0)
    return float(np.abs(np.log(r1[live] / r2[live])).max())


# --------------------------------------------------------------------------- small models
def conv_bn(cin, cout, k=3, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class ConvReluConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8), nn.Conv2d(8, 5, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x))


class MBConv(nn.Module):
    """conv1x1 -> ReLU6 -> depthwise 3x3 -> ReLU6 -> conv1x1 (MobileNetV2's inverted residual, no skip)."""

    def __init__(self, cin=4, mid=12, cout=6):
        super().__init__()
        self.expand, self.dw = conv_bn(cin, mid, 1, act=nn.ReLU6), conv_bn(mid, mid, 3, groups=mid, act=nn.ReLU6)
        self.project = nn.Conv2d(mid, cout, 1)

    def forward(self, x):
        return self.project(self.dw(self.expand(x)))


class SharedReLU6(nn.Module):
    """EfficientNet-Lite's block: ONE ReLU6 module called after the expand conv and after the depthwise conv."""

    def __init__(self, cin=4, mid=12, cout=6):
        super().__init__()
        self.expand, self.bn0 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.dw, self.bn1 = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid)
        self.project = nn.Conv2d(mid, cout, 1)
        self.act = nn.ReLU6()

    def forward(self, x):
        x = self.act(self.bn0(self.expand(x)))
        return self.project(self.act(self.bn1(self.dw(x))))


def mlp():
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 7))


class Grouped(nn.Module):
    """A grouped conv (4 groups) into a conv with 2 groups: input channel i of B is column i - g*I_g of group g."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(8, 16, 3, groups=4)
        self.b = nn.Conv2d(16, 6, 3, padding=1, groups=2)

    def forward(self, x):
        return self.b(self.a(x))


CASES = {
    "conv-relu-conv": (ConvReluConv, (2, 3, 9, 9), ["a.0 -> a.2 -> b"]),
    "conv-relu6-dw-relu6-conv": (MBConv, (2, 4, 7, 7), ["expand.0 -> expand.2 -> dw.0", "dw.0 -> dw.2 -> project"]),
    "linear-relu-linear": (mlp, (5, 10), ["0 -> 2 -> 3"]),
    "grouped": (Grouped, (2, 8, 6, 6), ["a.0 -> a.2 -> b"]),
    "conv-leakyrelu-conv": (lambda: nn.Sequential(conv_bn(3, 8, act=lambda: nn.LeakyReLU(0.2)), nn.Conv2d(8, 4, 1)),
                            (2, 3, 6, 6), ["0.0 -> 0.2 -> 1"]),
    "linear-prelu-linear": (lambda: nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9), nn.PReLU(9), nn.Linear(9, 2)),
                            (8, 6), ["0 -> 2 -> 3"]),
    "shared-relu6": (SharedReLU6, (2, 4, 7, 7), ["expand -> act[0] -> dw", "dw -> act[1] -> project"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_weights_rule_is_exact_and_balances_ranges(case):
    cls, shape, names = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(*shape)
    model = folded(cls(), x)
    original = copy.deepcopy(model)
    pairs = find_pairs(model, x).pairs
    assert [p.name for p in pairs] == names
    before = [log_imbalance(model, p) for p in pairs]
    report = equalize(model, x)
    assert isinstance(report, EqualizationReport) and report.converged
    assert [r.pair.name for r in report.pairs] == names
    assert_same(model, original, x)
    assert_same(model, original, torch.randn(*shape) * 3)          # unseen inputs too
    after = [log_imbalance(model, p) for p in pairs]
    assert max(before) > 0.5                                       # the BN spread made them unbalanced ...
    assert max(after) < 1e-3                                       # ... and now r1_i == r2_i per channel
    assert report.output_error < 1e-5
    again = equalize(model, x)                                     # a balanced model stays as it is
    assert again.sweeps == 1 and all(abs(math.log(r.scale_min)) < 1e-3 and abs(math.log(r.scale_max)) < 1e-3
                                     for r in again.pairs)


def test_relu6_becomes_a_per_channel_clamp():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 7, 7)
    model = folded(MBConv(), x)
    report = equalize(model, x)
    assert isinstance(model.expand[2], ChannelClamp) and isinstance(model.dw[2], ChannelClamp)
    assert set(report.clamps) == {"expand.2", "dw.2"}
    lo, hi = model.expand[2].bounds(0)
    assert torch.equal(lo, torch.zeros(12))
    assert hi.min() < 6 < hi.max()                                  # 6 / s_i: differs per channel
    s = 6.0 / hi.double()                                           # the scales the bounds imply ...
    r = report.pairs[0]
    assert s.min().item() == pytest.approx(r.scale_min, rel=1e-6)  # ... are the scales applied to the pair
    assert s.max().item() == pytest.approx(r.scale_max, rel=1e-6)


def test_relu_is_kept_as_it_is_without_absorption():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 9, 9)
    model = folded(ConvReluConv(), x)
    report = equalize(model, x)
    assert isinstance(model.a[2], nn.ReLU) and report.clamps == ()


def test_scales_match_the_dfq_formula_for_one_pair():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 9, 9)
    model = folded(ConvReluConv(), x)
    pair = find_pairs(model, x).pairs[0]
    r1, r2 = out_ranges(model, pair), in_ranges(model, pair)
    w_a = model.a[0].weight.detach().clone()
    report = equalize(model, x, iterations=1)          # one pair: one sweep reaches the balance
    expected = np.sqrt(r1 * r2) / r2                   # DFQ eq. 7
    got = (w_a.flatten(1).abs().amax(1) / model.a[0].weight.detach().flatten(1).abs().amax(1)).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert report.pairs[0].scale_min == pytest.approx(expected.min(), rel=1e-6)
    assert report.pairs[0].scale_max == pytest.approx(expected.max(), rel=1e-6)
    np.testing.assert_allclose(out_ranges(model, pair), np.sqrt(r1 * r2), rtol=1e-5)
    np.testing.assert_allclose(in_ranges(model, pair), np.sqrt(r1 * r2), rtol=1e-5)


def test_rules_on_hand_values():
    st = PairState(None, np.array([9.0, 1.0]), np.array([1.0, 4.0]), np.array([0.0, -1.0]), np.array([8.0, 0.5]))
    np.testing.assert_allclose(balance_weights(st), [3.0, 0.5])
    np.testing.assert_allclose(balance_activations(st), [8 / np.sqrt(8), 1 / np.sqrt(8)])


# --------------------------------------------------------------------------- shared module, repeated calls
def test_shared_relu6_gets_one_clamp_per_call_site():
    torch.manual_seed(4)
    x = torch.randn(3, 4, 7, 7)
    model = folded(SharedReLU6(), x)
    original = copy.deepcopy(model)
    equalize(model, x)
    clamp = model.act
    assert isinstance(clamp, ChannelClamp) and clamp.sites == 2
    hi0, hi1 = clamp.bounds(0)[1], clamp.bounds(1)[1]
    assert not torch.allclose(hi0, hi1)                 # the two calls clamp at different per-channel bounds
    for n in (1, 3, 7):                                 # any batch size, repeated forwards
        probe = torch.randn(n, 4, 7, 7)
        for _ in range(3):
            assert_same(model, original, probe)
    model.act.calls = 1                                 # as if a forward had stopped after the first call:
    assert_same(model, original, x)                     # the root's pre-hook restarts the count
    dup = copy.deepcopy(model)                          # the copy's hook resets the copy's clamp, not the original's
    dup.act.calls = 1
    assert_same(dup, original, x)


def test_shared_clamp_in_a_block_called_on_its_own():
    torch.manual_seed(14)
    x = torch.randn(2, 4, 7, 7)
    net = folded(nn.Sequential(SharedReLU6(), nn.Flatten()), x)      # the block's output is not rescaled
    original = copy.deepcopy(net)
    report = equalize(net, x)
    assert len(report.pairs) == 2 and net[0].act.sites == 2
    for _ in range(3):                                  # no root forward: the count wraps after its two calls
        assert_same(net[0], original[0], x)


class MetadataAndCat(nn.Module):
    """Shape reads of a tensor are not uses; a torch.cat is."""

    def __init__(self):
        super().__init__()
        self.a, self.relu, self.b = nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 1)
        self.c, self.d = nn.Conv2d(6, 4, 1), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        y = self.a(x)
        n, ch = y.shape[0], y.size(1)
        z = self.b(self.relu(y)).reshape(n, ch, *x.shape[2:])
        return self.d(torch.cat([self.c(z), z], 1))


def test_metadata_reads_are_not_uses_but_concatenation_is():
    x = torch.randn(2, 3, 5, 5)
    model = MetadataAndCat().eval()
    original = copy.deepcopy(model)
    report = equalize(model, x)
    assert [r.pair.name for r in report.pairs] == ["a -> relu -> b"]
    reasons = {r.layer: r.reason for r in report.rejected}
    assert "reshape" in reasons["b"] and "cat" in reasons["c"]
    assert_same(model, original, x)


@pytest.mark.parametrize("module", ["aciq.quant.equalize", "aciq.quant.clamp"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------- residuals, functional uses
class Residual(nn.Module):
    """conv1 -> relu -> conv2, then + x: only the inner pair may be rescaled."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.head(torch.relu(y + x))


class FeedsTwo(nn.Module):
    """A conv output feeding a ReLU module and a functional sigmoid gate (an SE-like use)."""

    def __init__(self):
        super().__init__()
        self.a, self.relu, self.b = nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(self.relu(y) * torch.sigmoid(y.mean((2, 3), keepdim=True)))


def outputs_of(model, names, x):
    got = {}
    hs = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: got.__setitem__(n, o.clone()))
          for n in names]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return got


def test_residual_sums_are_left_alone():
    torch.manual_seed(5)
    x = torch.randn(2, 6, 8, 8)
    model = folded(Residual(), x)
    original = copy.deepcopy(model)
    report = equalize(model, x)
    assert [r.pair.name for r in report.pairs] == ["conv1 -> relu -> conv2"]
    reasons = {r.layer: r.reason for r in report.rejected}
    assert "add" in reasons["conv2"] and "model output" in reasons["head"]
    assert_same(model, original, x)
    # what enters the sum is unchanged (conv2's columns were scaled, its output is not)
    before, after = outputs_of(original, ["conv2"], x), outputs_of(model, ["conv2"], x)
    torch.testing.assert_close(after["conv2"], before["conv2"], rtol=1e-5, atol=1e-5)


def test_resnet20_pairs_are_inside_blocks_only():
    from aciq.quant.resnet20 import load_resnet20_fmnist

    model = load_resnet20_fmnist()
    x = torch.randn(4, 1, 28, 28)
    fold_batchnorm(model, x[:1])
    original = copy.deepcopy(model)
    report = equalize(model, x)
    assert [r.pair.first for r in report.pairs] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert all(r.pair.second.endswith(".conv2") for r in report.pairs)
    rejected = {r.layer: r.reason for r in report.rejected}
    assert all("add" in rejected[f"layer{s}.{b}.conv2"] for s in (1, 2, 3) for b in range(3))
    assert "add" in rejected["conv1"]            # the stem's ReLU output also feeds the first shortcut
    assert_same(model, original, x)


def test_functional_second_use_rejects_the_link():
    torch.manual_seed(6)
    x = torch.randn(2, 3, 5, 5)
    model = FeedsTwo().eval()
    original = copy.deepcopy(model)
    report = equalize(model, x)
    assert report.pairs == ()
    assert "mean" in {r.layer: r.reason for r in report.rejected}["a"]
    assert_same(model, original, x, rel=0)


def test_model_without_pairs_is_a_defined_no_op():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 9, 2)).eval()
    original = copy.deepcopy(model)
    report = equalize(model, torch.randn(2, 3, 5, 5))
    assert report.pairs == () and report.converged and report.sweeps == 0
    reasons = {r.layer: r.reason for r in report.rejected}
    assert set(reasons) == {"0", "2"}
    assert "Flatten 1" in reasons["0"] and "model output" in reasons["2"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values()))
    assert "not equalized: 0:" in report.summary()


def test_unfolded_batchnorm_ends_the_chain():
    torch.manual_seed(7)
    model = spread_bn(ConvReluConv())
    report = equalize(model, torch.randn(2, 3, 9, 9))
    assert report.pairs == () and "BatchNorm2d a.1" in report.rejected[0].reason


# --------------------------------------------------------------------------- activations rule, absorption
def test_activations_rule_gives_every_channel_one_range():
    torch.manual_seed(8)
    calib = torch.randn(16, 4, 7, 7)
    model = folded(MBConv(), calib)
    original = copy.deepcopy(model)
    seconds = [p.second for p in find_pairs(model, calib).pairs]
    ranges = input_ranges(model, calib, seconds)
    extent = {k: np.maximum(np.abs(lo), np.abs(hi)) for k, (lo, hi) in ranges.items()}
    live = {k: e > 0 for k, e in extent.items()}                       # ReLU6 leaves some channels dead
    assert min(e[live[k]].max() / e[live[k]].min() for k, e in extent.items()) > 3   # unbalanced before
    report = equalize(model, calib, rule="activations", act_ranges=ranges)
    assert report.rule == "activations" and report.converged and report.sweeps <= 2
    assert_same(model, original, calib)
    after = input_ranges(model, calib, seconds)                         # measured again on the data
    for name, (lo, hi) in after.items():
        e, on = np.maximum(np.abs(lo), np.abs(hi)), live[name]
        np.testing.assert_allclose(e[on], np.exp(np.log(extent[name][on]).mean()), rtol=1e-5)
        assert (e[~on] == 0).all()


def test_bias_absorption_is_exact_and_moves_the_minimum_to_zero():
    torch.manual_seed(9)
    calib = torch.randn(32, 4, 7, 7)
    model = folded(MBConv(), calib)
    with torch.no_grad():
        model.dw[0].bias.add_(2.0)                  # the depthwise outputs sit well above 0: something to absorb
    original = copy.deepcopy(model)
    pairs = find_pairs(model, calib).pairs
    ranges = input_ranges(model, calib, [p.second for p in pairs])
    lo_before = ranges["project"][0]
    assert (lo_before > 0.5).sum() >= 3
    report = equalize(model, calib, act_ranges=ranges, absorb_bias=True)
    by_second = {r.pair.second: r for r in report.pairs}
    assert by_second["project"].absorbed_max > 0.5                  # 1x1 conv, no padding: exact, absorbed
    assert by_second["dw.0"].absorbed_max is None                   # 3x3 zero-padded depthwise: skipped
    assert "pads its input with zeros" in by_second["dw.0"].absorb_note
    assert_same(model, original, calib)
    assert_same(model, original, torch.randn(5, 4, 7, 7) * 2)
    lo_after = input_ranges(model, calib, ["project"])["project"][0]
    live = lo_before > 0
    np.testing.assert_allclose(lo_after[live], 0.0, atol=1e-5)     # shifted by exactly the calibration minimum
    assert (lo_after[~live] <= 0).all()                             # nothing moved where the minimum is <= 0


def test_bias_absorption_through_a_relu_on_linear_layers():
    torch.manual_seed(10)
    calib = torch.randn(64, 10)
    model = folded(mlp(), calib)
    with torch.no_grad():
        model[0].bias.add_(3.0)
    original = copy.deepcopy(model)
    ranges = input_ranges(model, calib, ["3"])
    report = equalize(model, calib, act_ranges=ranges, absorb_bias=True)
    assert isinstance(model[2], ChannelClamp)                       # clamp(y - c, -c, inf) + c == relu(y)
    assert report.pairs[0].absorbed_max > 1.0
    assert_same(model, original, torch.randn(50, 10) * 4)          # including inputs far below the minimum
    assert input_ranges(model, calib, ["3"])["3"][0].max() <= 1e-5


def test_statistics_object_as_act_ranges():
    from aciq.quant import QuantConfig, collect_statistics

    torch.manual_seed(11)
    calib = torch.randn(8, 4, 7, 7)
    model = folded(MBConv(), calib)
    stats = collect_statistics(model, QuantConfig(), calib)
    report = equalize(model, calib, rule="activations", act_ranges=stats)
    assert len(report.pairs) == 2 and report.pairs[0].scale_max > report.pairs[0].scale_min


# --------------------------------------------------------------------------- bad input
def test_bad_arguments_name_themselves():
    x = torch.randn(2, 3, 9, 9)
    model = folded(ConvReluConv(), x)
    with pytest.raises(ValueError, match="eval mode"):
        equalize(copy.deepcopy(model).train(), x)
    with pytest.raises(ValueError, match="rule must be one of"):
        equalize(model, x, rule="nope")
    with pytest.raises(ValueError, match="needs act_ranges"):
        equalize(model, x, rule="activations")
    with pytest.raises(ValueError, match="needs act_ranges"):
        equalize(model, x, absorb_bias=True)
    with pytest.raises(ValueError, match="no module named 'zz'"):
        equalize(model, x, rule="activations", act_ranges={"zz": (np.zeros(8), np.ones(8))})
    with pytest.raises(ValueError, match=r"act_ranges\['b'\]: expected \(8,\)"):
        equalize(model, x, rule="activations", act_ranges={"b": (np.zeros(3), np.ones(3))})
    with pytest.raises(ValueError, match="iterations"):
        equalize(model, x, iterations=0)
    with pytest.raises(ValueError, match="example"):
        equalize(model, x.long())


def test_invalid_scales_restore_the_model():
    x = torch.randn(2, 3, 9, 9)
    model = folded(ConvReluConv(), x)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="invalid scales for pair a.0 -> a.2 -> b"):
        equalize(model, x, rule=lambda st: -np.ones(st.pair.channels))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class NormalizedConv(nn.Conv2d):
    """A conv subclass that normalizes its weight in forward: rescaling its columns is not exact."""

    def forward(self, x):
        w = self.weight / self.weight.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_output_check_catches_what_the_trace_cannot_see():
    torch.manual_seed(12)
    x = torch.randn(2, 3, 9, 9)
    model = folded(ConvReluConv(), x)
    model.b = NormalizedConv(8, 5, 3, padding=1)
    original = copy.deepcopy(model)
    with pytest.raises(ValueError, match="changed the output .* restored"):
        equalize(model, x)
    assert_same(model, original, x, rel=0)
    assert type(model.a[2]) is nn.ReLU


# --------------------------------------------------------------------------- real networks
def test_mobilenet_v2_random_weights():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(13)
    x = torch.randn(2, 3, 64, 64)
    model = folded(torchvision.models.mobilenet_v2(weights=None), x)
    original = copy.deepcopy(model)
    report = equalize(model, x)
    assert len(report.pairs) == 36 and report.converged
    firsts = {r.pair.first for r in report.pairs}
    rejected = {r.layer: r.reason for r in report.rejected}
    # a block with a skip connection: its project conv feeds the sum and stays unscaled
    assert "features.3.conv.2" not in firsts and "add" in rejected["features.3.conv.2"]
    assert "features.2.conv.2" in rejected and "also into add" in rejected["features.2.conv.2"]
    assert all(isinstance(model.get_submodule(r.pair.act), ChannelClamp) for r in report.pairs if r.pair.act)
    assert_same(model, original, x)
    assert_same(model, original, torch.randn(3, 3, 64, 64))


@pytest.fixture(scope="module")
def lite0():
    from aciq.quant import photos as ph
    from aciq.quant.zoo import load_model

    model = load_model("efficientnet_lite0")
    photos = ph.load_photos()
    x = ph.crop_batch(photos[:4], model_name="efficientnet_lite0", n_per_photo=2, seed=0)
    fold_batchnorm(model, x[:1])
    for p in model.parameters():
        p.requires_grad_(False)
    return model, x, ph.crop_batch(photos[10:13], model_name="efficientnet_lite0", n_per_photo=1, seed=1)


def test_efficientnet_lite0_end_to_end(lite0):
    base, x, probe = lite0
    model = copy.deepcopy(base)
    report = equalize(model, x)
    assert len(report.pairs) == 34 and report.converged
    # every block's shared ReLU6 became a clamp with one site per call
    for i, block in enumerate(model._blocks):
        assert isinstance(block._swish, ChannelClamp) and block._swish.sites == (1 if i == 0 else 2)
    assert isinstance(model._swish, ChannelClamp) and model._swish.sites == 2   # stem and head
    names = {r.pair.name for r in report.pairs}
    assert "_blocks.1._expand_conv -> _blocks.1._swish[0] -> _blocks.1._depthwise_conv" in names
    assert "_blocks.1._depthwise_conv -> _blocks.1._swish[1] -> _blocks.1._project_conv" in names
    rejected = {r.layer: r.reason for r in report.rejected}
    assert "add" in rejected["_blocks.2._project_conv"] and "AdaptiveAvgPool2d" in rejected["_conv_head"]
    for _ in range(2):
        assert_same(model, base, probe, rel=1e-4)                  # real photos never seen by equalize
        assert_same(model, base, probe[:1], rel=1e-4)
    with torch.no_grad():
        assert torch.equal(model(probe).argmax(1), base(probe).argmax(1))
    # balanced after convergence: both ranges of every pair meet in the middle
    assert max(log_imbalance(model, r.pair) for r in report.pairs) < 2e-3
