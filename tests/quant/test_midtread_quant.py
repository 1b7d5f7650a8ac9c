"""Mid-tread grids with eq. 10 bins (the seed's -mtq): grid, allocation, theory's exact error, integer path."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

from aciq.quant import PerChannel, QuantConfig, code_lengths, preset, quantize
from aciq.quant.fake import FakeQuant, codes, dequantize, fake_quantize, midtread_params
from aciq.quant.modules import QuantizedLayer
from aciq.theory import allocate_bins, midtread_mse, optimal_alpha_bins

SETTINGS = settings(max_examples=40, deadline=None)
PC_A = PerChannel(axis=1)
SOLO = dict(first_layer_bits=None, last_layer_bits=None)      # a one-layer model is its own first and last layer


# --------------------------------------------------------------------------- the grid
def test_symmetric_window_is_theory_grid():
    """Window [-a, a] with w bins: levels -a + k 2a/w, k = 0..w (theory.midtread), odd and even w."""
    for w in (1, 2, 3, 6, 7, 16, 255):
        g = midtread_params(-1.5, 1.5, w)
        assert int(g.qmax) == w and float(g.zero_point) == w / 2
        levels = -1.5 + 3.0 * np.arange(w + 1) / w
        np.testing.assert_allclose(dequantize(torch.arange(w + 1), g, dtype=torch.float64).numpy(), levels,
                                   rtol=0, atol=1e-12)
        assert int(g.bits) == int(w).bit_length() and g.has_half == (w % 2 == 1)
    g = midtread_params(0.0, 2.0, 5)            # half range: levels k 2/5, zero point 0
    assert float(g.zero_point) == 0 and not g.has_half and float(g.hi) == pytest.approx(2.0)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), channels=st.integers(1, 5), axis=st.sampled_from([0, 1]))
def test_quantizes_to_the_nearest_level(seed, channels, axis):
    """Any window and number of bins: the value is the nearest of the w + 1 levels (k - z) s (brute force),
    codes lie in 0..w, dequantize(codes) == fake_quantize, the module equals the function."""
    rng = np.random.default_rng(seed)
    lo, hi = -rng.uniform(0, 3, channels), rng.uniform(0, 3, channels)
    bins = rng.integers(0, 40, channels)
    g = midtread_params(lo, hi, bins, fill=rng.normal(size=channels), axis=axis)
    zp2 = 2 * g.zero_point
    assert np.all(zp2 == np.round(zp2)) and np.all((g.zero_point >= 0) & (g.zero_point <= g.qmax))
    live = (bins > 0) & (hi - lo > 0)
    np.testing.assert_allclose(g.scale[live], ((hi - lo) / np.maximum(bins, 1))[live], rtol=1e-12)
    # the window's own grid lo + k s moves by at most s/4
    assert np.all(np.abs(g.zero_point - (-lo / g.scale))[live] <= 0.25 + 1e-9)
    shape = (channels, 50) if axis == 0 else (50, channels)
    x = torch.from_numpy(rng.normal(size=shape) * 2.5)
    got = fake_quantize(x, g).numpy()
    q = codes(x, g).numpy()
    for c in range(channels):
        xc, gc, qc = np.take(x.numpy(), c, axis), np.take(got, c, axis), np.take(q, c, axis)
        assert qc.min() >= 0 and qc.max() <= bins[c]
        if bins[c] == 0:
            np.testing.assert_array_equal(gc, g.fill[c])
            continue
        levels = (np.arange(bins[c] + 1) - g.zero_point[c]) * g.scale[c]
        best = np.abs(xc[:, None] - levels[None, :]).min(axis=1)
        np.testing.assert_allclose(np.abs(xc - gc), best, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(dequantize(codes(x, g), g, dtype=torch.float64).numpy(), got)
    x32 = x.float()
    torch.testing.assert_close(FakeQuant(g)(x32), fake_quantize(x32, g), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lo=-1.0, hi=1.0, bins=256), "bins must lie in 0..255"),
    (dict(lo=-1.0, hi=1.0, bins=-1), "bins must lie in 0..255"),
    (dict(lo=-1.0, hi=1.0, bins=2.5), "bins must be integers"),
    (dict(lo=-np.inf, hi=1.0, bins=4), "finite"),
])
def test_midtread_params_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        midtread_params(**kwargs)


# --------------------------------------------------------------------------- the allocation in a layer
def channel_data(rng, prior, scales, n, *, relu=False):
    if prior == "laplace":
        x = rng.laplace(size=(n, len(scales))) * scales
    else:
        x = rng.normal(size=(n, len(scales))) * scales
    return np.maximum(x, 0.0) if relu else x


def input_grid(config, calib):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(calib.shape[1], 3)).eval().double()
    q = quantize(net, config, calib)
    assert isinstance(q[0], QuantizedLayer)
    return q[0].quant.act_in, q


SCALES = np.array([0.3, 0.7, 1.0, 1.6, 2.5, 4.0])


def test_paper_bins_are_eq10_rounded_on_std():
    """The seed's rule: w_i = round(C 2^M sigma_i^(2/3) / sum sigma^(2/3)), sigma the unbiased std per channel
    (computed here with numpy); the same for the weights' output channels."""
    rng = np.random.default_rng(3)
    x = channel_data(rng, "laplace", SCALES, 4000)
    cfg = QuantConfig(weight_bits=4, act_bits=3, act_granularity=PC_A, act_clipping="laplace",
                      act_quantizer="midtread", act_bit_alloc="paper", act_avg_bits=3.3,
                      weight_quantizer="midtread", weight_bit_alloc="paper", **SOLO)
    grid, q = input_grid(cfg, torch.from_numpy(x))
    p = x.std(axis=0, ddof=1) ** (2 / 3)
    want = np.clip(np.round(len(SCALES) * 2 ** 3.3 * p / p.sum()), 0, 255)
    np.testing.assert_array_equal(grid.qmax, want)
    wg = q[0].quant.weight_grid
    torch.manual_seed(0)                                   # the layer input_grid() made
    w_float = nn.Linear(len(SCALES), 3).weight.detach().double().numpy()
    p = w_float.std(axis=1, ddof=1) ** (2 / 3)
    np.testing.assert_array_equal(wg.qmax, np.clip(np.round(3 * 16 * p / p.sum()), 0, 255))
    # minmax weights: the window is the row's [min, max] extended to 0
    np.testing.assert_allclose(wg.hi - wg.lo, np.maximum(w_float.max(1), 0) - np.minimum(w_float.min(1), 0),
                               rtol=1e-12)


