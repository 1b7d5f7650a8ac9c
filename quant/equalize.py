r"""Cross-layer equalization and bias absorption (Nagel, van Baalen, Blankevoort & Welling, *Data-Free
Quantization Through Weight Equalization and Bias Correction*, ICCV 2019), exact in float.

``report = equalize(model, example)`` rescales every pair of consecutive layers
(:func:`aciq.quant.pairs.find_pairs`: conv/linear -> [ReLU, ReLU6, Hardtanh, LeakyReLU, PReLU] -> conv/linear,
depthwise and grouped included, each link with a single consumer) in place, so that the model computes the
same function with per-channel ranges balanced by a *rule*:

* ``"weights"`` (DFQ, eq. 7): with :math:`r^{(1)}_i = \max|W_A[i]|` (output row) and
  :math:`r^{(2)}_i = \max|W_B[:, i]|` (input column),

  .. math::

      s_i = \frac{1}{r^{(2)}_i}\sqrt{r^{(1)}_i r^{(2)}_i} = \sqrt{r^{(1)}_i / r^{(2)}_i}

  makes both ranges :math:`\sqrt{r^{(1)}_i r^{(2)}_i}`. Pairs share layers (``A -> dw -> C``), so the pairs
  are swept in order until no scale moves more than ``tol`` (in :math:`|\log s|`) or ``iterations`` sweeps.
* ``"activations"``: with per-channel ranges :math:`[m_i, M_i]` of the tensor between ``A`` and ``B``
  (calibration statistics, ``act_ranges``) and :math:`e_i = \max(|m_i|, |M_i|)`,
  :math:`s_i = e_i / \bar e` with :math:`\bar e` the geometric mean of the :math:`e_i`: every channel then
  spans :math:`\bar e`, so one per-tensor grid fits all of them (the range moves into ``B``'s columns).

A rule is any callable ``rule(state: PairState) -> scales`` (positive, one per channel); the mechanics that
apply scales exactly (:func:`aciq.quant.pairs.scale_pair`) do not depend on it, so rules can be blended, e.g.
``lambda st: np.sqrt(balance_weights(st) * balance_activations(st))``.

Bias absorption (``absorb_bias=True``, DFQ sec. 4.2) then moves :math:`c_i = \max(0, m_i)` (the current
per-channel minimum of the tensor ``B`` reads) out of ``A``'s bias into ``B``'s: the tensor ``B`` reads then
starts at 0 on the calibration data. It is exact (the activation becomes a clamp with bounds shifted by
:math:`-c`) where ``B`` reads no zero padding; other pairs are skipped, and say so in the report.

The model must be folded (:func:`aciq.quant.fold_batchnorm`) and in eval mode. Only tensors with a single
consumer are rescaled: residual sums, concatenations and SE gates end a chain (the report names them).
The equalized model is checked against the original on ``example``; a mismatch restores the model and
raises.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .clamp import ChannelClamp, reset_calls_before_forward
from .fold import _close, set_module
from .observe import Observer, Statistics
from .pairs import CLAMPS, Pair, find_pairs, in_ranges, out_ranges, scale_pair, shift_pair

__all__ = ["equalize", "EqualizationReport", "PairResult", "PairState", "balance_weights", "balance_activations",
           "RULES", "input_ranges"]


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class PairState:
    """What a rule sees of one pair, in the model's current state.

    ``weight_out`` is :math:`\\max|W_A[i]|` per output row of ``A``, ``weight_in`` :math:`\\max|W_B[:, i]|` per
    input column of ``B``; ``act_min``/``act_max`` the per-channel range of the tensor between them (``None``
    when no ``act_ranges`` were given for this pair), in current units (earlier scalings applied).
    """

    pair: Pair
    weight_out: np.ndarray
    weight_in: np.ndarray
    act_min: np.ndarray | None
    act_max: np.ndarray | None


def balance_weights(state: PairState) -> np.ndarray:
    r"""DFQ's scales :math:`s_i = \sqrt{r^{(1)}_i / r^{(2)}_i}` (1 where either range is 0).

    Examples
    --------
    >>> import numpy as np
    >>> st = PairState(None, np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0]), None, None)
    >>> balance_weights(st).tolist()
    [2.0, 0.5, 1.0]
    """
    r1, r2 = state.weight_out, state.weight_in
    ok = (r1 > 0) & (r2 > 0)
    return np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)


def balance_activations(state: PairState) -> np.ndarray:
    r"""Scales :math:`s_i = e_i / \bar e` that give every activation channel the same extent
    :math:`\bar e` (geometric mean of the non-zero :math:`e_i = \max(|m_i|, |M_i|)`; 1 for dead channels).

    Examples
    --------
    >>> import numpy as np
    >>> st = PairState(None, None, None, np.zeros(3), np.array([4.0, 1.0, 0.0]))
    >>> balance_activations(st).tolist()
    [2.0, 0.5, 1.0]
    """
    if state.act_min is None:
        raise ValueError(f"pair {state.pair.name}: the 'activations' rule needs act_ranges for "
                         f"{state.pair.second}")
    e = np.maximum(np.abs(state.act_min), np.abs(state.act_max))
    live = e > 0
    if not live.any():
        return np.ones_like(e)
    mean = np.exp(np.log(e[live]).mean())
    return np.where(live, e / mean, 1.0)


RULES = {"weights": balance_weights, "activations": balance_activations}


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class PairResult:
    """One equalized pair: the product of the scales applied (min, max over channels), the largest shift
    absorbed (``None`` when none was) and why absorption was skipped (``absorb_note``)."""

    pair: Pair
    scale_min: float
    scale_max: float
    absorbed_max: float | None = None
    absorb_note: str | None = None

    def to_dict(self) -> dict:
        return {"pair": self.pair.name, "first": self.pair.first, "activation": self.pair.act,
                "activation_call": self.pair.act_call, "second": self.pair.second, "channels": self.pair.channels,
                "scale_min": self.scale_min, "scale_max": self.scale_max, "absorbed_max": self.absorbed_max,
                "absorb_note": self.absorb_note}


@dataclass(frozen=True)
class EqualizationReport:
    """What :func:`equalize` did: the pairs and their scales, every other conv/linear with the reason it
    starts no pair (:class:`aciq.quant.pairs.Rejection`), the activations replaced by
    :class:`~aciq.quant.clamp.ChannelClamp`, sweeps run, and the largest output change on ``example``
    relative to the output's largest magnitude."""

    rule: str
    pairs: tuple
    rejected: tuple
    clamps: tuple
    sweeps: int
    converged: bool
    output_error: float

    def summary(self) -> str:
        lines = [f"equalization ({self.rule}): {len(self.pairs)} pairs, {self.sweeps} sweeps"
                 f"{'' if self.converged else ' (not converged)'}, output change {self.output_error:.2e}"]
        for r in self.pairs:
            absorbed = "" if r.absorbed_max is None else f", absorbed up to {r.absorbed_max:.3g}"
            note = f" ({r.absorb_note})" if r.absorb_note else ""
            lines.append(f"  {r.pair.name}: scales {r.scale_min:.3g}..{r.scale_max:.3g}{absorbed}{note}")
        for x in self.rejected:
            lines.append(f"  not equalized: {x.layer}: {x.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "sweeps": self.sweeps, "converged": self.converged,
                "output_error": self.output_error, "clamps": list(self.clamps),
                "pairs": [r.to_dict() for r in self.pairs],
                "rejected": [{"layer": x.layer, "reason": x.reason} for x in self.rejected]}


