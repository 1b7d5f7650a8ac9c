"""ONNX export of an aciq-quantized model in QDQ form: ``export_onnx(qmodel, example_input, path)``.

How the file is made:

1. Every quantized module is swapped, in a copy of the model, for its QDQ form (:mod:`aciq.quant.qdq`),
   built from its *data* (``LayerQuant``: integer codes, grids, on-grid scale factor, bias; ``GridParams``)
   by the one table :data:`EXPORTERS` (module type -> builder). Everything else (ReLU, residual adds,
   pooling, flatten, float clamps, padding) is left to torch's own exporter (``torch.onnx.export`` with
   ``dynamo=True``, the TorchScript exporter being deprecated), which writes the float graph.
2. The exported graph is post-processed with the ``onnx`` package: the integer tensors of 4-bit Q/DQ nodes
   become ``UINT4`` initializers (torch has no 4-bit dtype), unused initializers are dropped,
   stack traces (local paths) are stripped; then ``onnx.checker`` (full check) must pass.

Weights are integer initializers with per-output-channel scales and zero points; activations are
QuantizeLinear/DequantizeLinear pairs (per tensor, or per channel along axis 1), with ``Min`` clamps where a
channel has fewer bits than its container (bit allocation). The batch dimension is dynamic.

``form="integer"`` writes the same initializers and activation QuantizeLinear nodes, with scale-1
DequantizeLinear nodes in front of each conv/linear that aciq runs on its float32 integer path, then one ``Mul``
by the layer's output scales and one ``Add`` of its bias (:class:`aciq.quant.modules.QuantizedLayer`'s
``finish``), so that ONNX Runtime sums the same integers and rounds the same two operations as aciq.

Refused, with a ValueError that says why: a model aciq did not quantize; a quantizing module the table does
not know (named); the ``seed`` form of bias correction (weights off the integer grid); a weight that is not
``(codes - z) s`` of its grid; a path that cannot be written. Needs the ``export`` extra (onnx, onnxscript).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .fake import FakeQuant, GridParams
from .modules import KernelLayer, LayerQuant, QuantizedLayer, QuantizedOutput
from .qdq import CONTAINER_KEY, ActQDQ, LayerQDQ, OutputQDQ, weight_codes

__all__ = ["export_onnx", "OnnxExport", "EXPORTERS", "DEFAULT_OPSET", "FORMS"]

DEFAULT_OPSET = 21   # the first opset with INT4/UINT4 QuantizeLinear/DequantizeLinear
MIN_OPSET = 18       # the oldest the dynamo exporter writes


FORMS = ("qdq", "integer")


def _integer_path(m) -> tuple | None:
    """``(row_scale, bias)`` of a layer whose integer path the integer form writes exactly, else None.

    That is a :class:`QuantizedLayer` on the float32 integer path whose convolution operands are the plain
    codes minus zero points: no seed-form offset rows, no half-integer or 0-bit input channels, and an integer
    weight equal to ``codes - zero_point`` (not so for a dense layer with per-channel input steps, whose
    weight carries the steps' integer multipliers).
    """
    if type(m) is not QuantizedLayer or not m.exact or m.has_offset or m.int_weight.dtype != torch.float32:
        return None
    grid = m.act_in.grid
    if grid.has_half or bool(np.any(np.asarray(grid.bits) == 0)):
        return None
    return m.row_scale, m.out_bias


def _row_signs(file_ints: torch.Tensor, aciq_ints: torch.Tensor) -> torch.Tensor | None:
    """Per output row, c with ``file_ints = c * aciq_ints`` where they differ only on 0-bit rows, else None.

    aciq's integer path runs a 0-bit row (the constant ``f``) as all ones times a row scale ``f``; the file
    stores it as the one code ``sign(f)`` with scale ``|f|`` (:func:`aciq.quant.qdq.weight_codes`), so its row
    scale is multiplied by ``sign(f)`` (-1 flips the sign of a product exactly; 0 gives the same 0).
    """
    a, b = file_ints.reshape(len(file_ints), -1), aciq_ints.reshape(len(aciq_ints), -1)
    signs = torch.ones(len(a))
    for n in torch.nonzero((a != b).any(1)).flatten().tolist():
        c = float(a[n, 0])
        if not (bool((b[n] == 1).all()) and bool((a[n] == c).all()) and c in (-1.0, 0.0)):
            return None
        signs[n] = c if c != 0 else 1.0
    return signs


def _layer(m, *, int4, opset, form="qdq"):
    exact = _integer_path(m) if form == "integer" else None
    if exact is not None:
        codes, zp, _ = weight_codes(m.quant, tuple(m.int_weight.shape))
        file_ints = torch.as_tensor(codes - zp.reshape((-1,) + (1,) * (codes.ndim - 1)), dtype=torch.float32)
        signs = _row_signs(file_ints, m.int_weight.detach().cpu())
        row_scale, bias = exact
        exact = None if signs is None else (row_scale.detach().cpu() * signs.to(row_scale.dtype), bias)
    return LayerQDQ(copy.deepcopy(m.layer).cpu(), m.quant, int4=int4, opset=opset, exact=exact)


EXPORTERS = {
    # module type (exact) -> builder(module, *, int4, opset, form) of its QDQ form; add new quantized modules here
    QuantizedLayer: _layer,
    KernelLayer: _layer,
    QuantizedOutput: lambda m, *, int4, opset, form: OutputQDQ(copy.deepcopy(m.module).cpu(), m.act_out.grid,
                                                               opset=opset),
    FakeQuant: lambda m, *, int4, opset, form: ActQDQ(m.grid, opset=opset),
}


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, its opset, and the QDQ form of every quantized module."""

    path: Path
    opset: int
    int4: bool
    modules: dict = field(default_factory=dict)   # module name -> {"weight": ..., "act_in": ..., ...}

    def containers(self) -> list[str]:
        """Every container used (``uint4``, ``uint8``), sorted."""
        found = set()

        def walk(d):
            for v in d.values():
                if isinstance(v, dict):
                    if "container" in v:
                        found.add(v["container"])
                    walk(v)
        walk(self.modules)
        return sorted(found)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "opset": self.opset, "int4": self.int4,
                "containers": self.containers(), "modules": self.modules}


