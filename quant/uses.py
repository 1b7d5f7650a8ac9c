"""Every use of every tensor in one forward pass: module calls *and* functional ops.

:func:`aciq.quant.trace.trace` links modules by tensor identity but cannot see functional ops: in
``x = block(inputs); return x + inputs`` it records that ``block`` consumed ``inputs`` and nothing else. A
rewrite that is exact only when a tensor has a single consumer (cross-layer equalization) must see the ``+``
too. :func:`record_uses` runs :func:`~aciq.quant.trace.trace` under a :class:`torch.overrides.TorchFunctionMode`
that logs, for every torch function call (``F.conv2d``, ``torch.add``, ``Tensor.__add__``, ``F.pad`` ...), the
``(id, version)`` keys of its tensor arguments and the names of the modules executing at that moment. Reads of
metadata (``x.shape``, ``x.size()``, ``x.dim()``) are not uses; any other call is, including ``x.item()``.

What it cannot see: a tensor handed to code that bypasses ``__torch_function__`` (a C extension) or stored
on the side for a later forward. Callers that rewrite a model check its output afterwards.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .trace import Trace, trace

__all__ = ["Use", "Uses", "record_uses"]

# calls that read metadata only (when they do not return a tensor: `x.data` is a `__get__` that does)
_METADATA = frozenset({"size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous",
                       "is_floating_point", "is_complex", "element_size", "storage_offset", "data_ptr",
                       "get_device", "__len__", "__get__", "__hash__", "__repr__", "__format__", "type"})


@dataclass(frozen=True)
class Use:
    """One torch function call that received a tensor: ``op`` (its name) and ``modules``, the names of the
    modules executing when it ran, outermost first (``""`` is the root model)."""

    op: str
    modules: tuple

    def where(self) -> str:
        inner = self.modules[-1] if self.modules else ""
        return f"{self.op} in {inner or 'the model forward'}"


@dataclass
class Uses:
    """The module trace of one forward, every functional use of each tensor key, and the model outputs."""

    trace: Trace
    uses: dict = field(default_factory=dict)        # (id, version) -> list of Use
    outputs: frozenset = frozenset()                # keys of the tensors the model returned

    def of(self, key) -> list:
        return self.uses.get(key, [])


def _tensors(obj, out: list) -> list:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


def _key(t: torch.Tensor) -> tuple:
    return (id(t), t._version)


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.uses = defaultdict(list)
        self.keep: list = []          # every tensor seen stays alive, so that no id() is reused in the pass

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _tensors((args, kwargs), [])
        keys = [_key(t) for t in inputs]           # before the call: an in-place op bumps the version
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", repr(func))
        if not (name in _METADATA and not _tensors(result, [])):
            use = Use(name, tuple(self.stack))
            for k in dict.fromkeys(keys):
                self.uses[k].append(use)
        self.keep.extend(inputs)
        self.keep.extend(_tensors(result, []))
        return result


@torch.no_grad()
def record_uses(model: nn.Module, example: torch.Tensor) -> Uses:
    """Run ``model(example)`` once (through :func:`~aciq.quant.trace.trace`) and record every use of every
    tensor; see the module docstring."""
    recorder = _Recorder()
    handles = []

    def enter(name):
        def fn(module, args):
            recorder.stack.append(name)
        return fn

    def leave(name):
        def fn(module, args, output):
            if recorder.stack and recorder.stack[-1] == name:
                recorder.stack.pop()
        return fn

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave(name), always_call=True))
    outputs = []      # the model's return value: a use that the function mode cannot see
    handles.append(model.register_forward_hook(lambda m, a, out: outputs.extend(_key(t) for t in _tensors(out, []))))
    try:
        with recorder:
            tr = trace(model, example)
    finally:
        for h in handles:
            h.remove()
    return Uses(trace=tr, uses=dict(recorder.uses), outputs=frozenset(outputs))