# --------------------------------------------------------------------------- ranges from data
@torch.no_grad()
def input_ranges(model: nn.Module, calibration_data, layers) -> dict:
    """Per-channel ``(min, max)`` of the input of each of ``layers`` over ``calibration_data`` (a tensor or a
    list of batches): the ``act_ranges`` of :func:`equalize` (``[p.second for p in find_pairs(...).pairs]``).
    """
    from .api import as_batches

    batches = as_batches(calibration_data)
    observers, handles = {}, []
    for name in layers:
        module = model.get_submodule(name)
        obs = observers[name] = Observer(f"{name}:input", hist_bins=None)
        handles.append(module.register_forward_pre_hook(lambda m, args, o=obs: o.record(args[0])))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for x in batches:
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    return {name: (o.stats.min.copy(), o.stats.max.copy()) for name, o in observers.items() if o.stats is not None}


def _act_ranges(act_ranges, pairs, names) -> dict:
    """``{second: (min, max)}`` float64 arrays, validated, from a mapping or a :class:`Statistics`."""
    if act_ranges is None:
        return {}
    if isinstance(act_ranges, Statistics):
        act_ranges = {p.second: (s.min, s.max) for p in pairs
                      if (s := act_ranges.sites.get(f"{p.second}:input")) is not None}
    if not isinstance(act_ranges, Mapping):
        raise ValueError("act_ranges must map a layer name to per-channel (min, max) arrays, or be a Statistics, "
                         f"got {type(act_ranges).__name__}")
    for key in act_ranges:
        if key not in names:
            raise ValueError(f"act_ranges: the model has no module named {key!r}")
    channels = {p.second: p.channels for p in pairs}
    out = {}
    for key, value in act_ranges.items():
        if key not in channels:
            continue      # not the second layer of a pair: nothing to equalize there
        try:
            lo, hi = (np.asarray(v, dtype=np.float64) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"act_ranges[{key!r}] must be a (min, max) pair of arrays") from None
        n = channels[key]
        if lo.shape != (n,) or hi.shape != (n,):
            raise ValueError(f"act_ranges[{key!r}]: expected ({n},) arrays (the channels {key} reads), "
                             f"got {lo.shape} and {hi.shape}")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()) or (lo > hi).any():
            raise ValueError(f"act_ranges[{key!r}]: need finite min <= max per channel")
        out[key] = [lo.copy(), hi.copy()]
    return out


