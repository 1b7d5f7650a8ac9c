r"""A per-channel clamp that can stand in for a ReLU, ReLU6 or Hardtanh module, also one called several times.

Cross-layer equalization divides output channel :math:`i` of a layer by :math:`s_i > 0`. A ReLU commutes with
that (:math:`\mathrm{relu}(y/s) = \mathrm{relu}(y)/s`), a ReLU6 does not: :math:`\min(\max(y, 0), 6)/s =
\mathrm{clamp}(y/s,\ 0,\ 6/s)`, a clamp whose upper bound differs per channel. Bias absorption shifts a
channel by :math:`c_i`: :math:`\mathrm{clamp}(y - c, lo - c, hi - c) = \mathrm{clamp}(y, lo, hi) - c`. Both
keep the float model's function exactly when the activation becomes :class:`ChannelClamp`.

**Modules called more than once.** EfficientNet-Lite's blocks own one ``ReLU6`` (``_swish``) that their
forward calls twice (after the expand conv and after the depthwise conv), each call on another tensor whose
channels get other scales. :class:`ChannelClamp` holds one pair of bound vectors per *call site* (the order
in which a forward calls it, read from a trace) and uses site ``k mod n`` on its ``k``-th call. The count
restarts at 0 before every forward of the root model (:func:`reset_calls_before_forward` installs the
pre-hook) and wraps around after ``n`` calls, so a block called on its own (which makes all ``n`` calls) stays
aligned too. Any batch size works (the bounds are per channel) and repeated forwards are independent.

Limits: the sites must be called in the same order on every forward (true of static architectures, not of a
forward whose branches depend on the data); a call whose input has another channel count than its site's
raises ``RuntimeError``. A state dict of an equalized model loads into a model whose activations are
``ChannelClamp`` modules with the same sites, not into the original architecture.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ChannelClamp", "reset_calls_before_forward"]


class ChannelClamp(nn.Module):
    """``clamp(x, lo_k, hi_k)`` per channel (axis ``dim``) on call site ``k``.

    Parameters
    ----------
    bounds : sequence of (lo, hi)
        One pair of 1-D tensors (the channels of that site; ``-inf``/``inf`` allowed) per call site.
    dim : int
        The channel axis of the input (1 for ``(N, C, ...)`` conv activations and ``(N, C)`` linear ones).
    dtype : torch.dtype
        Of the bound buffers (the model's float type; they are cast to the input's type in forward).

    Examples
    --------
    >>> import torch
    >>> c = ChannelClamp([(torch.zeros(2), torch.tensor([6.0, 3.0]))])
    >>> c(torch.tensor([[7.0, 7.0], [-1.0, 2.0]])).tolist()
    [[6.0, 3.0], [0.0, 2.0]]
    """

    def __init__(self, bounds, *, dim: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        bounds = list(bounds)
        if not bounds:
            raise ValueError("bounds must hold at least one (lo, hi) pair")
        for k, (lo, hi) in enumerate(bounds):
            lo, hi = torch.as_tensor(lo, dtype=dtype), torch.as_tensor(hi, dtype=dtype)
            if lo.ndim != 1 or lo.shape != hi.shape:
                raise ValueError(f"bounds of site {k}: lo and hi must be 1-D of one length, got "
                                 f"{tuple(lo.shape)} and {tuple(hi.shape)}")
            if bool((lo > hi).any()) or bool(lo.isnan().any() | hi.isnan().any()):
                raise ValueError(f"bounds of site {k}: need lo <= hi per channel (no NaN)")
            self.register_buffer(f"lo_{k}", lo.clone())
            self.register_buffer(f"hi_{k}", hi.clone())
        self.sites = len(bounds)
        self.dim = dim
        self.calls = 0

    @classmethod
    def like(cls, module: nn.Module, channels, *, dim: int = 1, dtype: torch.dtype = torch.float32) -> "ChannelClamp":
        """The clamp that computes what ``module`` (``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh``) computes, with
        one site per entry of ``channels`` (the channel count of each call)."""
        if isinstance(module, nn.Hardtanh):       # ReLU6 is a Hardtanh(0, 6)
            lo, hi = float(module.min_val), float(module.max_val)
        elif isinstance(module, nn.ReLU):
            lo, hi = 0.0, math.inf
        else:
            raise ValueError(f"no clamp computes a {type(module).__name__}")
        return cls([(torch.full((c,), lo), torch.full((c,), hi)) for c in channels], dim=dim, dtype=dtype)

    def bounds(self, site: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(lo, hi)`` buffers of call site ``site`` (modify them in place to change the clamp)."""
        if not 0 <= site < self.sites:
            raise ValueError(f"site must be in 0..{self.sites - 1}, got {site}")
        return getattr(self, f"lo_{site}"), getattr(self, f"hi_{site}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        site = self.calls % self.sites
        self.calls = site + 1
        lo, hi = self.bounds(site)
        dim = self.dim % x.ndim
        if x.shape[dim] != lo.shape[0]:
            raise RuntimeError(f"ChannelClamp call site {site} expects {lo.shape[0]} channels on axis {dim}, got "
                               f"input {tuple(x.shape)}: the forward calls this module in another order than "
                               "the trace it was built from")
        shape = [1] * x.ndim
        shape[dim] = -1
        return torch.clamp(x, lo.to(x.dtype).reshape(shape), hi.to(x.dtype).reshape(shape))

    def extra_repr(self) -> str:
        return f"sites={self.sites}, channels={[self.bounds(k)[0].shape[0] for k in range(self.sites)]}"


class _ResetCalls:
    """A forward pre-hook of the root model: restart the call count of its multi-site clamps. An object (not a
    closure), so that ``copy.deepcopy(model)`` gives the copy a hook that resets the copy's clamps."""

    def __init__(self, clamps):
        self.clamps = list(clamps)

    def __call__(self, module, args):
        for c in self.clamps:
            c.calls = 0


def reset_calls_before_forward(root: nn.Module, clamp: ChannelClamp):
    """Make every forward of ``root`` restart ``clamp``'s call count; returns the hook handle."""
    return root.register_forward_pre_hook(_ResetCalls([clamp]))
