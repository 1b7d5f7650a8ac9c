"""The seed's activation bias correction (-bca): the oracle form and the calibration-only form."""
import doctest

import numpy as np
import pytest
import torch
from torch import nn

import aciq.quant.actbias as actbias
from aciq.quant import PerChannel, QuantConfig, collect_statistics, preset, quantize
from aciq.quant.actbias import ActBiasCorrection, batch_shift
from aciq.quant.modules import QuantizedLayer


def test_docstring_examples():
    assert doctest.testmod(actbias).failed == 0


@pytest.mark.parametrize("relu", [True, False])
def test_batch_shift_is_the_seeds_formula(relu):
    """q_c = (sum y_c - sum y_hat_c) / (#{y_c > 0} + 1e-8), y through the ReLU when one follows (numpy)."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 4, 3, 3))
    y_hat = np.round(y * 2) / 2
    y_hat[:, 2] = 0.0                                      # a channel with no positive quantized value
    ref = np.maximum(y, 0) if relu else y
    want = (ref.sum((0, 2, 3)) - y_hat.sum((0, 2, 3))) / ((ref > 0).sum((0, 2, 3)) + 1e-8)
    got = batch_shift(torch.from_numpy(y), torch.from_numpy(y_hat), relu=relu)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13)
    out = ActBiasCorrection(4, mode="oracle", relu=relu)(torch.from_numpy(y), torch.from_numpy(y_hat)).numpy()
    np.testing.assert_allclose(out, y_hat + want[None, :, None, None] * (y_hat > 0), rtol=1e-13)


class Net(nn.Module):
    """conv/bn/relu, conv/relu, conv (no ReLU after it: a signed output), pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()     # modules: what the trace sees as a fused ReLU
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        return self.fc(self.pool(self.conv3(x)).flatten(1))


def make_net():
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 1.5)
    return net


BASE = QuantConfig(weight_bits=4, act_bits=3, act_granularity=PerChannel(axis=1), act_clipping="laplace",
                   act_site="output")
CAL = BASE.replace(act_bias_correction="calibration")
ORACLE = BASE.replace(act_bias_correction="oracle", allow_oracle=True)


def images(seed, n):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def corrections(q):
    return {n: m for n, m in q.named_modules() if isinstance(m, ActBiasCorrection)}


def capture(q):
    """Hooks that record (y, y_hat, corrected) of every correction, per call."""
    seen, hooks = {}, []
    for name, m in corrections(q).items():
        hooks.append(m.register_forward_hook(
            lambda mod, args, out, n=name: seen.setdefault(n, []).append((args[0], args[1], out))))
    return seen, hooks


def test_convs_only_and_relu_flags():
    q = quantize(make_net(), CAL, images(1, 16))
    mods = corrections(q)
    assert set(mods) == {"conv1.act_bias", "conv2.act_bias", "conv3.act_bias"}     # the seed: Conv2d only
    assert mods["conv1.act_bias"].relu and mods["conv2.act_bias"].relu and not mods["conv3.act_bias"].relu
    assert q.fc.act_bias is None
    assert all(m.calibrated for m in mods.values())
    rec = q.aciq_report["conv2"]["act_bias_correction"]
    assert rec["mode"] == "calibration" and rec["mean_abs_shift"] > 0 and "warning" not in rec


def test_oracle_restores_the_channel_sums_of_the_scored_batch():
    """On the batch being scored, each channel gets (sum y - sum y_hat)/#{y > 0} on its positive values, so
    where as many quantized as float values are positive the channel's sum is exactly the float one."""
    q = quantize(make_net(), ORACLE, images(1, 16))
    seen, hooks = capture(q)
    with torch.no_grad():
        q(images(2, 12))
    for h in hooks:
        h.remove()
    exact = 0
    for name, [(y, y_hat, out)] in seen.items():
        relu = corrections(q)[name].relu
        ref = (torch.relu(y) if relu else y).numpy()
        yh, o = y_hat.numpy(), out.numpy()
        shift = (ref.sum((0, 2, 3)) - yh.sum((0, 2, 3))) / ((ref > 0).sum((0, 2, 3)) + 1e-8)
        np.testing.assert_allclose(o, yh + shift[None, :, None, None] * (yh > 0), rtol=1e-12, atol=1e-12)
        # the channel-sum error is scaled by 1 - #{y_hat > 0}/#{y > 0}: 0 where the counts agree
        ratio = (yh > 0).sum((0, 2, 3)) / ((ref > 0).sum((0, 2, 3)) + 1e-8)
        np.testing.assert_allclose(o.sum((0, 2, 3)) - ref.sum((0, 2, 3)),
                                   (yh.sum((0, 2, 3)) - ref.sum((0, 2, 3))) * (1 - ratio), rtol=1e-9, atol=1e-9)
        same = (yh > 0).sum((0, 2, 3)) == (ref > 0).sum((0, 2, 3))
        np.testing.assert_allclose(o.sum((0, 2, 3))[same], ref.sum((0, 2, 3))[same], rtol=1e-9)
        exact += int(same.sum())
    assert exact >= 1
    rec = q.aciq_report["conv1"]["act_bias_correction"]
    assert rec["mode"] == "oracle" and "not deployable" in rec["warning"]
    assert "ORACLE" in ORACLE.describe() and "bca:calibration" in CAL.describe()


