"""aciq.quant.api: batch-size independence, bias correction, layer policies, bad input, the kernels backend."""
import copy
import doctest

import numpy as np
import pytest
import torch
from torch import nn

import aciq.quant.api as api
from aciq.quant import PerChannel, PerTensor, QuantConfig, collect_statistics, preset, quantize
from aciq.quant.api import prepare
from aciq.quant.modules import KernelLayer, QuantizedLayer


def test_docstring_examples():
    assert doctest.testmod(api).failed == 0


def randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


class SmallCNN(nn.Module):
    """conv/bn/relu, a residual add modified in place (torchvision style), max pool, avg pool, linear."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.pool1(self.relu(self.bn1(self.conv1(x))))
        out = self.relu(self.bn2(self.conv2(x)))
        out = self.bn3(self.conv3(out))
        out += x
        out = self.relu(out)
        return self.fc(self.pool(out).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return randomize_bn(SmallCNN())


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(64, 3, 12, 12)


# --------------------------------------------------------------------------- batch-size independence
@pytest.mark.parametrize("name", ["w4a4-all", "seed-w4a4-all", "w4a4-pt-mix", "w4a8-bias", "w4a4-all-ongrid",
                                  "w4a4-mtq", "seed-vlc-mtq", "seed-w4a4-bca"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_outputs_do_not_depend_on_the_batch_size(net, images, name, dtype, threads):
    """Batches of 1, 7, 64 of the same 64 images give the same outputs, bit for bit, with 1 or 2 threads.

    The input-site layers run on integer codes (exact sums); the seed's output-site layers accumulate in
    float64 before their output quantizer (equal except with a probability of about 1e-12 per value).
    """
    model, x = copy.deepcopy(net).to(dtype), images.to(dtype)
    q = quantize(model, preset(name), x[:32])
    with torch.no_grad():
        full = q(x)
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ones = torch.cat([q(b) for b in x.split(1)])
            sevens = torch.cat([q(b) for b in x.split(7)])
        finally:
            torch.set_num_threads(prev)
    assert torch.equal(ones, full) and torch.equal(sevens, full)


@pytest.mark.parametrize("name", ["w4a4-all", "seed-w4a4-all", "w4a4-pt-mse", "w4a4-pt-kl"])
def test_calibration_does_not_depend_on_the_batch_size(net, images, name):
    """Batches of 1, 8, 32 of the same 32 images: the same statistics and grids.

    The model runs in float64 here: in float32, conv kernels themselves round differently for different
    batch sizes (measured: 1 ulp, 3e-8, in a channel minimum), which is the model's arithmetic, not ours.
    """
    cfg = preset(name, mse_candidates=20)
    net = copy.deepcopy(net).double()
    calib = images[:32].double()
    runs = [collect_statistics(net, cfg, list(calib.split(size))) for size in (1, 8, 32)]
    ref = runs[-1]
    for stats in runs[:-1]:
        assert stats.sites.keys() == ref.sites.keys() and stats.images == 32
        for site, s in stats.sites.items():
            r = ref.sites[site]
            for k in ("n", "n_pos", "hist_abs", "hist_pos"):
                np.testing.assert_array_equal(getattr(s, k), getattr(r, k), err_msg=f"{site} {k}")
            for k in ("min", "max", "sum", "sumsq", "sum_pos", "sumsq_pos", "absdev"):
                a, b = getattr(s, k), getattr(r, k)
                assert (a is None) == (b is None), (site, k)      # pass 2 runs only where a calibrator needs it
                if a is not None:
                    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{site} {k}")
            assert s.errors.keys() == r.errors.keys()
            for k in s.errors:
                np.testing.assert_allclose(s.errors[k], r.errors[k], rtol=1e-12, err_msg=f"{site} {k}")
    grids = []
    for stats in runs:
        q = quantize(net, cfg, calib, statistics=stats)
        grids.append({name: m.grid for name, m in q.named_modules() if hasattr(m, "grid")})
    for g in grids[:-1]:
        assert g.keys() == grids[-1].keys()
        for name in g:
            a, b = g[name], grids[-1][name]
            np.testing.assert_array_equal(a.bits, b.bits, err_msg=name)
            np.testing.assert_array_equal(a.zero_point, b.zero_point, err_msg=name)
            np.testing.assert_allclose(a.scale, b.scale, rtol=1e-12, err_msg=name)


# --------------------------------------------------------------------------- bias correction
def float_and_quantized_weights(model, cfg, calib):
    q = quantize(model, cfg, calib)
    pairs = []
    for name, m in q.named_modules():
        if isinstance(m, QuantizedLayer):
            w = model.get_submodule(name).weight.detach().double()
            pairs.append((name, w.reshape(w.shape[0], -1), m.layer.weight.detach().double().reshape(w.shape[0], -1),
                          m))
    return q, pairs


def plain_net():
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3, bias=False), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 12)).eval()


W3 = dict(weight_bits=3, act_bits=None, first_layer_bits=None, last_layer_bits=None)


def test_mean_correction_restores_channel_means():
    model, calib = plain_net(), torch.randn(8, 3, 8, 8)
    _, pairs = float_and_quantized_weights(model, QuantConfig(**W3, bias_correction="mean"), calib)
    _, plain = float_and_quantized_weights(model, QuantConfig(**W3), calib)
    for (name, w, wq, _), (_, _, wq0, _) in zip(pairs, plain):
        np.testing.assert_allclose(wq.mean(1), w.mean(1), atol=1e-6, err_msg=name)
        assert (wq0.mean(1) - w.mean(1)).abs().max() > 1e-4      # without correction they differ


def test_mean_variance_correction_restores_the_centred_norm():
    model, calib = plain_net(), torch.randn(8, 3, 8, 8)
    _, pairs = float_and_quantized_weights(model, QuantConfig(**W3, bias_correction="mean+variance"), calib)
    for name, w, wq, _ in pairs:
        np.testing.assert_allclose(wq.mean(1), w.mean(1), atol=1e-6, err_msg=name)
        norm = lambda a: (a - a.mean(1, keepdim=True)).norm(dim=1)  # noqa: E731
        np.testing.assert_allclose(norm(wq), norm(w), rtol=1e-5, err_msg=name)


def layer_inputs(model, x):
    """The input of every conv/linear child of the float ``model`` on ``x``."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.__setitem__(n, args[0]))
             for n, m in model.named_children() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs


def channel_means(y):
    return y.double().mean(dim=tuple(d for d in range(y.ndim) if d != 1))


@pytest.mark.parametrize("mode", ["mean", "mean+variance"])
def test_on_grid_correction_stays_on_the_grid_and_moves_output_means(mode):
    model = plain_net()
    torch.manual_seed(5)
    calib = torch.randn(32, 3, 8, 8) * 0.5 + 0.8        # inputs with a clear mean: the offset matters
    cfg = QuantConfig(**W3, bias_correction=mode, bias_form="on-grid")
    q, pairs = float_and_quantized_weights(model, cfg, calib)
    for name, _, wq, m in pairs:
        g, xi = m.quant.weight_grid, m.quant.scale_factor
        units = wq.numpy() / (g.scale[:, None] * xi[:, None])     # w = xi s (q - z): integers
        np.testing.assert_allclose(units, np.rint(units), atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(np.rint(units) + g.zero_point[:, None], m.quant.codes)
        if mode == "mean":
            np.testing.assert_array_equal(xi, 1.0)
    # each layer fed the float model's input to it: the output channel means move toward the float ones
    # (measured mean |error|, on-grid / none: 0.0013/0.067, 0.016/0.022, 0.008/0.012 for the 3 layers), as
    # much as the seed form's off-grid weights move them
    plain = quantize(model, QuantConfig(**W3), calib)
    seed_form = quantize(model, cfg.replace(bias_form="seed"), calib)
    with torch.no_grad():
        for name, x in layer_inputs(model, calib).items():
            ref = channel_means(model.get_submodule(name)(x))
            err = {k: float((channel_means(m.get_submodule(name)(x)) - ref).abs().mean())
                   for k, m in (("on", q), ("off", plain), ("seed", seed_form))}
            assert err["on"] < 0.8 * err["off"], (name, err)
            assert abs(err["on"] - err["seed"]) < 0.1 * err["off"], (name, err)


# --------------------------------------------------------------------------- layer policies
def bits_of(q, name):
    m = q.get_submodule(name)
    wb = np.unique(m.quant.weight_grid.bits).tolist() if m.quant.weight_grid is not None else None
    ab = np.unique(m.act_in.grid.bits).tolist() if m.act_in is not None else None
    return wb, ab


def test_first_and_last_layer_bits(net, images):
    q = quantize(net, preset("w4a4-naive"), images[:4])
    assert bits_of(q, "conv1") == ([8], [8]) and bits_of(q, "fc") == ([8], [8])
    assert bits_of(q, "conv2") == ([4], [4]) and bits_of(q, "conv3") == ([4], [4])
    q = quantize(net, preset("w4a4-naive", first_layer_bits=6, last_layer_bits=None), images[:4])
    assert bits_of(q, "conv1") == ([6], [6]) and bits_of(q, "fc") == ([4], [4])
    q = quantize(net, preset("w4a4-all", first_layer_bits=None, last_layer_bits=None), images[:4])
    assert bits_of(q, "conv1")[0] != [8]                     # allocation applies to them again
    q = quantize(net, preset("w4a4-all"), images[:4])
    assert bits_of(q, "conv1") == ([8], [8]) and bits_of(q, "fc") == ([8], [8])   # no allocation there


def test_skip_leaves_layers_in_float(net, images):
    q = quantize(net, preset("w4a4-naive", skip=("conv1", "fc")), images[:4])
    assert type(q.conv1) is nn.Conv2d and type(q.fc) is nn.Linear
    assert bits_of(q, "conv2") == ([4], [4])                 # the skipped first layer passes on no 8 bits
    with pytest.raises(ValueError, match="skip: the model has no module named 'conv9'"):
        quantize(net, preset("w4a4-naive", skip=("conv9",)), images[:4])


# --------------------------------------------------------------------------- half range
def test_input_after_relu_is_half_range(net, images):
    q = quantize(net, preset("w4a4-pt-aciq"), images[:8])
    assert q.aciq_report["conv1"]["act_in"]["half_range"] is False      # the images are signed
    for name in ("conv2", "conv3", "fc"):
        assert q.aciq_report[name]["act_in"]["half_range"] is True, name
        g = q.get_submodule(name).act_in.grid
        assert float(g.lo) == 0.0 and int(g.zero_point) == 0
    q = quantize(net, preset("w4a4-pt-aciq", half_range=False), images[:8])
    assert q.aciq_report["conv2"]["act_in"]["half_range"] is False


def test_output_site_fuses_a_relu_module_only(net, images):
    q = quantize(net, preset("seed-w4a4-naive"), images[:8])
    rep = q.aciq_report
    assert rep["conv1"]["act_out"]["fused_relu"] and rep["conv2"]["act_out"]["fused_relu"]
    # conv3's output is modified by `out += x` before the ReLU: signed, not fused (as the seed's mark_relu)
    assert not rep["conv3"]["act_out"]["fused_relu"] and not rep["conv3"]["act_out"]["half_range"]
    assert not rep["fc"]["act_out"]["fused_relu"]
    assert (q.conv2.act_out.grid.zero_point == 0).all() and (q.conv3.act_out.grid.zero_point > 0).any()


def test_torchvision_resnet_fusion_matches_the_seed():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None).eval()
    p = prepare(model, torch.randn(1, 3, 32, 32), preset("seed-w4a4-all"))
    fused = {n for n, f in p.fused.items() if f}
    # the seed's mark_relu: the stem conv and conv1 of every BasicBlock; not conv2, downsample or fc
    assert fused == {"conv1"} | {f"layer{i}.{j}.conv1" for i in range(1, 5) for j in range(2)}
    assert len(p.folded) == 20 and p.first == "conv1" and p.last == "fc"


