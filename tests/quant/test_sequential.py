"""Sequential calibration, second-order rounding and the layer-input Hessians, equalization inside quantize()."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aciq.quant import PerChannel, QuantConfig, Statistics, collect_statistics, preset, quantize
from aciq.quant.api import prepare
from aciq.quant.clamp import ChannelClamp
from aciq.quant.fake import fake_quantize, grid_params, midtread_params
from aciq.quant.hessian import hessian
from aciq.quant.modules import QuantizedLayer
from aciq.quant.sequential import activation_shift


class StaticPad(nn.Conv2d):
    """A conv that pads in its own forward (EfficientNet's static "same" padding)."""

    def __init__(self, *args, pad=(0, 1, 0, 1), **kw):
        super().__init__(*args, **kw)
        self.pad = pad

    def forward(self, x):
        return F.conv2d(F.pad(x, self.pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBNet(nn.Module):
    """Stem, an inverted residual block (expand, depthwise, project, residual), head, pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = StaticPad(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)
        self.expand, self.bn1 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.project, self.bn3 = nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.act = nn.ReLU6()       # one module called three times, as EfficientNet-Lite's blocks do
        self.head = nn.Conv2d(8, 12, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.act(self.bn0(self.stem(x)))
        y = self.act(self.bn1(self.expand(x)))
        y = self.act(self.bn2(self.dw(y)))
        x = x + self.bn3(self.project(y))
        x = torch.relu(self.head(x))
        return self.fc(self.pool(x).flatten(1))


def randomize(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize(MBNet())


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(48, 3, 16, 16)


SEQ = QuantConfig(weight_bits=4, act_bits=4, act_clipping="laplace", calibration="sequential",
                  bias_correction="empirical")


def layer_outputs(model, names, x):
    out = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, y, n=n: out.__setitem__(n, y))
             for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def channel_means(y):
    return y.double().mean(dim=tuple(d for d in range(y.ndim) if d != 1)).numpy()


# --------------------------------------------------------------------------- sequential calibration
def test_empirical_correction_matches_the_float_means_on_the_calibration_data(net, images):
    """Each quantized layer's mean output per channel (its inputs from the quantized predecessors) equals the
    float layer's (float inputs) on the calibration images, after the ReLU6 it feeds where it feeds one (stem,
    expand, dw), before it elsewhere (project, head: a functional ReLU, fc); without the correction it does not."""
    calib = images[:32]
    layers = ["stem", "expand", "dw", "project", "head", "fc"]
    act = {"stem": 6.0, "expand": 6.0, "dw": 6.0}
    post = lambda n, y: y.clamp(0, act[n]) if n in act else y   # noqa: E731
    ref = layer_outputs(prepare(net, calib[:1], SEQ).model, layers, calib)     # BN folded, as in the quantized
    q = quantize(net, SEQ, calib)
    got = layer_outputs(q, layers, calib)
    plain = layer_outputs(quantize(net, SEQ.replace(bias_correction="off"), calib), layers, calib)
    for name in layers:
        want = channel_means(post(name, ref[name]))
        np.testing.assert_allclose(channel_means(post(name, got[name])), want,
                                   atol=1e-3 * np.abs(want).max() + 1e-6, err_msg=name)
        assert q.aciq_report[name]["bias_correction"]["after_activation"] == (name in act)
    assert any(np.abs(channel_means(post(n, plain[n])) - channel_means(post(n, ref[n]))).max() > 1e-2
               for n in layers)


def test_sequential_result_does_not_depend_on_the_calibration_batching(net, images):
    calib = images[:28]
    cfg = SEQ.replace(weight_rounding="gptq")
    outs = []
    for batches in ([calib], list(calib.split(1)), list(calib.split(5))):
        q = quantize(net, cfg, batches)
        with torch.no_grad():
            outs.append(q(images))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_sequential_input_grids_are_the_float_calibrations(net, images):
    """The input grids come from the float statistics (the quantized stream's would carry upstream noise);
    only the weights and the bias see the quantized predecessors."""
    calib = images[:16]
    cfg = SEQ.replace(act_clipping="mix", bias_correction="off")
    seq, flt = quantize(net, cfg, calib), quantize(net, cfg.replace(calibration="float"), calib)
    for name in ("stem", "expand", "dw", "project", "head", "fc"):
        a, b = seq.get_submodule(name).act_in.grid, flt.get_submodule(name).act_in.grid
        np.testing.assert_array_equal(a.zero_point, b.zero_point, err_msg=name)
        np.testing.assert_allclose(a.scale, b.scale, rtol=1e-12, err_msg=name)


def test_activation_shift_matches_the_mean_after_the_clamp():
    torch.manual_seed(3)
    y = torch.randn(500, 4, 3) * torch.tensor([1.0, 2.0, 0.1, 5.0])[None, :, None] + 1.0
    target = np.array([0.9, 3.0, 0.0, 6.5])          # the last is above the cap: moved to it
    d = activation_shift(y, (0.0, 6.0), target, axis=1)
    got = torch.clamp(y + torch.as_tensor(d)[None, :, None], 0, 6).double().mean(dim=(0, 2)).numpy()
    np.testing.assert_allclose(got[:3], target[:3], atol=1e-9)
    assert got[3] == pytest.approx(6.0) and got[2] == pytest.approx(0.0, abs=1e-12)
    lo, hi = np.array([-1.0, 0.0, 0.0, 0.0]), np.array([1.0, np.inf, 2.0, 3.0])    # per channel, a plain ReLU
    d = activation_shift(y, (lo, hi), np.array([0.2, 4.0, 1.0, 2.5]), axis=1)
    clamped = torch.maximum(torch.minimum(y + torch.as_tensor(d)[None, :, None], torch.as_tensor(hi)[None, :, None]),
                            torch.as_tensor(lo)[None, :, None])
    np.testing.assert_allclose(clamped.double().mean(dim=(0, 2)).numpy(), [0.2, 4.0, 1.0, 2.5], atol=1e-9)


def test_layer_never_called_is_named(images):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            if x.shape[0] > 1:      # the traced single image reaches b; the calibration batch does not
                return self.fc(self.a(x).mean((2, 3)))
            return self.fc(self.b(self.a(x)).mean((2, 3)))

    with pytest.raises(ValueError, match="layer b received no calibration input"):
        quantize(Unused().eval(), SEQ, images[:4])


def test_sequential_config_errors(net, images):
    with pytest.raises(ValueError, match="empirical.*needs calibration='sequential'"):
        QuantConfig(bias_correction="empirical")
    with pytest.raises(ValueError, match="sequential.*needs act_site='input'"):
        QuantConfig(calibration="sequential", act_site="output")
    stats = collect_statistics(net, SEQ.replace(calibration="float", bias_correction="off"), images[:4])
    with pytest.raises(ValueError, match="statistics= applies to calibration='float'"):
        quantize(net, SEQ, images[:4], statistics=stats)


# --------------------------------------------------------------------------- Hessians
def unfolded_hessian(layer, x, pad):
    """X^T X per group by an independent route: pad by hand, unfold, one matrix product per group."""
    xp = F.pad(x.double(), pad)
    cols = F.unfold(xp, layer.kernel_size, dilation=layer.dilation, stride=layer.stride)     # (N, C*kk, L)
    g = layer.groups
    n, ck, length = cols.shape
    cols = cols.reshape(n, g, ck // g, length)
    return np.stack([np.einsum("nil,njl->ij", cols[:, i].numpy(), cols[:, i].numpy()) for i in range(g)])


@pytest.mark.parametrize("layer, pad", [
    (nn.Conv2d(4, 6, 3, padding=1), (1, 1, 1, 1)),
    (nn.Conv2d(6, 6, 3, padding=1, groups=6), (1, 1, 1, 1)),
    (nn.Conv2d(4, 6, 3, groups=2, stride=2, dilation=2), (0, 0, 0, 0)),
    (StaticPad(4, 6, 3, stride=2), (0, 1, 0, 1)),
])
def test_hessian_matches_unfolded_patches(layer, pad):
    torch.manual_seed(2)
    x = torch.randn(5, layer.in_channels, 9, 9)
    np.testing.assert_allclose(hessian(layer, x), unfolded_hessian(layer, x, pad), rtol=1e-12, atol=1e-10)


def test_linear_hessian():
    x = torch.randn(7, 5).double()
    np.testing.assert_allclose(hessian(nn.Linear(5, 3), x)[0], (x.T @ x).numpy(), rtol=1e-12)


GPTQ = QuantConfig(weight_bits=3, act_bits=None, first_layer_bits=None, last_layer_bits=None,
                   weight_rounding="gptq")


def test_hessians_are_statistics_batch_independent_and_saved(net, images, tmp_path):
    """In float64 (in float32 the float model's own convs round differently per batch size, 4e-8 here)."""
    net, calib = copy.deepcopy(net).double(), images[:64].double()
    runs = [collect_statistics(net, GPTQ, list(calib.split(size))) for size in (1, 7, 64)]
    ref = runs[-1]
    assert set(ref.hessians) == {"stem", "expand", "dw", "project", "head", "fc"}
    assert ref.hessians["dw"].shape == (16, 9, 9) and ref.hessians["project"].shape == (1, 16, 16)
    for stats in runs[:-1]:
        for name, h in ref.hessians.items():
            np.testing.assert_allclose(stats.hessians[name], h, rtol=1e-12, err_msg=name)
    ref.save(tmp_path / "s")
    back = Statistics.load(tmp_path / "s")
    for name, h in ref.hessians.items():
        np.testing.assert_array_equal(back.hessians[name], h)
    q1 = quantize(net, GPTQ, calib, statistics=back)
    q2 = quantize(net, GPTQ, calib)
    for name in ref.hessians:
        np.testing.assert_array_equal(q1.get_submodule(name).quant.codes, q2.get_submodule(name).quant.codes)


def test_gptq_lowers_the_layer_output_error_on_held_out_inputs(net, images):
    """Each layer with its float input: the second-order weights give a lower output error than nearest
    rounding on images that were not calibrated on."""
    calib, held = images[:32], images[32:]
    near = quantize(net, GPTQ.replace(weight_rounding="nearest"), calib)
    sec = quantize(net, GPTQ, calib)
    p = prepare(net, calib[:1], GPTQ)
    names = ["stem", "expand", "dw", "project", "head", "fc"]
    inputs = {}
    hooks = [p.model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0]))
             for n in names]
    with torch.no_grad():
        p.model(held)
    for h in hooks:
        h.remove()
    better = 0
    for n in names:
        ref = p.model.get_submodule(n)(inputs[n])
        e_near = (near.get_submodule(n)(inputs[n]) - ref).pow(2).sum().item()
        e_sec = (sec.get_submodule(n)(inputs[n]) - ref).pow(2).sum().item()
        better += e_sec < e_near
    assert better >= 5, better


def test_gptq_without_hessian_and_with_dead_inputs(net, images):
    stats = collect_statistics(net, GPTQ.replace(weight_rounding="nearest"), images[:4])
    with pytest.raises(ValueError, match="layer stem: weight_rounding='gptq' needs the layer's input Hessian"):
        quantize(net, GPTQ, images[:4], statistics=stats)
    # an input channel that is always zero gives a zero row/column of H: a defined (finite) result
    x = images[:8].clone()
    x[:, 1] = 0.0
    q = quantize(net, GPTQ, x)
    assert torch.isfinite(q(images)).all()
    zero = torch.zeros(4, 3, 16, 16)
    q = quantize(net, GPTQ, zero)                     # every Hessian is zero: nearest rounding
    near = quantize(net, GPTQ.replace(weight_rounding="nearest"), zero)
    np.testing.assert_array_equal(q.stem.quant.codes, near.stem.quant.codes)


# --------------------------------------------------------------------------- equalization in quantize()
@pytest.mark.parametrize("rule", ["weights", "activations"])
def test_quantize_equalizes_an_equivalent_float_model(net, images, rule):
    cfg = QuantConfig(weight_bits=None, act_bits=None, equalize=rule)
    p = prepare(net, images[:1], cfg, calibration_data=images[:16])
    assert p.equalization is not None and len(p.equalization.pairs) >= 2
    assert any(isinstance(m, ChannelClamp) for m in p.model.modules())
    with torch.no_grad():
        ref, got = net(images), p.model(images)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    # the inputs after an equalized ReLU6 are capped per channel
    assert isinstance(p.caps.get("dw"), np.ndarray) or isinstance(p.caps.get("project"), np.ndarray)


def test_equalized_presets_run_and_report(net, images):
    cfg = preset("w4a4-all").replace(act_granularity=QuantConfig().act_granularity, act_bit_alloc=None,
                                     equalize="weights", act_cap="auto")
    q = quantize(net, cfg, images[:16])
    assert torch.isfinite(q(images)).all()
    with pytest.raises(ValueError, match="give calibration_data"):
        prepare(net, images[:1], cfg.replace(equalize="activations"))


def test_model_without_pairs_is_left_alone(images):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)).eval()
    p = prepare(model, images[:1], QuantConfig(equalize="weights"))
    assert p.equalization.pairs == () and p.equalization.rejected
    q = quantize(model, QuantConfig(equalize="weights"), images[:4])
    assert sum(isinstance(m, QuantizedLayer) for m in q.modules()) == 2


