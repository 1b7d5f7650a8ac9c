"""KernelLayer: a quantized model on aciq.kernels, the CPU backend here and the CUDA seam under the simulator.

The CUDA cases run in a child process with ``NUMBA_ENABLE_CUDASIM=1`` (set before numba.cuda is imported, as
tests/kernels/test_cuda_sim.py does). The simulator takes host arrays, so the model's layers are forced to
``backend="cuda"`` on CPU tensors: the same plan, the same per-shape scratch and the same ``out=`` path a CUDA
tensor takes (zero-copy views; the CUDA tensor is viewed through ``__cuda_array_interface__`` instead).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from aciq.quant import PerChannel, QuantConfig, preset, quantize
from aciq.quant.modules import KernelLayer

CHILD = os.environ.get("ACIQ_KERNEL_LAYER_CHILD") == "1"
child_only = pytest.mark.skipif(not CHILD, reason="runs in the CUDA simulator subprocess")
parent_only = pytest.mark.skipif(CHILD, reason="runs in the parent session")


class Small(nn.Module):
    """conv, depthwise, grouped, a residual add, pooling, linear: every layer kind the kernels run."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x + self.grouped(torch.relu(self.dw(x)))
        return self.fc(torch.relu(x).mean((2, 3)))


PER_TENSOR = preset("w4a4-pt-aciq")
PER_CHANNEL = QuantConfig(weight_bits=4, act_bits=4, act_granularity=PerChannel(axis=1), act_bit_alloc="optimal",
                          bias_correction="mean", bias_form="on-grid")


def _models(cfg):
    torch.manual_seed(0)
    model = Small().eval()
    g = torch.Generator().manual_seed(1)
    calib, x = torch.randn(16, 3, 6, 6, generator=g), torch.randn(3, 3, 6, 6, generator=g)
    return quantize(model, cfg, calib), quantize(model, cfg, calib, backend="kernels"), x


def _layers(model):
    return [m for m in model.modules() if isinstance(m, KernelLayer)]


