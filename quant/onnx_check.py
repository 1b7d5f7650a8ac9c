"""Run an exported file in ONNX Runtime (CPU) and compare it with aciq's own quantized model.

``compare_onnx(qmodel, path, inputs)`` scores the file against ``qmodel`` (the fake-quantized torch model it
was exported from) on the same inputs: top-1 agreement, the number of inputs whose top-1 differs, the largest
and the mean absolute logit difference.

Why they can differ at all: both compute the same grids, but the float convolutions sum in different orders
(and ONNX Runtime may fuse ``DequantizeLinear -> Conv -> QuantizeLinear`` into an integer ``QLinearConv`` that
requantizes with its own rounding), so a value within a rounding error of a quantization boundary can land on
the other code; at 4 bits one code is a large step. ``optimization`` picks ONNX Runtime's graph optimization
level: ``"all"`` (its default: QDQ fusions on), ``"basic"`` (constant folding and redundant-node removal
only: every Q/DQ runs as written) or ``"disabled"``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["OnnxAgreement", "ort_session", "ort_run", "compare_onnx", "OPTIMIZATIONS"]

OPTIMIZATIONS = ("all", "basic", "disabled")


@dataclass(frozen=True)
class OnnxAgreement:
    """ONNX Runtime vs aciq on ``n`` inputs (agreement in %, logit differences in logit units)."""

    n: int
    agreement: float
    disagreements: int
    max_logit_diff: float
    mean_abs_logit_diff: float
    optimization: str

    def to_dict(self) -> dict:
        return asdict(self)


def ort_session(path, *, optimization: str = "all", threads: int | None = 1):
    """An ``onnxruntime.InferenceSession`` on the CPU for ``path``.

    ``threads``: intra-op threads (None: ONNX Runtime's choice).
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError("needs the export extra: pip install 'aciq[export]'") from exc
    if optimization not in OPTIMIZATIONS:
        raise ValueError(f"optimization must be one of {OPTIMIZATIONS}, got {optimization!r}")
    if not os.path.isfile(os.fspath(path)):
        raise ValueError(f"ONNX file {path} does not exist")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_run(session, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """The session's first output on ``x`` (float32 CPU tensor), in batches."""
    name = session.get_inputs()[0].name
    x = x.detach().float().cpu()
    out = [session.run(None, {name: x[i:i + batch_size].numpy()})[0] for i in range(0, len(x), batch_size)]
    return torch.from_numpy(np.concatenate(out))


@torch.no_grad()
def compare_onnx(qmodel, path, inputs: torch.Tensor, *, batch_size: int = 256, optimization: str = "all",
                 threads: int | None = 1) -> OnnxAgreement:
    """Score the ONNX file at ``path`` against ``qmodel`` on ``inputs`` (one tensor ``(N, ...)``)."""
    if not isinstance(inputs, torch.Tensor) or inputs.ndim < 2 or len(inputs) == 0:
        raise ValueError("inputs must be a non-empty tensor (N, ...)")
    session = ort_session(path, optimization=optimization, threads=threads)
    got = ort_run(session, inputs, batch_size=batch_size)
    device = next((p.device for p in qmodel.parameters()), torch.device("cpu"))
    want = torch.cat([qmodel(inputs[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(inputs), batch_size)])
    if got.shape != want.shape:
        raise ValueError(f"the ONNX model's output has shape {tuple(got.shape)}, aciq's {tuple(want.shape)}")
    diff = (got - want).abs()
    same = got.argmax(1) == want.argmax(1)
    n = len(inputs)
    return OnnxAgreement(n=n, agreement=100.0 * float(same.float().mean()), disagreements=int((~same).sum()),
                         max_logit_diff=float(diff.max()), mean_abs_logit_diff=float(diff.mean()),
                         optimization=optimization)