def test_capped_inputs_never_clip_above_the_cap(net, images):
    cfg = SEQ.replace(act_cap="auto")
    q = quantize(net, cfg, images[:32])
    for name in ("expand", "dw", "project"):
        g = q.get_submodule(name).act_in.grid
        assert float(np.max(g.hi)) <= 6.0 + 1e-9, name


def test_float_model_is_untouched(net, images):
    before = copy.deepcopy(net.state_dict())
    quantize(net, SEQ.replace(weight_rounding="gptq", equalize="activations"), images[:8])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("calibration", ["float", "sequential"])
def test_gptq_keeps_nearest_rounding_where_the_hessian_is_underdetermined(net, images, calibration):
    """The classifier sees one row per image: 4 images for 12 inputs cannot determine the compensation."""
    cfg = GPTQ.replace(calibration=calibration)
    q = quantize(net, cfg, images[:4])
    near = quantize(net, cfg.replace(weight_rounding="nearest"), images[:4])
    assert q.aciq_report["fc"]["rounding"].startswith("nearest (the Hessian has 4 samples for 12 inputs")
    np.testing.assert_array_equal(q.fc.quant.codes, near.fc.quant.codes)
    assert q.aciq_report["dw"]["rounding"] == "gptq"


def test_float_calibration_names_a_layer_without_input(images):
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            y = self.a(x)
            return self.fc((self.b(y) if x.shape[0] == 1 else y).mean((2, 3)))

    with pytest.raises(ValueError, match="layer b received no calibration input"):
        quantize(Branch().eval(), preset("w4a4-naive"), images[:4])