# --------------------------------------------------------------------------- undo
class _Saved:
    """The state of every module a run touches, to restore it if the check fails."""

    def __init__(self, model: nn.Module, pairs):
        self.model = model
        self.layers = {}
        for p in pairs:
            for name in (p.first, p.second):
                m = model.get_submodule(name)
                self.layers[name] = (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
        self.acts = {p.act: model.get_submodule(p.act) for p in pairs if p.act is not None}
        self.clamp_bounds = {name: {k: v.clone() for k, v in m.named_buffers()} for name, m in self.acts.items()
                             if isinstance(m, ChannelClamp)}
        self.handles = []

    @torch.no_grad()
    def restore(self) -> None:
        for name, (w, b) in self.layers.items():
            m = self.model.get_submodule(name)
            m.weight.copy_(w)
            if b is None:
                m.bias = None
            else:
                m.bias.copy_(b)
        for name, m in self.acts.items():
            set_module(self.model, name, m)
            for k, v in self.clamp_bounds.get(name, {}).items():
                getattr(m, k).copy_(v)
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- equalize
def _rule(rule):
    if callable(rule):
        return getattr(rule, "__name__", "custom"), rule
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)} or a callable(PairState) -> scales, got {rule!r}")
    return rule, RULES[rule]


def _install_clamps(model: nn.Module, pairs, absorb: set, saved: _Saved) -> tuple:
    """Replace the activations that must become per-channel clamps; returns their names."""
    need = {}
    for p in pairs:
        if p.act is None:
            continue
        act = model.get_submodule(p.act)
        if isinstance(act, CLAMPS) or (p in absorb and isinstance(act, nn.ReLU)):
            need[p.act] = p
    for name, p in need.items():
        act = model.get_submodule(name)
        if isinstance(act, ChannelClamp):
            continue
        weight = model.get_submodule(p.first).weight
        clamp = ChannelClamp.like(act, p.act_channels, dtype=weight.dtype).to(weight.device)
        set_module(model, name, clamp)
        if clamp.sites > 1:
            saved.handles.append(reset_calls_before_forward(model, clamp))
    return tuple(need)