# --------------------------------------------------------------------------- checks
def _quantizing(m: nn.Module) -> bool:
    """Does ``m`` quantize by itself (a LayerQuant, or a grid used in its own forward)?

    FakeQuant children do not count: they are found and converted on their own.
    """
    return any(isinstance(v, (LayerQuant, GridParams)) for v in vars(m).values())


def _quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost modules of ``model`` that :data:`EXPORTERS` converts, by name (pre-order)."""
    found = {}

    def walk(prefix, module):
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if type(child) in EXPORTERS:
                found[full] = child
            elif _quantizing(child):
                raise ValueError(f"module {full!r} ({type(child).__module__}.{type(child).__name__}) is not "
                                 f"supported by the ONNX exporter: it quantizes, but "
                                 f"aciq.quant.export.EXPORTERS has no QDQ form for it")
            else:
                walk(full, child)
    if type(model) in EXPORTERS:
        raise ValueError("qmodel is a single quantized module; export the model that contains it")
    if _quantizing(model):
        raise ValueError(f"model ({type(model).__name__}) quantizes in its own forward: it is not supported by the "
                         "ONNX exporter")
    walk("", model)
    return found


def _check_bias_form(name: str, q: LayerQuant) -> None:
    bc = q.info.get("bias_correction") if isinstance(q.info, dict) else None
    # the seed form's per-row offsets (kept as data by newer quantizers as ``row_offset``), or its record
    if getattr(q, "row_offset", None) is not None or (bc and bc.get("form") == "seed"):
        raise ValueError(
            f"layer {name!r}: its bias correction is in the seed form, which moves the weights off the integer "
            "grid (w = xi * w_hat + offset per channel), so there are no integer weights to export. Quantize "
            "with bias_form='on-grid' (e.g. preset('w4a4-all', bias_form='on-grid'), the 'w4a4-all-ongrid' "
            "preset, or --bias-form on-grid): it folds the same correction into the per-channel scale and the "
            "bias and keeps the codes integers")


def _check_weight(name: str, qdq: nn.Module, q: LayerQuant) -> None:
    """The integer weight must reproduce the layer's quantized weight (a backstop for off-grid weights)."""
    w = getattr(qdq, "weight", None)
    if w is None or q.weight is None:
        return
    got = w.dequantized().double()
    want = q.weight.detach().double().cpu().reshape(got.shape)
    tol = 1e-6 * want.reshape(want.shape[0], -1).abs().amax(1).clamp_min(1e-30)
    err = (got - want).reshape(want.shape[0], -1).abs().amax(1)
    if bool((err > tol).any()):
        bad = int(torch.nonzero(err > tol)[0, 0])
        raise ValueError(f"layer {name!r}: its quantized weight is not (codes - zero_point) * scale of its grid "
                         f"(output channel {bad} differs by {float(err[bad]):.3g}); weights off the integer grid "
                         f"cannot be exported as integers")


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"path must be a file path, got {path!r}")
    path = Path(os.fspath(path))
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"path {path} is a directory; give a file name such as {path / 'model.onnx'}")
    if not parent.is_dir():
        raise ValueError(f"path {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"path {path} cannot be written (no write permission)")
    return path


def _example(example_input) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor) or not torch.is_floating_point(example_input):
        raise ValueError(f"example_input must be a float tensor (a batch of inputs), got "
                         f"{type(example_input).__name__}")
    if example_input.ndim < 2 or example_input.shape[0] < 1:
        raise ValueError(f"example_input must have a batch dimension, got shape {tuple(example_input.shape)}")
    x = example_input.detach().float().cpu()
    # torch.export specialises a batch of 1: trace with 2 so that the batch dimension stays dynamic
    return x[:2] if x.shape[0] >= 2 else x.expand(2, *x.shape[1:]).contiguous()