# --------------------------------------------------------------------------- parent session (CPU backend)
@parent_only
@pytest.mark.parametrize("cfg, mode", [(PER_TENSOR, "integer"), (PER_CHANNEL, "mixed")])
def test_mode_follows_the_input_grid(cfg, mode):
    """Integer accumulation where the input grid is per tensor (exact), mixed for per-channel steps."""
    fake, kern, x = _models(cfg)
    modes = {m.quant.name: m.mode for m in _layers(kern)}
    assert set(modes) == {"conv", "dw", "grouped", "fc"} and set(modes.values()) == {mode}
    with torch.no_grad():
        a, b = fake(x), kern(x)
    assert torch.allclose(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


@parent_only
def test_cpu_plans_are_cached_per_backend_and_shape():
    _, kern, x = _models(PER_TENSOR)
    conv = next(m for m in _layers(kern) if m.quant.name == "dw")
    with torch.no_grad():
        kern(x)
        kern(x)
        first = dict(conv.op._plans)
        kern(x[:1])
    assert list(first) == [("cpu", (3, 8, 6, 6))]
    assert set(conv.op._plans) == {("cpu", (3, 8, 6, 6)), ("cpu", (1, 8, 6, 6))}
    assert len(conv.op._backend_plans) == 1                  # one weight panel for both shapes
    assert conv.op._plans["cpu", (1, 8, 6, 6)][0] is first["cpu", (3, 8, 6, 6)][0]


@parent_only
def test_backend_can_be_forced_and_is_checked():
    _, kern, x = _models(PER_TENSOR)
    layer = _layers(kern)[0]
    layer.backend = "reference"
    with torch.no_grad():
        ref = kern(x)
    layer.backend = None
    with torch.no_grad():
        cpu = kern(x)
    assert torch.equal(ref, cpu)                              # integer mode: the same integers, the same epilogue
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.backend = "tpu"


class StaticPadConv(nn.Conv2d):
    """EfficientNet-Lite's Conv2dStaticSamePadding: a fixed (asymmetric) zero pad, then the conv."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x):
        return nn.functional.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, self.padding,
                                    self.dilation, self.groups)


class OtherConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2.0


@parent_only
def test_static_same_padding_convs_run_on_the_kernels():
    torch.manual_seed(2)
    model = nn.Sequential(StaticPadConv(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 5)).eval()
    calib, x = torch.randn(8, 3, 7, 7), torch.randn(4, 3, 7, 7)
    fake = quantize(model, PER_TENSOR, calib)
    kern = quantize(model, PER_TENSOR, calib, backend="kernels")
    assert _layers(kern)[0].pre is kern[0].layer.static_padding
    with torch.no_grad():
        a, b = fake(x), kern(x)
    assert torch.allclose(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    other = nn.Sequential(OtherConv(3, 8, 3), nn.Flatten(), nn.Linear(8 * 5 * 5, 5)).eval()
    with pytest.raises(ValueError, match="layer 0: the kernels backend runs plain nn.Conv2d.*not OtherConv"):
        quantize(other, PER_TENSOR, calib, backend="kernels")


@parent_only
@pytest.mark.slow  # ~1-2 min: the simulator runs every GPU thread as a Python thread
def test_cuda_seam_under_simulator():
    env = dict(os.environ, ACIQ_KERNEL_LAYER_CHILD="1", NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=1200)
    tail = proc.stdout[-6000:] + "\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail


# --------------------------------------------------------------------------- child (CUDA simulator)
@child_only
@pytest.mark.parametrize("cfg", [PER_TENSOR, PER_CHANNEL], ids=["per-tensor", "per-channel"])
def test_model_on_the_cuda_kernels_matches_the_cpu_kernels(cfg):
    _, kern, x = _models(cfg)
    with torch.no_grad():
        cpu = kern(x)
        for m in _layers(kern):
            m.backend = "cuda"
        gpu = kern(x)
    if all(m.mode == "integer" for m in _layers(kern)):
        assert torch.equal(gpu, cpu)          # integer mode: bit-exact across backends
    else:
        assert torch.allclose(gpu, cpu, rtol=1e-5, atol=1e-5 * cpu.abs().max().item())


@child_only
def test_cuda_plan_hot_path_allocates_nothing_and_stays_on_the_device(monkeypatch):
    """With device input and output, a repeated call launches kernels only: no device allocation, no copy to
    or from the host (counted by wrapping numba's allocation and transfer functions in the backend)."""
    from numba import cuda

    import aciq.kernels.cuda as kc

    _, kern, x = _models(PER_TENSOR)
    for m in _layers(kern):
        m.backend = "cuda"
    conv = next(m for m in _layers(kern) if m.quant.name == "grouped")
    with torch.no_grad():
        xin = torch.relu(kern.conv(x))                      # a real activation of the right shape
        want = conv(xin)
    plan, geom = conv.op.plan("cuda", tuple(xin.shape))
    xd = cuda.to_device(xin.numpy())
    out = cuda.device_array(tuple(want.shape), np.float32)
    plan.conv(xd, geom, out=out)                             # warm-up: per-group plans and scratch
    groups, scratch = plan._groups, dict(plan._scratch)
    calls = []

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(kc.cuda, "device_array", counting("device_array", cuda.device_array))
    monkeypatch.setattr(kc.cuda, "to_device", counting("to_device", cuda.to_device))
    result = plan.conv(xd, geom, out=out)
    assert result is out and calls == []
    assert plan._groups is groups and plan._scratch == scratch
    np.testing.assert_array_equal(out.copy_to_host(), want.numpy())


@child_only
def test_cuda_scratch_is_kept_per_input_shape():
    _, kern, x = _models(PER_TENSOR)
    for m in _layers(kern):
        m.backend = "cuda"
    dw = next(m for m in _layers(kern) if m.quant.name == "dw")
    with torch.no_grad():
        kern(x)
        kern(x)
        plan = dw.op.plan("cuda", (3, 8, 6, 6))[0]
        assert len(plan._scratch) == 1 and len(plan._groups) == 8
        kern(x[:2])
    assert len(plan._scratch) == 2 and set(dw.op._plans) == {("cuda", (3, 8, 6, 6)), ("cuda", (2, 8, 6, 6))}
