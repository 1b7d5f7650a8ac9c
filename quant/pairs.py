r"""Equalization pairs of a folded model, and the exact rewrites of one pair.

A *pair* is a conv (or linear) ``A`` whose output goes, through at most one activation and any number of
``nn.Identity`` modules (folded BatchNorms), into one conv (or linear) ``B`` and nowhere else. Then for any
:math:`s_i > 0` and any :math:`c_i`, with :math:`W_A` row :math:`i` the weights of output channel :math:`i`
and :math:`W_B` column :math:`i` the weights that read input channel :math:`i`:

.. math::

    W_A \leftarrow S^{-1} W_A,\quad b_A \leftarrow S^{-1} b_A,\quad W_B \leftarrow W_B S
    \qquad \text{(scaling, Nagel et al. 2019, eq. 3-5)}

    b_A \leftarrow b_A - c,\quad b_B \leftarrow b_B + W_B c \qquad \text{(bias absorption, sec. 4.2)}

leave the function unchanged when the activation is rewritten with them: ReLU, LeakyReLU and PReLU are
positively homogeneous (:math:`f(y/s) = f(y)/s`) and stay; a ReLU6/Hardtanh becomes a per-channel
:class:`~aciq.quant.clamp.ChannelClamp` with bounds :math:`lo/s, hi/s`; absorption shifts the clamp bounds
by :math:`-c` (a ReLU becomes ``clamp(lo=-c)``), which is exact, unlike DFQ's
:math:`\mathrm{relu}(y - c) + c \approx \mathrm{relu}(y)`. Adding :math:`W_B c` to ``B``'s bias is exact when
``B`` reads no padding value (linear; conv with ``padding=0`` or a non-zero ``padding_mode``, which pads
with values of the shifted tensor): a zero-padded border sees :math:`0` instead of :math:`-c`, so absorption
is skipped for such ``B`` (:attr:`Pair.absorb_exact`).

Groups: channel :math:`i` of ``A``'s output is input channel :math:`i` of ``B``; for a grouped ``B``, its
column :math:`i` is ``W_B[g*O_g:(g+1)*O_g, i - g*I_g]`` with :math:`g = \lfloor i / I_g \rfloor`; for a
depthwise ``B`` that is filter :math:`i`. A chain ``A -> dw -> C`` is two pairs that share ``dw``.

Discovery (:func:`find_pairs`) uses :func:`~aciq.quant.uses.record_uses`: a link is kept only when the
tensor has exactly one module consumer and no functional use outside it (a residual ``x + inputs``, a
``torch.cat``, an SE gate ``sigmoid(s) * x``), and is not a model output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .clamp import ChannelClamp
from .trace import LAYER_TYPES
from .uses import Uses, record_uses

__all__ = ["Pair", "Rejection", "Links", "find_pairs", "out_ranges", "in_ranges", "scale_pair", "shift_pair",
           "HOMOGENEOUS", "CLAMPS"]

HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU)
"""Activations with f(y / s) = f(y) / s for s > 0: they stay as they are when a pair is scaled."""
CLAMPS = (nn.Hardtanh, ChannelClamp)
"""Activations that become (or are) per-channel clamps (``nn.ReLU6`` is an ``nn.Hardtanh``)."""


@dataclass(frozen=True)
class Pair:
    """``first`` -> [``act``, call ``act_call`` of it] -> ``second``, over ``channels`` channels.

    ``act_channels`` is the channel count of every call of ``act`` (one entry per call site, in call order).
    """

    first: str
    second: str
    act: str | None
    act_call: int
    act_channels: tuple
    channels: int
    absorb_exact: bool

    @property
    def name(self) -> str:
        mid = "" if self.act is None else f" -> {self.act}" + (f"[{self.act_call}]" if len(self.act_channels) > 1
                                                               else "")
        return f"{self.first}{mid} -> {self.second}"


@dataclass(frozen=True)
class Rejection:
    """A conv/linear whose output link is not an equalization pair, and why."""

    layer: str
    reason: str


@dataclass(frozen=True)
class Links:
    pairs: tuple
    rejected: tuple


# --------------------------------------------------------------------------- discovery
def _passthrough(call) -> bool:
    """The call returned one of its inputs unmodified (``nn.Identity``, a folded BatchNorm, a no-op padding)."""
    return call.output is not None and call.output in call.inputs


def _consumer(u: Uses, key, producer: str):
    """The one module call that consumes tensor ``key`` (made by ``producer``), or a reason why there is none."""
    calls = u.trace.calls
    found = [j for j, c in enumerate(calls) if key in c.inputs and c.name != producer and not _passthrough(c)]
    # a module's children see its input too (EfficientNet's static padding): keep the outermost consumer
    outer = [j for j in found if not any(calls[j].name.startswith(calls[i].name + ".") for i in found if i != j)]
    if key in u.outputs:
        return None, "its output is a model output"
    if not outer:
        uses = u.of(key)
        return None, ("its output goes only into functional ops: " + ", ".join(dict.fromkeys(x.where() for x in uses))
                      if uses else "its output is not used")
    if len(outer) > 1:
        return None, f"its output feeds {len(outer)} modules ({', '.join(calls[j].name for j in outer)})"
    j = outer[0]
    c = calls[j]
    others = [x for x in u.of(key) if c.name not in x.modules]
    if others:
        return None, f"its output goes into {c.name} and also into {others[0].where()} (e.g. a residual sum)"
    return j, None


def _kind(module: nn.Module) -> str:
    return "linear" if isinstance(module, nn.Linear) else "conv"


def _in_channels(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _absorb_exact(module: nn.Module, children_pass: bool) -> bool:
    """Whether ``B(x - c) + W_B c == B(x)`` for a per-channel constant ``c``: no zero padding reaches ``B``.
    ``children_pass``: every submodule call of ``B`` returned its input (no static ``ZeroPad2d``)."""
    if isinstance(module, nn.Linear):
        return True
    if not children_pass:
        return False
    pad = module.padding
    if module.padding_mode != "zeros" or pad == "valid":
        return True
    if pad == "same":
        return all(k == 1 for k in module.kernel_size)
    return all(p == 0 for p in pad)


def find_pairs(model: nn.Module, example: torch.Tensor) -> Links:
    """Every equalization pair of ``model`` (folded, eval mode), found in one forward on ``example``; every
    other conv/linear in :attr:`Links.rejected` with the reason its output link does not qualify."""
    u = record_uses(model, example)
    calls = u.trace.calls
    names = dict(model.named_modules())
    count = {}
    for c in calls:
        count[c.name] = count.get(c.name, 0) + 1
    pairs, rejected, seen = [], [], set()

    def channels_of(call):
        return call.input_shape[1] if call.input_shape and len(call.input_shape) > 1 else None

    for i, call in enumerate(calls):
        a = call.name
        if not isinstance(call.module, LAYER_TYPES) or a in seen:
            continue
        seen.add(a)

        def reject(reason):
            rejected.append(Rejection(a, reason))

        if count[a] > 1:
            reject(f"it is called {count[a]} times (its weights serve several tensors)")
            continue
        j, why = _consumer(u, call.output, a)
        if j is None:
            reject(why)
            continue
        act, act_call, act_channels = None, 0, ()
        nxt = calls[j]
        if isinstance(nxt.module, (*HOMOGENEOUS, *CLAMPS)):
            act = nxt.name
            act_call = sum(c.name == act for c in calls[:j])
            act_channels = tuple(channels_of(c) for c in calls if c.name == act)
            if isinstance(nxt.module, ChannelClamp) and len(act_channels) != nxt.module.sites:
                reject(f"{act} is a ChannelClamp with {nxt.module.sites} sites but the forward calls it "
                       f"{len(act_channels)} times")
                continue
            if isinstance(nxt.module, nn.PReLU) and nxt.module.num_parameters > 1 and count[act] > 1:
                reject(f"{act} is a per-channel PReLU called {count[act]} times")
                continue
            if isinstance(nxt.module, nn.Hardtanh) and not nxt.module.min_val <= nxt.module.max_val:
                reject(f"{act} has min_val > max_val")
                continue
            j, why = _consumer(u, nxt.output, act)
            if j is None:
                reject(f"after {act}, {why}")
                continue
            nxt = calls[j]
        b, mod_b, mod_a = nxt.name, nxt.module, call.module
        if not isinstance(mod_b, LAYER_TYPES):
            reject(f"its output goes into {type(mod_b).__name__} {b}" + (f" after {act}" if act else "")
                   + " (not a ReLU/ReLU6/Hardtanh/LeakyReLU/PReLU, a conv or a linear)")
            continue
        if count[b] > 1:
            reject(f"its consumer {b} is called {count[b]} times")
            continue
        if _kind(mod_a) != _kind(mod_b):
            reject(f"{a} ({_kind(mod_a)}) and {b} ({_kind(mod_b)}) keep channels on different axes")
            continue
        shape = nxt.input_shape or ()
        want_ndim = 2 if isinstance(mod_b, nn.Linear) else 4
        if len(shape) != want_ndim:
            reject(f"{b} receives a {len(shape)}-D input (channels are axis 1 only for {want_ndim}-D inputs)")
            continue
        children_pass = all(_passthrough(c) for c in calls if c.name.startswith(b + "."))
        n = _out_channels(mod_a)
        if _in_channels(mod_b) != n or shape[1] != n:
            reject(f"{a} has {n} output channels, {b} reads {shape[1]}")
            continue
        if act is not None and isinstance(names[act], nn.PReLU) and names[act].num_parameters not in (1, n):
            reject(f"{act} has {names[act].num_parameters} parameters for {n} channels")
            continue
        pairs.append(Pair(first=a, second=b, act=act, act_call=act_call, act_channels=act_channels, channels=n,
                          absorb_exact=_absorb_exact(mod_b, children_pass)))
    return Links(pairs=tuple(pairs), rejected=tuple(rejected))


# --------------------------------------------------------------------------- ranges
def _columns(layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """``(in_channels, rest)``: row ``i`` holds every weight of ``layer`` that reads input channel ``i``."""
    if isinstance(layer, nn.Linear):
        return w.t()
    g = layer.groups
    o, ig = w.shape[0], w.shape[1]
    # (g, O_g, I_g, kh, kw) -> (g, I_g, O_g, kh, kw) -> (g * I_g, O_g * kh * kw)
    return w.reshape(g, o // g, ig, -1).transpose(1, 2).reshape(g * ig, -1)


def out_ranges(model: nn.Module, pair: Pair) -> np.ndarray:
    """:math:`r^{(1)}_i = \\max |W_A[i]|`: the range of every output row of ``pair.first``."""
    w = model.get_submodule(pair.first).weight.detach()
    return w.reshape(w.shape[0], -1).abs().amax(1).double().cpu().numpy()


def in_ranges(model: nn.Module, pair: Pair) -> np.ndarray:
    """:math:`r^{(2)}_i = \\max |W_B[:, i]|`: the range of every input column of ``pair.second``."""
    layer = model.get_submodule(pair.second)
    return _columns(layer, layer.weight.detach()).abs().amax(1).double().cpu().numpy()


# --------------------------------------------------------------------------- rewrites
def _vector(values, pair: Pair, what: str, device) -> torch.Tensor:
    v = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
    if v.shape != (pair.channels,) or not torch.isfinite(v).all():
        raise ValueError(f"{what} for pair {pair.name} must be {pair.channels} finite values, got shape "
                         f"{tuple(v.shape)}")
    return v


@torch.no_grad()
def _scale_columns(layer: nn.Module, s: torch.Tensor) -> None:
    w = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        w = w * s[None, :]
    else:
        g = layer.groups
        o, ig = w.shape[0], w.shape[1]
        w = (w.reshape(g, o // g, ig, -1) * s.reshape(g, 1, ig, 1)).reshape(w.shape)
    layer.weight.copy_(w.to(layer.weight.dtype))


def _clamp_of(model: nn.Module, pair: Pair) -> ChannelClamp:
    act = model.get_submodule(pair.act)
    if not isinstance(act, ChannelClamp):
        raise ValueError(f"pair {pair.name}: {pair.act} is a {type(act).__name__}; replace it with a ChannelClamp "
                         "first (ChannelClamp.like)")
    return act


@torch.no_grad()
def scale_pair(model: nn.Module, pair: Pair, s) -> None:
    """Divide output channel ``i`` of ``pair.first`` (weights, bias, activation bounds) by ``s[i] > 0`` and
    multiply input column ``i`` of ``pair.second`` by it: the model computes the same function.

    A ReLU6/Hardtanh activation must already be a :class:`~aciq.quant.clamp.ChannelClamp`.
    """
    a, b = model.get_submodule(pair.first), model.get_submodule(pair.second)
    s = _vector(s, pair, "scales", a.weight.device)
    if not bool((s > 0).all()):
        raise ValueError(f"scales for pair {pair.name} must be > 0, got min {float(s.min()):.3g}")
    if pair.act is not None and not isinstance(model.get_submodule(pair.act), HOMOGENEOUS):
        lo, hi = _clamp_of(model, pair).bounds(pair.act_call)
        lo.copy_((lo.double() / s.to(lo.device)).to(lo.dtype))
        hi.copy_((hi.double() / s.to(hi.device)).to(hi.dtype))
    shape = [-1] + [1] * (a.weight.ndim - 1)
    a.weight.copy_((a.weight.double() / s.reshape(shape)).to(a.weight.dtype))
    if a.bias is not None:
        a.bias.copy_((a.bias.double() / s).to(a.bias.dtype))
    _scale_columns(b, s)


@torch.no_grad()
def shift_pair(model: nn.Module, pair: Pair, c) -> None:
    """Move ``c[i]`` of channel ``i`` from ``pair.first``'s bias into ``pair.second``'s (bias absorption):
    ``b_A -= c``, clamp bounds ``-= c``, ``b_B += W_B c``. Exact; needs :attr:`Pair.absorb_exact` and, when the
    pair has an activation, a :class:`~aciq.quant.clamp.ChannelClamp` there."""
    if not pair.absorb_exact:
        raise ValueError(f"pair {pair.name}: {pair.second} pads its input with zeros, so adding W_B c to its bias "
                         "is not exact at the borders")
    a, b = model.get_submodule(pair.first), model.get_submodule(pair.second)
    c = _vector(c, pair, "shifts", a.weight.device)
    if pair.act is not None:
        lo, hi = _clamp_of(model, pair).bounds(pair.act_call)
        lo.copy_((lo.double() - c.to(lo.device)).to(lo.dtype))
        hi.copy_((hi.double() - c.to(hi.device)).to(hi.dtype))
    dtype = a.weight.dtype
    if a.bias is None:
        a.bias = nn.Parameter(torch.zeros(pair.channels, dtype=dtype, device=a.weight.device), requires_grad=False)
    a.bias.copy_((a.bias.double() - c).to(dtype))
    # W_B c: every output of B sums its columns' weights times c (no padding: every window is full)
    add = (_columns(b, b.weight.detach().double()).reshape(pair.channels, -1) * c[:, None])
    if isinstance(b, nn.Linear):
        shift = add.sum(0)
    else:
        g = b.groups
        o, ig = b.weight.shape[0], b.weight.shape[1]
        # back to (g, I_g, O_g, k) and sum over inputs and kernel positions
        shift = add.reshape(g, ig, o // g, -1).sum((1, 3)).reshape(o)
    if b.bias is None:
        b.bias = nn.Parameter(torch.zeros(b.weight.shape[0], dtype=dtype, device=b.weight.device),
                              requires_grad=False)
    b.bias.copy_((b.bias.double() + shift).to(dtype))