# --------------------------------------------------------------------------- bad input
class NaNInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(torch.where(y > 0.5, torch.log(-y.abs() - 1), y))


@pytest.mark.parametrize("data, match", [
    (None, "calibration_data is required"),
    ([], "calibration_data is empty"),
    (torch.empty(0, 3, 12, 12), r"calibration_data batch 0 has shape \(0, 3, 12, 12\)"),
    ([torch.randn(2, 3, 12, 12), torch.full((2, 3, 12, 12), float("nan"))], "calibration_data batch 1 contains NaN"),
    ([torch.randn(2, 3, 12, 12).index_fill(0, torch.tensor([1]), float("inf"))], "batch 0 contains NaN or Inf"),
    (torch.zeros(2, 3, 12, 12, dtype=torch.uint8), "batch 0 has dtype torch.uint8"),
    ([[1, 2]], "batch 0 is a int"),
])
def test_bad_calibration_data(net, data, match):
    with pytest.raises(ValueError, match=match):
        quantize(net, preset("w4a4-naive"), data)


def test_nan_inside_the_model_names_the_site():
    with pytest.raises(ValueError, match=r"conv2:input: the calibration activations contain NaN"):
        quantize(NaNInside().eval(), preset("w4a4-naive"), torch.randn(2, 3, 8, 8) * 3)