@pytest.mark.parametrize("prior, clipping, relu", [("laplace", "laplace", False), ("gauss", "gauss", False),
                                                    ("laplace", "laplace", True), ("laplace", "exact", False)])
def test_optimal_bins_within_budget_and_measured_error_is_theory(prior, clipping, relu):
    """The integer optimum within the bins budget, per channel clipping from theory; then, on fresh data of the
    prior, the measured error of each channel's grid equals theory's exact error (Monte Carlo, 4 standard
    errors), odd numbers of bins (no level at 0) included."""
    rng = np.random.default_rng(11)
    avg = 3.0
    calib = channel_data(rng, prior, SCALES, 40000, relu=relu)
    cfg = QuantConfig(weight_bits=None, act_bits=3, act_granularity=PC_A, act_clipping=clipping,
                      exact_prior=prior, act_quantizer="midtread", act_bit_alloc="optimal", **SOLO)
    grid, _ = input_grid(cfg, torch.from_numpy(calib))
    bins = grid.qmax
    # the allocation, from statistics computed here: b = mean |x - mean| (or E[x | x > 0]), sigma = std
    if relu:
        pos = np.where(calib > 0, calib, np.nan)
        est = np.nanmean(pos, axis=0) if prior == "laplace" else np.sqrt(np.nanmean(pos ** 2, axis=0))
    else:
        est = np.abs(calib - calib.mean(0)).mean(0) if prior == "laplace" else calib.std(0, ddof=1)
    want = allocate_bins(est, avg_bits=avg, prior=prior, half_range=relu,
                         objective="exact" if clipping == "exact" else "model").bins
    np.testing.assert_array_equal(bins, want)
    assert bins.sum() <= len(SCALES) * 2 ** avg and np.all(bins > 0)
    assert np.any(bins % 2 == 1) and np.any(bins % 2 == 0)
    # the clipping value of each channel
    if relu:
        assert np.all(grid.zero_point == 0)
        alpha = grid.qmax * grid.scale
    else:
        np.testing.assert_array_equal(grid.zero_point, bins / 2)     # symmetric about 0: theory's grid
        alpha = grid.qmax * grid.scale / 2
    ref = optimal_alpha_bins(prior=prior, bins=bins, scale=est, half_range=relu, exact=clipping == "exact")
    np.testing.assert_allclose(alpha, ref.alpha, rtol=1e-9)
    # Monte Carlo on fresh data against the exact error at the true scales
    n = 200_000
    x = channel_data(np.random.default_rng(12), prior, SCALES, n, relu=relu)
    err2 = (x - fake_quantize(torch.from_numpy(x), grid).numpy()) ** 2
    measured, se = err2.mean(0), err2.std(0) / np.sqrt(n)
    theory = midtread_mse(alpha, prior=prior, bins=bins, scale=SCALES, half_range=relu)
    assert np.all(np.abs(measured - theory) < 4 * se), (measured, theory, se)


