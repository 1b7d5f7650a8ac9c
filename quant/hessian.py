r"""What a conv/linear layer multiplies its weights with: input patches, and their Hessian :math:`H = X^T X`.

For a weight :math:`W` (one row per output channel) and the matrix :math:`X` whose rows are the layer's input
patches (one per output position and image), the squared output error of replacing :math:`W` by :math:`\hat W`
is :math:`\operatorname{tr}((W - \hat W) H (W - \hat W)^T)` with :math:`H = X^T X`: what second-order rounding
(:func:`aciq.theory.gptq_round`) minimises. A grouped conv (depthwise included) has one :math:`H` per group.

The patches are read from the layer's own ``F.conv2d`` call (a :class:`torch.overrides.TorchFunctionMode`
catches its arguments), so subclasses that pad in their ``forward`` (EfficientNet's static "same" padding) get
their real patches. Sums are float64: exact when the inputs are integer codes (what the sequential calibration
feeds), so the Hessian is then the same for any batch split.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["conv_arguments", "patches", "hessian", "patch_rows"]


class _Caught(Exception):
    pass


class _CatchConv(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.call = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            call = dict(zip(names, args))
            call.update(kwargs)
            self.call = call
            raise _Caught
        return func(*args, **kwargs)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(a) for a in v)


def conv_arguments(layer: nn.Conv2d, x: torch.Tensor) -> dict:
    """The ``F.conv2d`` arguments that ``layer(x)`` uses: ``input`` (padded by the layer's forward, if it pads
    there), ``stride``, ``padding`` (a pair, string paddings resolved), ``dilation``, ``groups``."""
    mode = _CatchConv()
    try:
        with mode:
            layer.forward(x)      # not layer(x): no hooks (the caller may be one of them)
    except _Caught:
        pass
    if mode.call is None:
        raise ValueError(f"{type(layer).__name__}: its forward does not call torch.nn.functional.conv2d")
    c = mode.call
    inp = c["input"]
    stride, dilation = _pair(c.get("stride", 1)), _pair(c.get("dilation", 1))
    padding = c.get("padding", 0)
    kh, kw = c["weight"].shape[-2:]
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:   # "same": torch pads (total // 2) before and the rest after
            tot = [d * (k - 1) for d, k in zip(dilation, (kh, kw))]
            inp = F.pad(inp, (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2))
            padding = (0, 0)
    return {"input": inp, "kernel_size": (kh, kw), "stride": stride, "padding": _pair(padding),
            "dilation": dilation, "groups": int(c.get("groups", 1))}


def patches(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(groups, rows, k)``: the rows of :math:`X` per group (``k`` = inputs per output of one group)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(1, -1, layer.in_features)
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"{type(layer).__name__} is not a Conv2d or Linear")
    a = conv_arguments(layer, x)
    if getattr(layer, "padding_mode", "zeros") != "zeros" and any(a["padding"]):
        p = a["padding"]
        a["input"] = F.pad(a["input"], (p[1], p[1], p[0], p[0]), mode=layer.padding_mode)
        a["padding"] = (0, 0)
    cols = F.unfold(a["input"], a["kernel_size"], dilation=a["dilation"], padding=a["padding"], stride=a["stride"])
    n, ck, length = cols.shape
    g = a["groups"]
    return cols.reshape(n, g, ck // g, length).permute(1, 0, 3, 2).reshape(g, n * length, ck // g)


def patch_rows(layer: nn.Module, x: torch.Tensor) -> int:
    """How many rows of :math:`X` the batch ``x`` gives (output positions times images)."""
    return int(patches(layer, x[:1]).shape[1]) * int(x.shape[0]) if isinstance(layer, nn.Conv2d) else \
        int(x.numel() // layer.in_features)


@torch.no_grad()
def hessian(layer: nn.Module, x: torch.Tensor, *, chunk_elements: int = 1 << 24) -> np.ndarray:
    """:math:`H = X^T X` per group, float64, shape ``(groups, k, k)``, for the input batch ``x``.

    The batch is processed a few images at a time (``chunk_elements`` bounds the patch matrix).

    Examples
    --------
    >>> conv = torch.nn.Conv2d(2, 4, 3, groups=2)
    >>> hessian(conv, torch.ones(1, 2, 3, 3)).tolist() == [[[1.0] * 9] * 9] * 2
    True
    """
    per_image = patches(layer, x[:1]).numel()
    step = max(1, chunk_elements // max(per_image, 1))
    total = None
    for i in range(0, x.shape[0], step):
        p = patches(layer, x[i:i + step]).double()
        h = torch.bmm(p.transpose(1, 2), p)
        total = h if total is None else total + h
    return total.cpu().numpy()