@torch.no_grad()
def equalize(model: nn.Module, example: torch.Tensor, *, rule="weights", iterations: int = 100,
             tol: float = 1e-4, act_ranges=None, absorb_bias: bool = False,
             rtol: float = 1e-4) -> EqualizationReport:
    r"""Cross-layer equalization (and optionally bias absorption) of a folded eval model, in place.

    Parameters
    ----------
    model : torch.nn.Module
        Folded (:func:`aciq.quant.fold_batchnorm`: a BatchNorm between two layers ends the chain) and in eval
        mode. Activations that need per-channel bounds (ReLU6, Hardtanh; a ReLU whose pair absorbs a bias) are
        replaced by :class:`aciq.quant.clamp.ChannelClamp` (one site per call of a shared module).
    example : torch.Tensor
        One input batch: the trace runs on its first item, the check on all of it.
    rule : {"weights", "activations"} or callable
        How scales are chosen (module docstring); a callable gets a :class:`PairState`, returns the scales.
    iterations, tol : int, float
        At most ``iterations`` sweeps over the pairs, stopping once every scale of a sweep is within
        ``exp(±tol)`` of 1.
    act_ranges : mapping or Statistics, optional
        Per-channel ``(min, max)`` of the tensor each pair's second layer reads, keyed by that layer's name
        (:func:`input_ranges` collects them), or :class:`aciq.quant.Statistics` (its ``"<layer>:input"`` sites).
        Needed by ``rule="activations"`` and by ``absorb_bias``.
    absorb_bias : bool
        Move :math:`c_i = \max(0, \min_i)` into the next layer's bias where that is exact.
    rtol : float
        Largest allowed change of the output on ``example`` (relative to its largest magnitude).

    Returns
    -------
    EqualizationReport
        A model with no pair is left unchanged: ``report.pairs == ()`` and ``report.rejected`` says why for
        every conv/linear.

    Raises
    ------
    ValueError
        Bad arguments (the message names them), a model in training mode, or an output change above ``rtol``
        (the model is restored first).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Conv2d(8, 4, 1)).eval()
    >>> x = torch.randn(2, 3, 5, 5)
    >>> ref = net(x)
    >>> report = equalize(net, x)
    >>> [r.pair.name for r in report.pairs], type(net[1]).__name__
    (['0 -> 1 -> 2'], 'ChannelClamp')
    >>> bool(torch.allclose(net(x), ref, atol=1e-5))
    True
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model must be in eval mode (model.eval()); fold BatchNorm first (fold_batchnorm)")
    if not isinstance(example, torch.Tensor) or not torch.is_floating_point(example) or example.ndim < 2 \
            or example.shape[0] == 0:
        raise ValueError("example must be a float tensor batch (N >= 1, ...)")
    rule_name, rule_fn = _rule(rule)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if (rule_name == "activations" or absorb_bias) and act_ranges is None:
        raise ValueError(f"{'rule=activations' if rule_name == 'activations' else 'absorb_bias'} needs act_ranges "
                         "(per-channel (min, max) of each pair's second-layer input; see input_ranges)")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = example.to(device)
    ref = model(example)
    links = find_pairs(model, example[:1])
    pairs = links.pairs
    ranges = _act_ranges(act_ranges, pairs, dict(model.named_modules()))

    notes, absorb = {}, set()
    if absorb_bias:
        for p in pairs:
            act = None if p.act is None else model.get_submodule(p.act)
            if p.second not in ranges:
                notes[p] = "no act_ranges for its second layer"
            elif not p.absorb_exact:
                notes[p] = f"{p.second} pads its input with zeros: absorbing would not be exact at the borders"
            elif act is not None and not isinstance(act, (nn.ReLU, *CLAMPS)):
                notes[p] = f"{type(act).__name__} cannot absorb a shift exactly"
            else:
                absorb.add(p)

    saved = _Saved(model, pairs)
    try:
        clamps = _install_clamps(model, pairs, absorb, saved)
        total = {p: np.ones(p.channels) for p in pairs}
        sweeps, converged = 0, not pairs
        for sweeps in range(1, iterations + 1 if pairs else 1):
            moved = 0.0
            for p in pairs:
                r = ranges.get(p.second)
                state = PairState(p, out_ranges(model, p), in_ranges(model, p),
                                  None if r is None else r[0].copy(), None if r is None else r[1].copy())
                s = np.asarray(rule_fn(state), dtype=np.float64)
                if s.shape != (p.channels,) or not np.isfinite(s).all() or (s <= 0).any():
                    raise ValueError(f"rule {rule_name!r} returned invalid scales for pair {p.name}: need "
                                     f"{p.channels} finite values > 0")
                if (s == 1.0).all():
                    continue
                scale_pair(model, p, s)
                total[p] *= s
                if r is not None:
                    r[0] /= s
                    r[1] /= s
                moved = max(moved, float(np.abs(np.log(s)).max()))
            if moved < tol:
                converged = True
                break
        absorbed = {}
        for p in absorb:
            c = np.maximum(ranges[p.second][0], 0.0)
            shift_pair(model, p, c)
            ranges[p.second][0] -= c
            ranges[p.second][1] -= c
            absorbed[p] = float(c.max())
        ok, err, tol_abs = _close(model(example), ref, rtol)
        relative = err * rtol / tol_abs if tol_abs > 0 else float("nan")
        if not ok:
            raise ValueError(f"equalization changed the output on example by {relative:.3g} of its largest "
                             f"magnitude (> rtol={rtol:g}); the model was restored")
    except BaseException:
        saved.restore()
        raise
    results = tuple(PairResult(p, float(total[p].min()), float(total[p].max()), absorbed.get(p), notes.get(p))
                    for p in pairs)
    return EqualizationReport(rule=rule_name, pairs=results, rejected=links.rejected, clamps=clamps,
                              sweeps=sweeps, converged=converged, output_error=relative)