# --------------------------------------------------------------------------- the integer path
class DWNet(nn.Module):
    """Dense conv (signed input), ReLU, depthwise conv, ReLU, pointwise conv, linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6 * 5 * 5, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.dw(x))
        return self.fc(self.pw(x).flatten(1))


MTQ = QuantConfig(weight_bits=4, act_bits=4, act_granularity=PC_A, act_clipping="laplace", act_quantizer="midtread",
                  act_bit_alloc="optimal", weight_quantizer="midtread", weight_bit_alloc="paper", **SOLO)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_integer_path_is_the_grid_and_batch_independent(dtype):
    """Every layer runs on integer codes (half-integer zero points included, weights and inputs), gives the
    float computation on the dequantized grid values, and the same bits for batches of 1, 7 and all."""
    torch.manual_seed(5)
    net = DWNet().eval().to(dtype)
    calib = torch.randn(24, 4, 5, 5, dtype=dtype)
    q = quantize(net, MTQ, calib)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantizedLayer)}
    assert len(layers) == 4 and all(m.exact for m in layers.values())
    assert any(m.quant.weight_grid.has_half for m in layers.values())
    assert any(m.quant.act_in.has_half for m in layers.values())
    assert all(not m.quant.weight_grid.is_gemmlowp for m in layers.values())
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, out, n=n: seen.__setitem__(n, (a[0], out)))
             for n, m in layers.items()]
    x = torch.randn(15, 4, 5, 5, dtype=dtype)
    with torch.no_grad():
        full = q(x)
        for h in hooks:
            h.remove()
        for name, m in layers.items():
            inp, out = seen[name]
            xq = fake_quantize(inp.double(), m.quant.act_in)
            w, b = m.quant.weight.double(), m.quant.bias.double()
            ref = F.linear(xq, w, b) if isinstance(m.layer, nn.Linear) else F.conv2d(
                xq, w, b, m.layer.stride, m.layer.padding, m.layer.dilation, m.layer.groups)
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        ones = torch.cat([q(b) for b in x.split(1)])
        sevens = torch.cat([q(b) for b in x.split(7)])
    assert torch.equal(ones, full) and torch.equal(sevens, full)


def test_first_and_last_layers_keep_8bit_gemmlowp():
    torch.manual_seed(5)
    q = quantize(DWNet().eval(), MTQ.replace(first_layer_bits=8, last_layer_bits=8), torch.randn(8, 4, 5, 5))
    for name in ("conv1", "fc"):
        m = q.get_submodule(name)
        assert m.quant.weight_grid.is_gemmlowp and m.quant.act_in.is_gemmlowp
        assert np.all(m.quant.weight_grid.bits == 8) and np.all(m.quant.act_in.bits == 8)
    assert not q.dw.quant.act_in.is_gemmlowp and q.dw.quant.info["act_in"]["quantizer"] == "midtread"


def test_kernels_backend_refuses_midtread():
    """The config says so first; a mid-tread layer handed to the kernels directly is refused too (their
    ActQuant/QuantWeights take 2^bits levels and integer zero points)."""
    from aciq.quant.modules import KernelLayer

    torch.manual_seed(5)
    with pytest.raises(ValueError, match="midtread"):
        quantize(DWNet().eval(), MTQ, torch.randn(4, 4, 5, 5), backend="kernels")
    q = quantize(DWNet().eval(), MTQ, torch.randn(8, 4, 5, 5))
    with pytest.raises(ValueError, match="layer pw: the kernels run grids of 2\\^bits levels"):
        KernelLayer(q.pw.layer, q.pw.quant)


def test_report_counts_the_codes_of_every_bin():
    """code_lengths: each row's codes lie in 0..w_i, and the nominal width is the mean of ceil(log2(w_i + 1))."""
    torch.manual_seed(5)
    net = DWNet().eval()
    q = quantize(net, MTQ, torch.randn(24, 4, 5, 5))
    rows = {(r["layer"], r["kind"]): r for r in code_lengths(q, torch.randn(6, 4, 5, 5))}
    for name, m in q.named_modules():
        if isinstance(m, QuantizedLayer):
            g = m.quant.weight_grid
            per_row = np.asarray(m.quant.codes).reshape(len(g.qmax), -1)
            assert np.all(per_row.max(1) <= g.qmax)
            assert rows[(name, "weight")]["bits"] == pytest.approx(np.mean([int(w).bit_length() for w in g.qmax]))
            a = m.quant.act_in
            assert rows[(name, "act_in")]["bits"] == pytest.approx(np.mean(a.bits))


