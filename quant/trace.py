"""One forward pass with hooks on every leaf module: execution order and which module feeds which.

No tracing compiler: a module *consumes* another's output when it receives the very tensor object that the
other returned, *unmodified* (in-place ReLUs return their input, so a conv feeding ``ReLU(inplace=True)``
is seen too). A tensor is identified by its ``id`` and its in-place version counter (``Tensor._version``):
in torchvision's ResNet blocks ``out += identity`` modifies the conv/BN output in place before the ReLU
receives the same object, and that ReLU must not count as consuming the conv's output (it consumes the
residual sum). Functional ops (``F.relu``, ``x + y``) are invisible: a tensor that goes through one reaches
its next module as a new object (or a new version), so no link is recorded and nothing is assumed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Call", "Trace", "trace", "LAYER_TYPES", "POOL_TYPES", "RELU_TYPES"]

LAYER_TYPES = (nn.Conv2d, nn.Linear)
POOL_TYPES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
RELU_TYPES = (nn.ReLU, nn.ReLU6)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Call:
    """One module call: tensors are ``(id, version)`` pairs (inputs as received, the output as returned)."""

    name: str
    module: nn.Module
    inputs: tuple
    output: tuple | None
    input_shape: tuple | None


@dataclass
class Trace:
    calls: list = field(default_factory=list)
    output: object = None        # what the traced forward returned

    def consumers(self, name: str) -> list[str]:
        """Names of the modules that received the output of (each call of) ``name``."""
        outs = {c.output for c in self.calls if c.name == name and c.output is not None}
        return [c.name for c in self.calls if c.name != name and outs.intersection(c.inputs)]

    def producers(self, name: str) -> list[str]:
        ins = set()
        for c in self.calls:
            if c.name == name:
                ins.update(c.inputs)
        return [c.name for c in self.calls if c.name != name and c.output in ins]

    def count(self, name: str) -> int:
        return sum(c.name == name for c in self.calls)

    def order(self, types) -> list[str]:
        """Names of modules of ``types`` in first-call order."""
        seen, out = set(), []
        for c in self.calls:
            if isinstance(c.module, types) and c.name not in seen:
                seen.add(c.name)
                out.append(c.name)
        return out


def _leaf(module: nn.Module) -> bool:
    return isinstance(module, LAYER_TYPES + POOL_TYPES + RELU_TYPES + BN_TYPES) or not any(module.children())


@torch.no_grad()
def trace(model: nn.Module, example: torch.Tensor) -> Trace:
    """Run ``model(example)`` once and record every leaf module call (conv/linear/BN/ReLU/pool are leaves)."""
    result = Trace()
    keep = []  # hold every tensor so that no id() is reused during the pass
    handles = []
    pending = {}  # module name -> stack of input keys seen by the pre-hook (before an in-place forward)

    def key(t: torch.Tensor) -> tuple:
        return (id(t), t._version)

    def pre_hook(name):
        def fn(module, inputs):
            tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
            keep.extend(tensors)
            pending.setdefault(name, []).append(tuple(key(t) for t in tensors))
        return fn

    def hook(name):
        def fn(module, inputs, output):
            ins = pending[name].pop()
            out = key(output) if isinstance(output, torch.Tensor) else None
            if out is not None:
                keep.append(output)
            shape = tuple(inputs[0].shape) if inputs and isinstance(inputs[0], torch.Tensor) else None
            result.calls.append(Call(name, module, ins, out, shape))
        return fn

    for name, module in model.named_modules():
        if name and _leaf(module):
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(hook(name)))
    try:
        result.output = model(example)
    finally:
        for h in handles:
            h.remove()
    return result