def test_oracle_depends_on_the_batch_calibration_form_does_not():
    x = images(2, 21)
    oracle = quantize(make_net(), ORACLE, images(1, 16))
    cal = quantize(make_net(), CAL, images(1, 16))
    with torch.no_grad():
        assert not torch.equal(oracle(x)[:7], oracle(x[:7]))       # the scored batch corrects itself
        full = cal(x)
        assert torch.equal(torch.cat([cal(b) for b in x.split(1)]), full)
        assert torch.equal(torch.cat([cal(b) for b in x.split(7)]), full)


def test_calibration_form_is_the_oracle_of_the_calibration_set():
    """Calibrated on X (in any batches), the fixed shifts are the oracle's shifts on X as one batch: on X the
    two forms give the same outputs, bit for bit; on other data the calibration form applies those shifts,
    not the ones of the scored batch."""
    x = images(3, 16)
    cal = quantize(make_net(), CAL, list(x.split(5)))
    oracle = quantize(make_net(), ORACLE, list(x.split(5)))
    seen, hooks = capture(oracle)
    with torch.no_grad():
        assert torch.equal(cal(x), oracle(x))
    for h in hooks:
        h.remove()
    for name, m in corrections(cal).items():
        (y, y_hat, _), = seen[name]
        np.testing.assert_array_equal(m.shift.numpy(), batch_shift(y, y_hat, relu=m.relu).numpy())
    other = images(4, 9)
    seen, hooks = capture(cal)
    with torch.no_grad():
        cal(other)
    for h in hooks:
        h.remove()
    moved = 0
    for name, m in corrections(cal).items():
        (y, y_hat, out), = seen[name]
        pos = y_hat > 0
        applied = (out - y_hat)
        want = m.shift.view(1, -1, 1, 1).expand_as(out)
        torch.testing.assert_close(applied[pos], want[pos], rtol=1e-12, atol=1e-12)
        assert torch.equal(applied[~pos], torch.zeros_like(applied[~pos]))
        moved += int((batch_shift(y, y_hat, relu=m.relu) - m.shift).abs().max() > 1e-6)
    assert moved == 3


def test_calibration_form_needs_calibration_data():
    net, x = make_net(), images(1, 8)
    stats = collect_statistics(net, CAL, x)
    with pytest.raises(ValueError, match="calibration_data"):
        quantize(net, CAL, statistics=stats, example=x)
    q = quantize(net, CAL, x, statistics=stats)               # statistics given, data too: calibrated
    assert all(m.calibrated for m in corrections(q).values())
    with pytest.raises(ValueError, match="layer conv9: the activation bias correction is not calibrated"):
        ActBiasCorrection(2, mode="calibration", relu=True, name="conv9")(torch.ones(1, 2, 1, 1),
                                                                          torch.ones(1, 2, 1, 1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(act_bias_correction="oracle"), "allow_oracle=True"),               # refused unless asked for
    (dict(act_bias_correction="calibration", allow_oracle=True), "allow_oracle only applies"),
    (dict(allow_oracle=True), "allow_oracle only applies"),
    (dict(allow_oracle="yes", act_bias_correction="oracle"), "allow_oracle must be"),
    (dict(act_bias_correction="calibration", act_site="input"), "act_site='output'.*empirical"),
    (dict(act_bias_correction="calibration", act_bits=None), "act_bits"),
    (dict(act_bias_correction="mean"), "act_bias_correction"),
])
def test_bad_act_bias_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BASE.replace(**kwargs)


def test_presets():
    assert preset("seed-w4a4-bca").act_bias_correction == "calibration"
    oracle = preset("seed-w4a4-bca-oracle")
    assert oracle.act_bias_correction == "oracle" and oracle.allow_oracle
    with pytest.raises(ValueError, match="allow_oracle"):
        preset("seed-w4a4-bca", act_bias_correction="oracle")
    q = quantize(make_net(), oracle, images(1, 8))
    assert all(isinstance(m, QuantizedLayer) for m in (q.conv1, q.conv2, q.conv3, q.fc))
