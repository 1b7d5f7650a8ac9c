"""aciq.quant.fold and aciq.quant.trace: BatchNorm folding is exact, and only where it is valid."""
import copy

import pytest
import torch
from torch import nn

from aciq.quant import fold_batchnorm, preset, quantize
from aciq.quant.trace import trace


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters (a fresh BN is nearly the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            if not m.track_running_stats:
                continue
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) * 2 - 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def check_fold(model, x, expected_pairs, *, probe=None):
    """Fold a copy; the pairs are as expected, folded BNs became Identity, outputs agree on fresh input."""
    probe = torch.randn_like(x) * 2 if probe is None else probe
    folded = copy.deepcopy(model)
    pairs = fold_batchnorm(folded, x)
    assert sorted(pairs) == sorted(expected_pairs)
    for _, bn in pairs:
        assert isinstance(folded.get_submodule(bn), nn.Identity)
    with torch.no_grad():
        ref, out = model(probe), folded(probe)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    return folded


class ConvBN(nn.Module):
    def __init__(self, groups=1, bias=True, affine=True, channels=6):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(channels, affine=affine)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


@pytest.mark.parametrize("kwargs", [dict(), dict(groups=6), dict(groups=2), dict(bias=False), dict(affine=False)],
                         ids=["conv", "depthwise", "grouped", "no-bias", "bn-affine-false"])
def test_conv_bn_folds_exactly(kwargs):
    torch.manual_seed(0)
    model = randomize_bn(ConvBN(**kwargs))
    x = torch.randn(2, 6, 8, 8)
    folded = check_fold(model, x, [("conv", "bn")])
    conv, bn = model.conv, model.bn
    k = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    b = conv.bias if conv.bias is not None else torch.zeros(6)
    beta = bn.bias if bn.affine else 0.0
    assert torch.allclose(folded.conv.weight, conv.weight * k.reshape(-1, 1, 1, 1), atol=1e-6)
    assert torch.allclose(folded.conv.bias, k * (b - bn.running_mean) + beta, atol=1e-6)


def test_linear_bn1d_folds_exactly():
    torch.manual_seed(1)
    model = randomize_bn(nn.Sequential(nn.Linear(10, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)))
    check_fold(model, torch.randn(4, 10), [("0", "1")])


class SharedOutput(nn.Module):
    """The conv output feeds the BN *and* another module: folding would change the second branch."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.other = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        c = self.conv(x)
        return self.bn(c) + self.other(c)


class FunctionalUse(nn.Module):
    """The conv output feeds the BN and a functional add the trace cannot see."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        c = self.conv(x)
        y = self.bn(c) + c
        return self.bn2(self.conv2(y))     # this pair is fine and is folded


class BNAfterReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.bn = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)

    def forward(self, x):
        return self.bn2(self.conv2(self.bn(self.relu(self.conv(x)))))


class SharedConv(nn.Module):
    """One conv called twice, a BN after one call: its weights serve both calls, so no fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(self.conv(x)))


@pytest.mark.parametrize("cls, pairs", [(SharedOutput, []), (FunctionalUse, [("conv2", "bn2")]),
                                        (BNAfterReLU, []), (SharedConv, [])],
                         ids=["module-consumer", "functional-consumer", "bn-after-relu", "shared-conv"])
def test_invalid_pairs_are_not_folded(cls, pairs):
    torch.manual_seed(2)
    model = randomize_bn(cls())
    check_fold(model, torch.randn(2, 3, 8, 8), pairs)


def test_eval_mode_required():
    model = ConvBN().train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model, torch.randn(1, 6, 4, 4))


def test_quantize_leaves_the_float_model_untouched():
    torch.manual_seed(3)
    model = randomize_bn(nn.Sequential(ConvBN(), nn.Flatten(), nn.Linear(6 * 16, 3)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize(model, preset("w4a4-all"), torch.randn(2, 6, 4, 4))
    assert isinstance(model[0].bn, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert q.aciq_folded == [("0.conv", "0.bn")]


def test_nan_output_does_not_read_as_a_folding_error():
    class NaNHead(nn.Module):
        def forward(self, x):
            return x * float("nan")

    model = randomize_bn(nn.Sequential(ConvBN(), NaNHead()))
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded, torch.randn(1, 6, 4, 4)) == [("0.conv", "0.bn")]


class InPlaceResidual(nn.Module):
    """torchvision's BasicBlock: ``out += identity`` modifies the BN output in place before the ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def test_trace_links_only_unmodified_tensors():
    model = InPlaceResidual().eval()
    tr = trace(model, torch.randn(1, 4, 5, 5))
    assert tr.consumers("conv1") == ["bn1"] and tr.consumers("bn1") == ["relu"]
    assert "relu" in tr.consumers("bn1") and "conv2" in tr.consumers("relu")
    # bn2's output is modified by `out += x` before the ReLU receives the same object: no link
    assert tr.consumers("bn2") == []
    assert tr.producers("bn2") == ["conv2"]
    check_fold(randomize_bn(model), torch.randn(1, 4, 5, 5), [("conv1", "bn1"), ("conv2", "bn2")])


def test_models_with_tuple_outputs_fold():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = ConvBN()

        def forward(self, x):
            y = self.body(x)
            return y.mean((2, 3)), {"map": y}

    model = randomize_bn(TwoHeads())
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded, torch.randn(1, 6, 4, 4)) == [("body.conv", "body.bn")]