# --------------------------------------------------------------------------- graph post-processing
def _narrow_4bit(model) -> None:
    """Rewrite the integer initializers of 4-bit Q/DQ nodes (stored as uint8 by torch) as UINT4."""
    from onnx import TensorProto, helper, numpy_helper

    targets = {"uint4": (TensorProto.UINT4, 0, 15)}
    inits = {t.name: t for t in model.graph.initializer}
    made = {}
    for node in model.graph.node:
        cont = next((p.value for p in node.metadata_props if p.key == CONTAINER_KEY), None)
        if cont not in targets:
            continue
        dtype, lo, hi = targets[cont]
        for i in ((0, 2) if node.op_type == "DequantizeLinear" else (2,)):
            name = node.input[i]
            if name not in inits:
                if i == 0:      # the output of a QuantizeLinear (already declared 4-bit)
                    continue
                raise RuntimeError(f"{node.op_type} {node.name}: input {name!r} is not an initializer")
            if inits[name].data_type == dtype:
                continue
            if (name, dtype) not in made:
                arr = numpy_helper.to_array(inits[name]).astype(np.int64)
                if arr.size and (arr.min() < lo or arr.max() > hi):
                    raise RuntimeError(f"initializer {name!r} has codes outside the {cont} range")
                new = helper.make_tensor(f"{name}.{cont}", dtype, arr.shape, arr.ravel().tolist())
                model.graph.initializer.append(new)
                made[(name, dtype)] = new.name
            node.input[i] = made[(name, dtype)]
    # torch's inferred value types say uint8/int8 for these tensors: drop them, the checker infers anew
    del model.graph.value_info[:]


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _strip_stack_traces(model) -> None:
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