@pytest.mark.parametrize("name", ["w4a4-all", "seed-w4a4-all", "w4a4-all-ongrid", "w4a4-pt-mse", "w4a4-pt-kl",
                                  "w4a4-pt-mix", "w4a4-all-exact", "seed-w8a4-2std"])
def test_constant_channels(name):
    """A channel that is constant over the calibration data (zero variance) and one that is all zero."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 36, 5)).eval()
    with torch.no_grad():
        model[0].weight[1:3] = 0.0
        model[0].bias[1], model[0].bias[2] = 0.8, 0.0        # channel 1 constant 0.8, channel 2 all zero
        model[2].weight[4] = 0.0                             # an all-zero weight channel
    q = quantize(model, preset(name, mse_candidates=16), torch.randn(8, 3, 6, 6))
    for m in q.modules():
        if isinstance(m, QuantizedLayer):
            for grid in (m.quant.weight_grid, m.act_in and m.act_in.grid, m.act_out and m.act_out.grid):
                if grid is not None:
                    assert np.isfinite(grid.scale).all() and (grid.scale > 0).all()
            assert torch.isfinite(m.layer.weight).all() and torch.isfinite(m.layer.bias).all()
    assert torch.isfinite(q(torch.randn(4, 3, 6, 6))).all()


def test_bad_config_model_and_backend(net, images):
    with pytest.raises(ValueError, match="config must be a QuantConfig.*got str"):
        quantize(net, "w4a4-all", images[:2])
    with pytest.raises(ValueError, match="config must be a QuantConfig.*got dict"):
        collect_statistics(net, {"weight_bits": 4}, images[:2])
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        quantize(lambda x: x, preset("w4a4-all"), images[:2])
    with pytest.raises(ValueError, match="backend must be 'fake' or 'kernels'"):
        quantize(net, preset("w4a4-all"), images[:2], backend="cuda")


def test_unsupported_models():
    conv1d = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6, 2)).eval()
    with pytest.raises(ValueError, match="module 0: Conv1d is not supported"):
        quantize(conv1d, preset("w4a4-naive"), torch.randn(2, 3, 8))
    only1d = nn.Sequential(nn.Conv1d(3, 4, 3)).eval()
    with pytest.raises(ValueError, match="module 0: Conv1d is not supported"):
        quantize(only1d, preset("w4a4-naive"), torch.randn(2, 3, 8))
    q = quantize(conv1d, preset("w4a4-naive", skip=("0",)), torch.randn(2, 3, 8))     # skipped: fine
    assert isinstance(q[2], QuantizedLayer)
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        quantize(nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)).eval(), preset("w4a4-naive"), torch.randn(2, 3, 8, 8))


# --------------------------------------------------------------------------- kernels backend
class PlainCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 5 * 5, 6)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.dw(x))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("cfg", [
    preset("w4a4-pt-aciq", bias_correction="mean+variance", bias_form="on-grid"),
    preset("w4a4-all-ongrid", act_bit_alloc=None, weight_bit_alloc=None),
    preset("w4a8-naive", weight_granularity=PerTensor(), act_granularity=PerChannel(axis=1)),
], ids=["per-tensor-act", "per-channel-act", "per-tensor-weight"])
def test_kernels_backend_matches_fake_quant(cfg):
    torch.manual_seed(7)
    model, calib, x = PlainCNN().eval(), torch.randn(16, 3, 10, 10), torch.randn(9, 3, 10, 10)
    fq = quantize(model, cfg, calib)
    kq = quantize(model, cfg, calib, backend="kernels")
    assert sum(isinstance(m, KernelLayer) for m in kq.modules()) == 4
    with torch.no_grad():
        a, b = fq(x), kq(x)
    assert torch.allclose(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_kernels_backend_errors():
    model, calib = PlainCNN().eval(), torch.randn(4, 3, 10, 10)
    with pytest.raises(ValueError, match="act_site='input'"):
        quantize(model, preset("seed-w4a4-naive"), calib, backend="kernels")
    with pytest.raises(ValueError, match="bias_form='on-grid'"):
        quantize(model, preset("w4a8-bias"), calib, backend="kernels")
    with pytest.raises(ValueError, match="layer conv1: the kernels backend needs quantized weights and inputs"):
        quantize(model, preset("w4a4-naive", act_bits=None, first_layer_bits=None, last_layer_bits=None),
                 calib, backend="kernels")
    reflect = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                            nn.Linear(4 * 100, 2)).eval()
    with pytest.raises(ValueError, match="layer 0: the kernels backend runs plain nn.Conv2d"):
        quantize(reflect, preset("w4a4-naive"), calib, backend="kernels")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["w4a4-all", "seed-w4a4-all", "w4a4-all-ongrid", "w4a4-mtq", "seed-w4a4-bca"])
def test_cuda_model_runs_on_cuda(net, images, name):
    """Every buffer follows the model to the GPU; the result is close to the CPU one (TF32 convs and
    different kernels may flip a few 4-bit codes, hence the loose bound)."""
    cpu = quantize(net, preset(name), images[:16])
    gpu = quantize(copy.deepcopy(net).cuda(), preset(name), images[:16])   # calibration images on the CPU
    assert all(t.is_cuda for t in list(gpu.parameters()) + list(gpu.buffers()))
    with torch.no_grad():
        a, b = cpu(images), gpu(images.cuda()).cpu()
    assert torch.isfinite(b).all()
    assert (b - a).norm() <= 0.1 * a.norm()


def test_one_statistics_collection_serves_several_configs(net, images):
    """Statistics collected once for a list of configs quantize each of them exactly as its own would."""
    names = ["w4a4-naive", "w4a4-all", "w4a4-pt-mse", "w4a4-pt-kl", "w4a4-pt-mix", "seed-w4a4-all", "w8a4-aciq"]
    configs = [preset(n, mse_candidates=12) for n in names] + [preset("w4a8-naive", weight_rounding="gptq")]
    calib = list(images[:16].split(8))
    shared = collect_statistics(net, configs, calib)
    p = prepare(net, calib[0], configs[0])
    for cfg in configs:
        own = quantize(net, cfg, calib)
        from_shared = api.convert(p.copy(), cfg, shared)
        with torch.no_grad():
            assert torch.equal(own(images), from_shared(images)), cfg.describe()
    with pytest.raises(ValueError, match="must share skip, equalize and absorb_bias"):
        collect_statistics(net, [configs[0], configs[0].replace(equalize="weights")], calib)
    with pytest.raises(ValueError, match="calibration='sequential' configs"):
        collect_statistics(net, [configs[0].replace(calibration="sequential")], calib)