def test_quantized_hessian_of_midtread_codes():
    """Mid-tread input grids (half-integer zero points: doubled codes, half steps; a 0-bin channel): the Hessian
    from the integer codes is X^T X of the fake-quantized input."""
    from aciq.quant.sequential import _quantized_hessian  # the private helper under test

    torch.manual_seed(3)
    layer = nn.Conv2d(4, 3, 3, padding=1).double()
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    grid = midtread_params(-np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.0, 1.5, 0.5, 1.0]), [5, 6, 3, 0],
                           fill=np.array([0.0, 0.0, 0.0, 0.25]), axis=1)
    assert grid.has_half and not grid.half.all()
    want = hessian(layer, fake_quantize(x, grid))
    np.testing.assert_allclose(_quantized_hessian(layer, grid, x), want, rtol=1e-12, atol=1e-12)


def test_sequential_midtread_with_gptq(net, images):
    cfg = SEQ.replace(act_granularity=PerChannel(axis=1), act_quantizer="midtread", act_bit_alloc="optimal",
                      weight_rounding="gptq")
    q = quantize(net, cfg, images[:32])
    layers = [m for m in q.modules() if isinstance(m, QuantizedLayer)]
    assert all(m.exact for m in layers)
    assert any(m.quant.info["act_in"].get("quantizer") == "midtread" for m in layers)
    with torch.no_grad():
        out = q(images[32:])
    assert torch.isfinite(out).all()
