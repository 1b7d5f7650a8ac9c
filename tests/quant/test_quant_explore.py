"""aciq.quant.explore: the per-layer views reproduce quantize's windows, the sampled inputs are the layers' inputs."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from aciq.quant import PerTensor, QuantConfig, grid_params, quantize
from aciq.quant.explore import CALIBRATORS, layer_inputs, site_views


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.conv2(x)                        # signed input of fc after pooling: a symmetric site
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.3, 0.3)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def images():
    return torch.randn(24, 2, 10, 10, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def views(net, images):
    return site_views(net, [images[:12], images[12:]], bits=3, mse_candidates=40)


def test_views_cover_every_layer_input(views):
    assert list(views) == ["conv1:input", "conv2:input", "fc:input"]
    assert [v.half for v in views.values()] == [False, True, False]  # conv2 reads a ReLU output
    for v in views.values():
        assert set(v.windows) == set(CALIBRATORS) and v.bits == 3
        assert v.hist.size + 1 == v.edges.size and v.hist.sum() > 0
        assert isinstance(v.figure(), Figure)


@pytest.mark.parametrize("mode", CALIBRATORS)
def test_windows_are_the_windows_quantize_uses(net, images, views, mode):
    """An independent route: quantize with that calibrator per tensor, read each layer's input grid."""
    config = QuantConfig(weight_bits=None, act_bits=3, act_granularity=PerTensor(), act_clipping=mode,
                         first_layer_bits=None, last_layer_bits=None, mse_candidates=40)
    q = quantize(net, config, [images[:12], images[12:]])
    for site, view in views.items():
        lo, hi = view.windows[mode]
        want = grid_params(np.array([lo]), np.array([hi]), np.array([3]))
        got = q.get_submodule(site.split(":")[0]).quant.act_in
        assert float(got.scale) == pytest.approx(float(want.scale[0]), rel=1e-12), (site, mode)
        assert int(got.zero_point) == int(want.zero_point[0]), (site, mode)


def test_scales_are_the_aciq_scales(net, images, views):
    x = layer_inputs(net, images, max_values=10**9)
    signed, relu = x["conv1"], x["conv2"]
    assert views["conv1:input"].scales["laplace"] == pytest.approx(np.mean(np.abs(signed - signed.mean())), rel=1e-6)
    assert views["conv2:input"].scales["laplace"] == pytest.approx(relu[relu > 0].mean(), rel=1e-6)
    assert views["conv2:input"].scales["gauss"] == pytest.approx(np.sqrt(np.mean(relu[relu > 0] ** 2)), rel=1e-6)


def test_layer_inputs_are_what_the_layers_see(net, images):
    seen = {}
    hooks = [getattr(net, n).register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].reshape(-1)))
             for n in ("conv1", "conv2", "fc")]
    with torch.no_grad():
        net(images)
    for h in hooks:
        h.remove()
    full = layer_inputs(net, [images[:12], images[12:]], max_values=10**9)
    assert list(full) == ["conv1", "conv2", "fc"]
    for name, values in full.items():  # BatchNorm folded into conv1: the same inputs up to rounding
        np.testing.assert_allclose(values, seen[name].numpy(), rtol=1e-5, atol=1e-6)
    some = layer_inputs(net, images, layers=["conv2"], max_values=500, seed=3)
    assert list(some) == ["conv2"] and some["conv2"].size == 500
    assert np.isin(some["conv2"], full["conv2"].astype(np.float32)).all()
    again = layer_inputs(net, images, layers=["conv2"], max_values=500, seed=3)
    np.testing.assert_array_equal(some["conv2"], again["conv2"])


def test_bad_input(net, images):
    with pytest.raises(ValueError, match="calibrators"):
        site_views(net, images, calibrators=("laplace", "hunch"))
    with pytest.raises(ValueError, match="layers"):
        layer_inputs(net, images, layers=["conv9"])
    with pytest.raises(ValueError, match="max_values"):
        layer_inputs(net, images, max_values=0)
