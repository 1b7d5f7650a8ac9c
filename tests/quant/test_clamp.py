"""aciq.quant.clamp: ChannelClamp computes what the module it replaces computes, per call site."""
import copy
import math

import pytest
import torch
from torch import nn

from aciq.quant.clamp import ChannelClamp, reset_calls_before_forward


@pytest.mark.parametrize("module", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.5, 2.0), nn.ReLU6(inplace=True)],
                         ids=["relu", "relu6", "hardtanh", "relu6-inplace"])
def test_like_computes_the_same_function(module):
    x = torch.randn(3, 5, 4, 4) * 5
    clamp = ChannelClamp.like(module, [5])
    assert torch.equal(clamp(x), module(x.clone()))
    y = torch.randn(7, 5) * 5                            # a linear activation: channels on axis 1 too
    assert torch.equal(ChannelClamp.like(module, [5])(y), module(y.clone()))


def test_bounds_are_per_channel_and_per_site():
    c = ChannelClamp([(torch.zeros(2), torch.tensor([1.0, 2.0])),
                      (torch.tensor([-1.0, -2.0]), torch.full((2,), math.inf))])
    x = torch.tensor([[5.0, 5.0], [-5.0, -5.0]])
    assert c(x).tolist() == [[1.0, 2.0], [0.0, 0.0]]      # site 0
    assert c(x).tolist() == [[5.0, 5.0], [-1.0, -2.0]]    # site 1
    assert c(x).tolist() == [[1.0, 2.0], [0.0, 0.0]]      # wraps around to site 0


def test_wrong_channel_count_raises_naming_the_site():
    c = ChannelClamp([(torch.zeros(3), torch.ones(3)), (torch.zeros(4), torch.ones(4))])
    c(torch.zeros(1, 3, 2, 2))
    with pytest.raises(RuntimeError, match="site 1 expects 4 channels"):
        c(torch.zeros(1, 3, 2, 2))


def test_root_hook_restarts_the_count_also_in_a_deep_copy():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = ChannelClamp([(torch.zeros(2), torch.ones(2)), (torch.zeros(2), torch.full((2,), 3.0))])

        def forward(self, x):
            return self.act(x) + 10 * self.act(x)

    net = Twice()
    reset_calls_before_forward(net, net.act)
    x = torch.full((1, 2), 2.0)
    expected = torch.full((1, 2), 1.0 + 10 * 2.0)
    net.act.calls = 1                                     # out of step, as after an interrupted forward
    assert torch.equal(net(x), expected)
    dup = copy.deepcopy(net)
    dup.act.calls, net.act.calls = 1, 0
    assert torch.equal(dup(x), expected) and net.act.calls == 0   # the copy's hook reset the copy only


@pytest.mark.parametrize("bounds, message", [
    ([], "at least one"),
    ([(torch.zeros(2), torch.ones(3))], "1-D of one length"),
    ([(torch.ones(2), torch.zeros(2))], "lo <= hi"),
    ([(torch.zeros(2), torch.tensor([1.0, float("nan")]))], "no NaN"),
])
def test_bad_bounds(bounds, message):
    with pytest.raises(ValueError, match=message):
        ChannelClamp(bounds)


def test_like_rejects_other_modules():
    with pytest.raises(ValueError, match="no clamp computes a Sigmoid"):
        ChannelClamp.like(nn.Sigmoid(), [3])
