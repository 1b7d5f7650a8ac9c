"""aciq.quant.pairs: the column of a grouped layer that reads each input channel, and the exact rewrites."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from aciq.quant.clamp import ChannelClamp
from aciq.quant.pairs import Pair, find_pairs, in_ranges, out_ranges, scale_pair, shift_pair


def reading_weights(layer: nn.Module, shape, channel: int) -> torch.Tensor:
    """Mask of the weights that read input ``channel``, by autograd: the input is zero elsewhere."""
    x = torch.zeros(shape)
    x[:, channel] = torch.rand(shape[0], *shape[2:]) + 0.5
    w = layer.weight.detach().clone().requires_grad_(True)
    if isinstance(layer, nn.Linear):
        out = nn.functional.linear(x, w)
    else:
        out = nn.functional.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    out.sum().backward()
    return w.grad != 0


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(8, 6, 3, groups=2), (1, 8, 5, 5)),
    (nn.Conv2d(6, 6, 3, groups=6), (1, 6, 5, 5)),         # depthwise
    (nn.Conv2d(4, 6, 1), (1, 4, 3, 3)),
    (nn.Linear(5, 3), (2, 5)),
], ids=["grouped", "depthwise", "dense", "linear"])
def test_input_columns_match_autograd(layer, shape):
    torch.manual_seed(0)
    n = shape[1]
    pair = Pair(first="a", second="b", act=None, act_call=0, act_channels=(), channels=n, absorb_exact=False)
    model = nn.ModuleDict({"a": nn.Conv2d(1, n, 1) if layer.__class__ is nn.Conv2d else nn.Linear(1, n), "b": layer})
    w = layer.weight.detach()
    expected = [float(w[reading_weights(layer, shape, i)].abs().max()) for i in range(n)]
    np.testing.assert_allclose(in_ranges(model, pair), expected, rtol=1e-6)
    s = np.linspace(0.5, 2.0, n)
    before = w.clone()
    scale_pair(model, pair, s)
    for i in range(n):                                   # column i, and only it, is multiplied by s_i
        mask = reading_weights(layer, shape, i)
        torch.testing.assert_close(layer.weight.detach()[mask], (before[mask].double() * s[i]).float())
    np.testing.assert_allclose(out_ranges(model, pair), model["a"].weight.detach().flatten(1).abs().amax(1).numpy())


def test_shift_is_exact_for_a_grouped_unpadded_conv():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Conv2d(8, 4, 3, groups=2)).eval()
    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    pair = find_pairs(model, x).pairs[0]
    assert pair.absorb_exact
    model[1] = ChannelClamp.like(model[1], pair.act_channels)
    shift_pair(model, pair, np.linspace(0.1, 1.5, 8))
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(model[1].bounds(0)[1], torch.tensor(6.0) - torch.linspace(0.1, 1.5, 8))


def test_padded_second_layer_is_not_absorbed():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    pair = find_pairs(model, torch.randn(1, 3, 5, 5)).pairs[0]
    assert not pair.absorb_exact
    with pytest.raises(ValueError, match="pads its input with zeros"):
        shift_pair(model, pair, np.ones(4))
    reflect = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"))
    assert find_pairs(reflect.eval(), torch.randn(1, 3, 5, 5)).pairs[0].absorb_exact   # pads with shifted values


def test_scale_pair_checks_its_scales_and_the_activation():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Conv2d(4, 2, 1)).eval()
    pair = find_pairs(model, torch.randn(1, 3, 5, 5)).pairs[0]
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="replace it with a ChannelClamp"):
        scale_pair(model, pair, np.ones(4) * 2)
    with pytest.raises(ValueError, match="must be > 0"):
        scale_pair(model, pair, -np.ones(4))
    with pytest.raises(ValueError, match="4 finite values"):
        scale_pair(model, pair, np.ones(3))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_pairs_of_a_shared_activation_know_every_call_site():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 5, 1), nn.Conv2d(5, 7, 1), nn.Conv2d(7, 2, 1)
            self.act = nn.ReLU6()

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    pairs = find_pairs(Shared().eval(), torch.randn(1, 3, 4, 4)).pairs
    assert [(p.first, p.act, p.act_call, p.act_channels) for p in pairs] == [("a", "act", 0, (5, 7)),
                                                                             ("b", "act", 1, (5, 7))]
    assert pairs[1].name == "b -> act[1] -> c"