# --------------------------------------------------------------------------- export
def export_onnx(qmodel: nn.Module, example_input: torch.Tensor, path, *, opset: int = DEFAULT_OPSET,
                int4: bool = True, form: str = "qdq") -> OnnxExport:
    """Write ``qmodel`` (quantized by :func:`aciq.quant.quantize`) to ``path`` as a QDQ ONNX model.

    Parameters
    ----------
    qmodel : torch.nn.Module
        A model returned by ``quantize`` (``backend="fake"`` or ``"kernels"``), on any device.
    example_input : torch.Tensor
        One batch of inputs ``(N, ...)``: the trace runs on it (the batch dimension stays dynamic).
    path : str or path
        The ``.onnx`` file to write (weights inside the file).
    opset : int
        ONNX opset, >= 18; 4-bit containers need >= 21.
    int4 : bool
        Store weights of at most 4 bits as ``UINT4`` (needs ``opset >= 21``); False keeps them in ``UINT8``.
        Activations are always ``UINT8`` with their 4-bit range kept by a ``Min`` clamp (the module docstring
        of :mod:`aciq.quant.qdq` says why).
    form : {"qdq", "integer"}
        ``"qdq"``: the standard form, ``DequantizeLinear`` with the real scales before every conv/linear (what
        runtimes and compilers fuse into integer kernels). ``"integer"``: where a layer runs on aciq's float32
        integer path (per-tensor inputs, depthwise per-channel inputs), its ``DequantizeLinear`` nodes have
        scale 1, so the conv sums integer-valued tensors (exact in float32), and one ``Mul`` by the per-channel
        output scale and one ``Add`` of the bias follow: ONNX Runtime then computes what aciq computes, bit
        for bit up to the float operations between layers. Other layers keep the QDQ form; ``modules`` says
        which form each layer has.

    Returns
    -------
    OnnxExport
        The path, the opset and, per quantized module, its bits and containers.

    Examples
    --------
    >>> import tempfile, torch
    >>> from aciq.quant import quantize, preset
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
    ...                           torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    >>> qnet = quantize(net, preset("w4a4-pt-aciq"), [torch.randn(4, 3, 8, 8)])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     info = export_onnx(qnet, torch.randn(2, 3, 8, 8), f"{d}/net.onnx")
    >>> info.containers()        # 4-bit weights; activations and the 8-bit first/last layers in uint8
    ['uint4', 'uint8']
    """
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("export_onnx needs the export extra: pip install 'aciq[export]' "
                          "(onnx, onnxruntime, onnxscript)") from exc
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if int4 and opset < DEFAULT_OPSET:
        raise ValueError(f"int4=True needs opset >= {DEFAULT_OPSET} (UINT4 Q/DQ), got opset={opset}; "
                         "pass int4=False for 8-bit containers")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    path = _check_path(path)
    if not isinstance(qmodel, nn.Module):
        raise ValueError(f"qmodel must be a torch.nn.Module, got {type(qmodel).__name__}")
    found = _quantized_modules(qmodel)
    if not found:
        raise ValueError("qmodel was not quantized by aciq (it has no QuantizedLayer, KernelLayer or "
                         "QuantizedOutput); quantize it first with aciq.quant.quantize(model, config, data)")
    x = _example(example_input)
    memo, modules = {}, {}
    for name, m in found.items():
        q = getattr(m, "quant", None)
        if isinstance(q, LayerQuant):
            _check_bias_form(name, q)
        twin = EXPORTERS[type(m)](m, int4=int4, opset=opset, form=form)
        if isinstance(q, LayerQuant):
            _check_weight(name, twin, q)
        memo[id(m)] = twin
        modules[name] = twin.describe()
    twin_model = copy.deepcopy(qmodel, memo).cpu().eval()
    dims = ({0: torch.export.Dim("batch")},)
    log = io.StringIO()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(log):
            program = torch.onnx.export(twin_model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=dims,
                                        input_names=["input"], output_names=["output"], verbose=False)
    except Exception as exc:
        raise ValueError(f"torch.onnx.export could not export the model's float graph "
                         f"({type(exc).__name__}: {str(exc)[:2000]})") from exc
    model = program.model_proto
    _narrow_4bit(model)
    _drop_unused_initializers(model)
    _strip_stack_traces(model)
    model.ir_version = max(model.ir_version, 10)   # INT4/UINT4 need IR 10
    model.producer_name = "aciq"
    onnx.checker.check_model(model, full_check=True)
    try:
        onnx.save_model(model, os.fspath(path))
    except OSError as exc:
        raise ValueError(f"path {path} cannot be written: {exc}") from exc
    return OnnxExport(path=path, opset=opset, int4=int4, modules=modules)