def test_presets_run():
    torch.manual_seed(5)
    net = DWNet().eval()
    for name in ("w4a4-mtq", "seed-vlc-mtq"):
        cfg = preset(name)
        q = quantize(copy.deepcopy(net), cfg, torch.randn(12, 4, 5, 5))
        assert torch.isfinite(q(torch.randn(3, 4, 5, 5))).all()
        kinds = [v.get("act_in") or v.get("act_out") for v in q.aciq_report.values()]
        assert any(k is not None and k.get("quantizer") == "midtread" for k in kinds)


def test_high_precision_turns_midtread_into_8bit_gemmlowp():
    """aciq sensitivity / --keep-8bit: at 8 bits (more than 255 bins) the mid-tread grids become gemmlowp ones;
    below, the recipe stays."""
    from aciq.quant.sensitivity import high_precision

    eight = high_precision(preset("seed-vlc-mtq"))
    assert (eight.act_quantizer, eight.weight_quantizer, eight.act_bits, eight.act_avg_bits) == \
        ("uniform", "uniform", 8, None)
    six = high_precision(preset("w4a4-mtq"), 6)
    assert (six.act_quantizer, six.weight_quantizer, six.act_bits) == ("midtread", "midtread", 6)
    torch.manual_seed(5)
    q = quantize(DWNet().eval(), high_precision(MTQ), torch.randn(8, 4, 5, 5))
    assert all(m.quant.act_in.is_gemmlowp for m in q.modules() if isinstance(m, QuantizedLayer))
