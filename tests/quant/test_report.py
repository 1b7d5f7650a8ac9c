"""aciq.quant.report: code lengths of a quantized model agree with aciq.theory.coding on the same codes."""
import doctest

import numpy as np
import pytest
import torch
from torch import nn

import aciq.quant.report as report
from aciq.quant import QuantConfig, code_lengths, preset, quantize
from aciq.quant.fake import FakeQuant, codes
from aciq.quant.modules import ActCodes, QuantizedLayer
from aciq.quant.report import counts_summary
from aciq.theory.coding import code_length


def test_docstring_examples():
    assert doctest.testmod(report).failed == 0


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def test_counts_summary_is_theory_coding():
    rng = np.random.default_rng(0)
    q = np.clip(np.rint(rng.laplace(size=5000) * 2 + 7), 0, 15).astype(np.int64)
    got = counts_summary(np.bincount(q, minlength=256))
    ref = code_length(q, bits=4)
    assert got["entropy"] == pytest.approx(ref.entropy, rel=1e-12)
    assert got["huffman"] == pytest.approx(ref.huffman, rel=1e-12)
    assert got["n"] == ref.n == 5000


def test_two_codes_cost_one_bit():
    two = counts_summary(np.bincount([3, 3, 3, 9], minlength=16))
    assert two["entropy"] <= 1.0 and two["huffman"] == 1.0
    assert two["entropy"] == pytest.approx(-(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)))
    # 1-bit weights: every weight tensor uses at most 2 codes
    cfg = QuantConfig(weight_bits=1, act_bits=None, first_layer_bits=None, last_layer_bits=None)
    rows = code_lengths(quantize(net(), cfg, torch.randn(4, 3, 8, 8)))
    weights = [r for r in rows if r["kind"] == "weight" and r["layer"] != "total"]
    assert len(weights) == 3
    for r in weights:
        assert r["bits"] == 1.0 and r["entropy"] <= 1.0 and r["huffman"] == 1.0


def hooked_codes(qmodel, x):
    """Codes of every FakeQuant input, collected independently of the report (a plain forward hook)."""
    seen = {}

    def hook(name):
        def fn(module, args, out):
            seen.setdefault(name, []).append(codes(args[0], module.grid).flatten().numpy())
        return fn

    hs = [m.register_forward_hook(hook(n)) for n, m in qmodel.named_modules() if isinstance(m, (FakeQuant, ActCodes))]
    with torch.no_grad():
        for b in x:
            qmodel(b)
    for h in hs:
        h.remove()
    return {k: np.concatenate(v) for k, v in seen.items()}


@pytest.mark.parametrize("name", ["w4a4-all", "seed-w4a4-all"])
def test_rows_agree_with_theory_on_the_same_codes(name):
    model = net()
    calib = torch.randn(8, 3, 8, 8)
    q = quantize(model, preset(name), calib)
    data = [torch.randn(3, 3, 8, 8), torch.randn(5, 3, 8, 8)]
    rows = code_lengths(q, data)
    layers = [n for n, m in q.named_modules() if isinstance(m, QuantizedLayer)]
    by_key = {(r["layer"], r["kind"]): r for r in rows}
    for layer in layers:
        m = q.get_submodule(layer)
        ref = code_length(m.quant.codes)
        r = by_key[(layer, "weight")]
        assert r["entropy"] == pytest.approx(ref.entropy, rel=1e-12, abs=1e-12)
        assert r["huffman"] == pytest.approx(ref.huffman, rel=1e-12)
        assert r["n"] == m.layer.weight.numel() and r["bits"] == np.mean(m.quant.weight_grid.bits)
    seen = hooked_codes(q, data)
    site_rows = [r for r in rows if r["kind"] != "weight" and r["layer"] != "total"]
    assert len(site_rows) == len(seen)
    for r in site_rows:
        key = f"{r['layer']}.{r['kind']}"
        ref = code_length(seen[key])
        assert r["n"] == ref.n
        assert r["entropy"] == pytest.approx(ref.entropy, rel=1e-12, abs=1e-12)
        assert r["huffman"] == pytest.approx(ref.huffman, rel=1e-12)
        assert r["entropy"] <= r["huffman"] + 1e-12 < r["entropy"] + 1
    if name == "seed-w4a4-all":      # output site, and the 8-bit pooling outputs
        assert {r["kind"] for r in site_rows} == {"act_out"}
        assert {"2", "5"} <= {r["layer"] for r in site_rows}
    else:
        assert {r["kind"] for r in site_rows} == {"act_in"}


def test_summary_rows_are_weighted_averages():
    q = quantize(net(), preset("w4a4-naive"), torch.randn(4, 3, 8, 8))
    rows = code_lengths(q, torch.randn(4, 3, 8, 8))
    for kind in ("weight", "act_in"):
        sel = [r for r in rows if r["kind"] == kind and r["layer"] != "total"]
        total = [r for r in rows if r["kind"] == kind and r["layer"] == "total"]
        assert len(total) == 1
        n = np.array([r["n"] for r in sel])
        assert total[0]["n"] == n.sum()
        for k in ("bits", "entropy", "huffman"):
            assert total[0][k] == pytest.approx(np.dot(n, [r[k] for r in sel]) / n.sum())
    assert not any(r["kind"] == "act_in" for r in code_lengths(q))       # no data: weights only


def test_kernels_backend_reports_its_input_codes():
    cfg = preset("w4a4-pt-aciq", bias_correction="mean", bias_form="on-grid")
    model, calib, x = net(), torch.randn(8, 3, 8, 8), torch.randn(4, 3, 8, 8)
    fake_rows = code_lengths(quantize(model, cfg, calib), x)
    kern_rows = code_lengths(quantize(model, cfg, calib, backend="kernels"), x)
    assert [(r["layer"], r["kind"], r["n"]) for r in fake_rows] == [(r["layer"], r["kind"], r["n"]) for r in kern_rows]
    for a, b in zip(fake_rows, kern_rows):
        assert a["entropy"] == pytest.approx(b["entropy"], abs=1e-3)


def test_bad_input():
    with pytest.raises(ValueError, match="qmodel must be a torch.nn.Module"):
        code_lengths("model")
    with pytest.raises(ValueError, match="no quantized layers"):
        code_lengths(net())
    q = quantize(net(), preset("w4a4-naive"), torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="data batch 0 contains NaN"):
        code_lengths(q, torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="data is empty"):
        code_lengths(q, [])
