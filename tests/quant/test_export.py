"""aciq.quant.export: QDQ ONNX files that onnx.checker accepts, ONNX Runtime runs, and that hold integer weights.

Every layer kind the quantizer handles (conv, depthwise, grouped, linear, quantized pooling, residual add) is in
one small model; the file is read back with the onnx package and checked against the quantizer's own data (an
independent route: the codes, scales and zero points in the file reproduce each layer's quantized weight and
each activation grid), and run in ONNX Runtime against the fake-quantized model.
"""
import copy
import doctest
import os

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402

import aciq.quant.export as export_mod  # noqa: E402
from aciq.quant import PerChannel, QuantConfig, preset, quantize  # noqa: E402
from aciq.quant.export import export_onnx  # noqa: E402
from aciq.quant.fake import FakeQuant, fake_quantize, grid_params  # noqa: E402
from aciq.quant.modules import QuantizedLayer, QuantizedOutput  # noqa: E402
from aciq.quant.onnx_check import compare_onnx, ort_run, ort_session  # noqa: E402

INTEGER_TYPES = {TensorProto.UINT4, TensorProto.UINT8}


class AllKinds(nn.Module):
    """conv+BN+ReLU, depthwise, grouped, a residual add, max pooling, average pooling, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        y = self.grouped(self.relu(self.dw(x)))
        x = self.pool(self.relu(x + y))
        return self.fc(self.avg(x).flatten(1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = AllKinds()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 3, 12, 12, generator=g), torch.randn(64, 3, 12, 12, generator=g)


PER_TENSOR = preset("w4a4-pt-aciq", pool_bits=8)
PER_CHANNEL = QuantConfig(weight_bits=4, act_bits=4, act_granularity=PerChannel(axis=1), act_clipping="laplace",
                          act_bit_alloc="optimal", weight_bit_alloc="optimal", bias_correction="mean",
                          bias_form="on-grid", pool_bits=4)


@pytest.fixture(scope="module")
def exported(model, data, tmp_path_factory):
    """(config name, int4) -> (qmodel, path, OnnxExport, ModelProto)."""
    out = {}
    folder = tmp_path_factory.mktemp("onnx")
    for key, cfg in (("per-tensor", PER_TENSOR), ("per-channel", PER_CHANNEL)):
        q = quantize(model, cfg, [data[0][:16], data[0][16:]])
        for int4 in (True, False):
            path = folder / f"{key}-{int4}.onnx"
            info = export_onnx(q, data[1][:4], path, int4=int4)
            out[key, int4] = (q, path, info, onnx.load(os.fspath(path)))
    return out


def _inits(proto):
    return {t.name: t for t in proto.graph.initializer}


def _producers(proto):
    return {o: n for n in proto.graph.node for o in n.output}


def _layer_nodes(proto):
    return [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


# --------------------------------------------------------------------------- the file
@pytest.mark.parametrize("key", ["per-tensor", "per-channel"])
@pytest.mark.parametrize("int4", [True, False])
def test_checker_passes_and_weights_are_integer_initializers(exported, key, int4):
    q, path, info, proto = exported[key, int4]
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == info.opset == 21
    inits, producers = _inits(proto), _producers(proto)
    layers = _layer_nodes(proto)
    n_layers = sum(isinstance(m, QuantizedLayer) for m in q.modules())
    assert len(layers) == n_layers == 4
    for node in layers:
        dq = producers[node.input[1]]   # the weight input comes from a DequantizeLinear of an integer tensor
        assert dq.op_type == "DequantizeLinear", node.name
        assert inits[dq.input[0]].data_type in INTEGER_TYPES
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    weight_shapes = {tuple(m.layer.weight.shape) for m in q.modules() if isinstance(m, QuantizedLayer)}
    for t in inits.values():    # no float copy of any weight
        if t.data_type == TensorProto.FLOAT:
            assert tuple(t.dims) not in weight_shapes, t.name
    used = {t.data_type for t in inits.values()}
    names = {TensorProto.UINT4: "uint4", TensorProto.UINT8: "uint8"}
    assert sorted(names[t] for t in used & INTEGER_TYPES) == info.containers()
    assert not used & {TensorProto.INT4, TensorProto.INT8}      # unsigned codes (see aciq.quant.qdq)
    # 4-bit weights except the 8-bit first/last layers (and allocation's > 4-bit channels); 4-bit
    # activations (per tensor), or the 4-bit pooling output (per channel: allocation mixes 2..8 bits)
    weights = [v["weight"]["container"] for v in info.modules.values() if "weight" in v]
    assert ("uint4" in weights) == int4 and "uint8" in weights


@pytest.mark.parametrize("key", ["per-tensor", "per-channel"])
def test_file_reproduces_the_quantized_weights_and_grids(exported, key):
    """Decoded from the file alone: (codes - z) * s per output channel == the layer's quantized weight; the
    activation scales/zero points and the clamp ranges == the grids (per-channel ones along axis 1)."""
    q, _, _, proto = exported[key, True]
    inits, producers = _inits(proto), _producers(proto)
    arr = {name: numpy_helper.to_array(t) for name, t in inits.items()}
    layers = [m for m in q.modules() if isinstance(m, QuantizedLayer)]
    for node, m in zip(_layer_nodes(proto), layers):
        dq = producers[node.input[1]]
        codes, scale, zp = (arr[i].astype(np.float64) for i in dq.input)
        view = (-1,) + (1,) * (codes.ndim - 1)
        w = (codes - zp.reshape(view)) * scale.reshape(view)
        want = m.layer.weight.detach().double().numpy()
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in node.attribute):
            w = w.T
        np.testing.assert_allclose(w, want, rtol=0, atol=1e-6 * np.abs(want).max())
        # the activation feeding this layer: Q -> [Min] -> DQ with the input grid
        act = producers[node.input[0]]
        while act.op_type != "DequantizeLinear":
            act = producers[act.input[0]]
        grid = m.quant.act_in
        np.testing.assert_array_equal(arr[act.input[1]], np.float32(grid.scale))
        np.testing.assert_array_equal(arr[act.input[2]].astype(np.int64), grid.zero_point)
        per_channel = np.ndim(grid.scale) == 1
        assert [a.i for a in act.attribute if a.name == "axis"] == ([1] if per_channel else [])
        before = producers[act.input[0]]
        if before.op_type == "Min":       # clamp ranges = the per-channel qmax of bit allocation
            np.testing.assert_array_equal(arr[before.input[1]].reshape(-1), np.broadcast_to(grid.qmax, (
                arr[before.input[1]].size,)))
            assert np.any(grid.qmax < 255)
        else:
            assert before.op_type == "QuantizeLinear"


def test_eight_bit_containers_clamp_four_bit_ranges(exported):
    """int4=False: no 4-bit type anywhere; 4-bit activations keep their range through a Min on uint8."""
    _, _, info, proto = exported["per-tensor", False]
    inits = _inits(proto)
    assert not {t.data_type for t in inits.values()} & {TensorProto.INT4, TensorProto.UINT4}
    assert info.containers() == ["uint8"]
    mins = [n for n in proto.graph.node if n.op_type == "Min"]
    assert mins and all(numpy_helper.to_array(inits[n.input[1]]).max() == 15 for n in mins)
    weights = [v["weight"] for v in info.modules.values() if "weight" in v]
    assert {w["container"] for w in weights} == {"uint8"} and any(w["bits"] == [4] for w in weights)


@pytest.mark.parametrize("key", ["per-tensor", "per-channel"])
@pytest.mark.parametrize("int4", [True, False])
def test_onnx_runtime_agrees_with_the_fake_quantized_model(exported, data, key, int4):
    q, path, _, _ = exported[key, int4]
    result = compare_onnx(q, path, data[1])
    assert result.n == 64
    assert result.agreement >= 98.0, result      # float summation order may flip a code on a boundary
    with torch.no_grad():
        want = q(data[1])
    got = ort_run(ort_session(path), data[1])
    close = (got - want).abs() <= 1e-4 * want.abs().max()
    assert close.float().mean() >= 0.95, result    # most logits equal up to float rounding
    # the batch dimension is dynamic: one image, and an odd batch, run too
    assert ort_run(ort_session(path), data[1][:1]).shape == (1, 10)
    assert ort_run(ort_session(path), data[1][:5]).shape == (5, 10)


def test_pooling_and_residual_add_are_in_the_graph(exported):
    q, _, info, proto = exported["per-tensor", True]
    ops = [n.op_type for n in proto.graph.node]
    assert "Add" in ops and "MaxPool" in ops
    pool = [name for name, m in q.named_modules() if isinstance(m, QuantizedOutput)]
    assert pool == ["pool", "avg"] and info.modules["pool"]["act_out"]["bits"] == [8]
    producers = _producers(proto)
    maxpool = next(n for n in proto.graph.node if n.op_type == "MaxPool")
    consumers = [n for n in proto.graph.node if maxpool.output[0] in n.input]
    assert [n.op_type for n in consumers] == ["QuantizeLinear"]
    assert producers[maxpool.input[0]].op_type == "Relu"


def test_seed_convention_output_sites(model, data, tmp_path):
    """act_site='output' (the seed's convention): each layer's output is Q/DQ'd, the file still runs."""
    q = quantize(model, preset("seed-w4a4-naive"), data[0])
    info = export_onnx(q, data[1][:2], tmp_path / "seed.onnx")
    assert all(v["act_out"] is not None for v in info.modules.values() if "weight" in v)
    assert compare_onnx(q, tmp_path / "seed.onnx", data[1]).agreement >= 98.0


def test_kernels_backend_exports_the_same_file(model, data, tmp_path):
    fake = quantize(model, PER_CHANNEL, data[0])
    kern = quantize(model, PER_CHANNEL, data[0], backend="kernels")
    a = onnx.load(os.fspath(export_onnx(fake, data[1][:2], tmp_path / "a.onnx").path))
    b = onnx.load(os.fspath(export_onnx(kern, data[1][:2], tmp_path / "b.onnx").path))
    ia, ib = _inits(a), _inits(b)
    assert ia.keys() == ib.keys()
    for name in ia:
        np.testing.assert_array_equal(numpy_helper.to_array(ia[name]), numpy_helper.to_array(ib[name]), name)


def test_a_standalone_fake_quant_module_exports(tmp_path, data, model):
    """The table's FakeQuant entry: a grid placed directly in a model becomes one Q/DQ pair."""
    q = quantize(model, PER_TENSOR, data[0])
    q.extra = FakeQuant(grid_params(-1.0, 2.0, 4))
    orig = q.forward
    q.forward = lambda x: orig(q.extra(x))
    info = export_onnx(q, data[1][:2], tmp_path / "fq.onnx")
    assert info.modules["extra"] == {"bits": [4], "container": "uint8", "clamp": True, "per_channel": False,
                                     "zero_bit_channels": False, "unit_scale": False}
    assert compare_onnx(q, tmp_path / "fq.onnx", data[1][:16]).agreement >= 90.0


# --------------------------------------------------------------------------- bad input
def test_unsupported_quantizing_module_is_named(model, data, tmp_path):
    """A module that quantizes in its own forward (a grid, not a FakeQuant child) and is not in the table."""
    class MyQuantized(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.grid = inner, grid_params(-1.0, 1.0, 4)

        def forward(self, x):
            return fake_quantize(self.inner(x), self.grid)

    q = quantize(model, PER_TENSOR, data[0])
    q.avg = MyQuantized(q.avg)
    with pytest.raises(ValueError, match=r"module 'avg' \(.*MyQuantized\) is not supported"):
        export_onnx(q, data[1][:2], tmp_path / "x.onnx")


def test_fake_quant_children_of_any_module_export(model, data, tmp_path):
    """A FakeQuant inside a plain float module is found and converted (the rest is torch's float graph)."""
    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.act = inner, FakeQuant(grid_params(0.0, 1.0, 8))

        def forward(self, x):
            return self.act(self.inner(x))

    q = quantize(model, PER_TENSOR, data[0])
    q.avg = Wrapper(q.avg)
    info = export_onnx(q, data[1][:2], tmp_path / "w.onnx")
    assert info.modules["avg.act"]["bits"] == [8] and "avg.inner" in info.modules
    assert compare_onnx(q, info.path, data[1][:16]).agreement >= 90.0


def test_seed_form_bias_correction_is_refused(model, data, tmp_path):
    q = quantize(model, preset("w4a8-bias"), data[0])      # bias_form defaults to the seed's
    with pytest.raises(ValueError, match=r"seed form.*off the integer grid.*bias_form='on-grid'"):
        export_onnx(q, data[1][:2], tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_off_grid_weight_is_refused(model, data, tmp_path):
    q = quantize(model, PER_TENSOR, data[0])
    with torch.no_grad():
        q.conv.quant.weight = q.conv.quant.weight + 1e-3
    with pytest.raises(ValueError, match="layer 'conv': its quantized weight is not"):
        export_onnx(q, data[1][:2], tmp_path / "x.onnx")


def test_paths_that_cannot_be_written(model, data, tmp_path):
    q = quantize(model, PER_TENSOR, data[0])
    with pytest.raises(ValueError, match="does not exist"):
        export_onnx(q, data[1][:2], tmp_path / "missing" / "x.onnx")
    with pytest.raises(ValueError, match="is a directory"):
        export_onnx(q, data[1][:2], tmp_path)
    with pytest.raises(ValueError, match="path must be a file path"):
        export_onnx(q, data[1][:2], "")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="does not exist"):
        export_onnx(q, data[1][:2], blocker / "x.onnx")


def test_a_model_aciq_did_not_quantize_is_refused(model, data, tmp_path):
    with pytest.raises(ValueError, match="not quantized by aciq"):
        export_onnx(copy.deepcopy(model), data[1][:2], tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="torch.nn.Module"):
        export_onnx("model", data[1][:2], tmp_path / "x.onnx")


def test_bad_options(model, data, tmp_path):
    q = quantize(model, PER_TENSOR, data[0])
    with pytest.raises(ValueError, match="int4=True needs opset >= 21"):
        export_onnx(q, data[1][:2], tmp_path / "x.onnx", opset=19)
    with pytest.raises(ValueError, match="opset must be an integer >= 18"):
        export_onnx(q, data[1][:2], tmp_path / "x.onnx", opset=12)
    with pytest.raises(ValueError, match="example_input must be a float tensor"):
        export_onnx(q, data[1][:2].numpy(), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="batch dimension"):
        export_onnx(q, torch.randn(3), tmp_path / "x.onnx")


def test_older_opset_with_eight_bit_containers(model, data, tmp_path):
    q = quantize(model, PER_TENSOR, data[0])
    info = export_onnx(q, data[1][:1], tmp_path / "o19.onnx", opset=19, int4=False)   # a batch of 1 works too
    proto = onnx.load(os.fspath(info.path))
    assert proto.opset_import[0].version == 19 and info.containers() == ["uint8"]
    assert compare_onnx(q, info.path, data[1]).agreement >= 98.0


def test_docstring_examples():
    assert doctest.testmod(export_mod).failed == 0


# --------------------------------------------------------------------------- the integer form
def _layer_dq_scales(proto):
    """The scales of the DequantizeLinear nodes that feed a Conv/Gemm/MatMul directly."""
    inits, made_by = _inits(proto), _producers(proto)
    return [numpy_helper.to_array(inits[made_by[i].input[1]]) for n in _layer_nodes(proto) for i in n.input
            if i in made_by and made_by[i].op_type == "DequantizeLinear"]


def test_integer_form_writes_unit_scales_then_one_multiply(model, data, tmp_path):
    q = quantize(model, PER_TENSOR, data[0])
    info = export_onnx(q, data[1][:4], tmp_path / "int.onnx", form="integer")
    proto = onnx.load(os.fspath(info.path))
    assert {k: v["form"] for k, v in info.modules.items() if "form" in v} == dict.fromkeys(
        ["conv", "dw", "grouped", "fc"], "integer")
    scales = _layer_dq_scales(proto)                               # two per layer: its input and its weight
    assert len(scales) == 2 * 4 and all(np.all(s == 1.0) for s in scales)   # codes minus zero points
    for layer in _layer_nodes(proto):
        assert all(_inits(proto).get(i) is None for i in layer.input), "integer weights stay behind a DQ node"
    consumers = {i: n for n in proto.graph.node for i in n.input}
    assert all(consumers[n.output[0]].op_type == "Mul" for n in _layer_nodes(proto))
    # the same numbers as the QDQ form's file: integer weights, grids
    qdq = onnx.load(os.fspath(export_onnx(q, data[1][:4], tmp_path / "qdq.onnx").path))
    codes = lambda p: sorted(numpy_helper.to_array(t).tobytes() for t in p.graph.initializer  # noqa: E731
                             if t.data_type in INTEGER_TYPES)
    assert codes(proto) == codes(qdq)


def test_integer_form_runs_what_aciq_runs(model, data, tmp_path):
    """Per-tensor grids: ONNX Runtime's logits equal aciq's bit for bit; per-channel input steps of a dense
    layer (common-unit multipliers in its weight) keep the QDQ form, depthwise ones take the integer form."""
    q = quantize(model, PER_TENSOR, data[0])
    info = export_onnx(q, data[1][:4], tmp_path / "int.onnx", form="integer")
    got = ort_run(ort_session(info.path), data[1])
    assert torch.equal(got, q(data[1]))
    qc = quantize(model, PER_CHANNEL, data[0])
    info = export_onnx(qc, data[1][:4], tmp_path / "pc.onnx", form="integer")
    forms = {k: v["form"] for k, v in info.modules.items() if "form" in v}
    assert forms == {"conv": "qdq", "dw": "integer", "grouped": "qdq", "fc": "qdq"}
    assert compare_onnx(qc, info.path, data[1]).agreement == 100.0


def test_integer_form_with_zero_bit_weight_rows(model, data, tmp_path):
    """Bit allocation gives two output rows 0 bits (fills -1e-6 and 0): the file stores them as one code
    ``sign(f)`` with scale ``|f|``, aciq runs ones times ``f``; the integer form still matches bit for bit."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.grouped.weight[2:] *= 50
        m.grouped.weight[0] = -1e-6
        m.grouped.weight[1] = 0.0
    q = quantize(m, preset("w4a8-alloc", pool_bits=8, weight_avg_bits=2.5), [data[0][:16], data[0][16:]])
    grid = q.grouped.quant.weight_grid
    dead = np.asarray(grid.bits) == 0
    assert dead[:2].all() and np.asarray(grid.fill)[0] < 0 and np.asarray(grid.fill)[1] == 0
    info = export_onnx(q, data[1][:4], tmp_path / "dead.onnx", form="integer")
    assert info.modules["grouped"]["form"] == "integer"
    assert torch.equal(ort_run(ort_session(info.path), data[1]), q(data[1]))


def test_kernels_backend_keeps_the_qdq_form(model, data, tmp_path):
    q = quantize(model, PER_TENSOR, data[0], backend="kernels")
    info = export_onnx(q, data[1][:4], tmp_path / "k.onnx", form="integer")
    assert {v["form"] for v in info.modules.values() if "form" in v} == {"qdq"}


def test_unknown_form_is_refused(model, data, tmp_path):
    q = quantize(model, PER_TENSOR, data[0])
    with pytest.raises(ValueError, match="form must be one of"):
        export_onnx(q, data[1][:2], tmp_path / "x.onnx", form="exact")


# --------------------------------------------------------------------------- the embedded model
@pytest.mark.slow
@pytest.mark.parametrize("name, changes", [("w4a8-alloc-bias", {"bias_form": "on-grid"}),
                                           ("w4a4-all-ongrid", {})])
def test_resnet20_fmnist_agreement(name, changes, tmp_path):
    """ResNet-20 on 500 Fashion-MNIST test images: ONNX Runtime's top-1 agrees with aciq's (measured on the
    10 000: 99.9 % and more, see the report of benchmarks/bench_onnx.py)."""
    fm = pytest.importorskip("aciq.quant.fashion_mnist")
    from aciq.quant.resnet20 import load_resnet20_fmnist

    try:
        train_x, _ = fm.load("train")
        test_x, _ = fm.load("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (make data)")
    model = load_resnet20_fmnist()
    calib = fm.to_tensor(train_x[:64])
    x = fm.to_tensor(test_x[:500])
    q = quantize(model, preset(name, **changes), [calib[:32], calib[32:]])
    info = export_onnx(q, x[:2], tmp_path / "r20.onnx")
    assert "uint4" in info.containers()
    result = compare_onnx(q, info.path, x)
    assert result.agreement >= 99.0, result
    assert result.mean_abs_logit_diff < 0.05, result
    if name == "w4a8-alloc-bias":     # per-tensor inputs: the integer form computes what aciq computes
        info = export_onnx(q, x[:2], tmp_path / "r20-int.onnx", form="integer")
        exact = compare_onnx(q, info.path, x)
        assert exact.agreement == 100.0, exact
        assert exact.mean_abs_logit_diff < result.mean_abs_logit_diff / 10, (exact, result)
