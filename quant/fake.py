r"""Fake quantization on the integer grid that deploys: the ``gemmlowp`` grid of :mod:`aciq.theory.grids`.

A window :math:`[lo, hi]` that contains 0 and a bit-width :math:`M` define

.. math::

    s = \frac{hi - lo}{2^M - 1}, \quad z = \operatorname{round}(-lo/s) \in [0, 2^M - 1], \quad
    q = \operatorname{clamp}(\operatorname{round}(x/s) + z,\ 0,\ 2^M - 1), \quad \hat x = (q - z)\,s

(round half to even, as ``torch.round`` and ``numpy.rint``). Because the window contains 0, zero is a
level and :math:`z` is a valid unsigned code, so the same ``(s, z, M)`` drive the integer kernels of
:mod:`aciq.kernels` (activation ``ActQuant``; weights shift :math:`q, z` by :math:`2^{M-1}` to signed codes).

Zero bits: a channel allocated 0 bits keeps one level, its ``fill`` value (the channel mean), instead of
collapsing to the window's low end as the seed's did.

**Mid-tread grids** (:func:`midtread_params`, the seed's ``-mtq``): :math:`\omega` bins of width
:math:`\Delta = (hi - lo)/\omega` between the window ends, :math:`\omega + 1` levels, :math:`\omega` any
integer 0..255 (not a power of two): the grid of :mod:`aciq.theory.midtread`. The same :class:`GridParams`
describe it, with ``qmax`` :math:`= \omega` (``2^M - 1`` on a gemmlowp grid) and ``bits`` the width of its codes,
:math:`\lceil\log_2(\omega + 1)\rceil`. Its zero point is the half-integer nearest :math:`-lo/\Delta`:
a symmetric window with an odd :math:`\omega` has no level at 0 but two at :math:`\pm\Delta/2` (the
theory's grid), and rounding reads

.. math::

    q = \operatorname{clamp}(\lfloor x/s \rfloor + \tfrac12 + z,\ 0,\ \omega) \quad (z \in \mathbb{Z} +
    \tfrac12), \qquad \hat x = (q - z)\,s,

so :math:`2(q - z)` is an integer (an odd one) and the integer path of :class:`~aciq.quant.modules.QuantizedLayer`
runs such a channel on the codes :math:`2(q - z)` with step :math:`s/2`. Only the fake backend runs mid-tread grids
(the kernels take grids of :math:`2^M` levels with an integer zero point).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import MIDTREAD_MAX_BINS

__all__ = ["GridParams", "grid_params", "midtread_params", "fake_quantize", "codes", "dequantize", "FakeQuant"]


@dataclass(frozen=True)
class GridParams:
    r"""Per-channel (or scalar) grid: step ``scale``, ``zero_point``, ``bits``, the 0-bit ``fill`` and ``qmax``.

    Arrays are float64/int64 numpy of shape ``(C,)``, or shape ``()`` for one grid per tensor. ``axis``
    is the channel axis of the tensors the grid applies to (``None`` per tensor). Codes run over
    ``0..qmax``: ``qmax`` defaults to ``2^bits - 1`` (gemmlowp); a mid-tread grid of :math:`\omega` bins has
    ``qmax`` :math:`= \omega` and a zero point that may be a half-integer (float64; :attr:`half`).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: np.ndarray
    fill: np.ndarray
    axis: int | None = None
    qmax: np.ndarray | None = None

    def __post_init__(self):
        if self.qmax is None:
            qmax = (np.left_shift(1, np.asarray(self.bits).astype(np.int64)) - 1).astype(np.int64)
            object.__setattr__(self, "qmax", qmax)

    @property
    def half(self) -> np.ndarray:
        """Channels whose zero point is a half-integer (mid-tread grids with an odd number of bins)."""
        return np.asarray(self.zero_point) % 1 != 0

    @property
    def has_half(self) -> bool:
        return bool(np.any(self.half))

    @property
    def is_gemmlowp(self) -> bool:
        """``2^bits`` levels and integer zero points in every channel (what the kernels run)."""
        standard = np.left_shift(1, np.asarray(self.bits).astype(np.int64)) - 1
        return bool(np.all(self.qmax == standard)) and not self.has_half

    @property
    def lo(self) -> np.ndarray:
        return -self.zero_point * self.scale

    @property
    def hi(self) -> np.ndarray:
        return (self.qmax - self.zero_point) * self.scale

    def to_dict(self) -> dict:
        return {"scale": self.scale.tolist(), "zero_point": self.zero_point.tolist(),
                "bits": self.bits.tolist(), "fill": self.fill.tolist(), "axis": self.axis,
                "qmax": np.asarray(self.qmax).tolist()}


def grid_params(lo, hi, bits, *, fill=None, axis=None) -> GridParams:
    """The gemmlowp grid of the window ``[min(lo, 0), max(hi, 0)]`` at ``bits`` (0..8) per channel.

    Parameters
    ----------
    lo, hi : array_like
        Window ends (absolute units), broadcast against each other and ``bits``.
    bits : array_like of int
        0..8; a 0-bit channel reconstructs every value as ``fill``.
    fill : array_like, optional
        The 0-bit level (default 0).
    axis : int, optional
        Channel axis of the tensors this grid applies to.

    Examples
    --------
    >>> g = grid_params(-1.0, 1.0, 2)
    >>> float(g.scale), int(g.zero_point)    # s = 2/3, z = round(1.5) = 2
    (0.6666666666666666, 2)
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    bits = np.asarray(bits)
    if not np.issubdtype(bits.dtype, np.integer):
        if not np.all(np.isfinite(bits)) or np.any(bits != np.round(bits)):
            raise ValueError(f"bits must be integers, got {bits!r}")
        bits = bits.astype(np.int64)
    if np.any(bits < 0) or np.any(bits > 8):
        raise ValueError(f"bits must lie in 0..8, got {np.unique(bits).tolist()}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("window ends lo and hi must be finite")
    lo, hi, bits = np.broadcast_arrays(lo, hi, bits.astype(np.int64))
    fill = np.broadcast_to(np.asarray(0.0 if fill is None else fill, np.float64), lo.shape)
    qmax = (np.left_shift(1, bits) - 1).astype(np.float64)
    width = hi - lo
    ok = (width > 0) & (qmax > 0)
    scale = np.where(ok, width / np.where(ok, qmax, 1.0), 1.0)  # a dead channel keeps s = 1 (every code is 0)
    # z = round(-lo/s) computed as qmax * (-lo / width): exact for a symmetric window (-lo/width = 1/2, a
    # tie rounded to even as theory.grids does), where -lo/s would land on either side of the tie
    frac = np.where(ok, -lo / np.where(ok, width, 1.0), 0.0)
    zp = np.where(ok, np.clip(np.rint(qmax * frac), 0, qmax), 0.0).astype(np.int64)
    return GridParams(scale=np.array(scale, np.float64), zero_point=np.array(zp),
                      bits=np.array(bits, np.int64), fill=np.array(fill, np.float64), axis=axis)


_CODE_BITS = np.array([w.bit_length() for w in range(MIDTREAD_MAX_BINS + 1)], np.int64)   # width of codes 0..w


def midtread_params(lo, hi, bins, *, fill=None, axis=None) -> GridParams:
    r"""The mid-tread grid of ``bins`` bins on the window ``[min(lo, 0), max(hi, 0)]``, per channel.

    :math:`\omega` = ``bins`` (0..255), :math:`\Delta = (hi - lo)/\omega`, codes :math:`0..\omega`, levels
    :math:`(k - z)\Delta` with :math:`z` the half-integer nearest :math:`-lo/\Delta`: the window's own
    levels :math:`lo + k\Delta` (:mod:`aciq.theory.midtread`) moved by at most :math:`\Delta/4` so that 0 is a
    level or the midpoint of two (exact for a window symmetric about 0, and for ``lo = 0``).

    Parameters
    ----------
    lo, hi : array_like
        Window ends (absolute units), broadcast against each other and ``bins``.
    bins : array_like of int
        0..255; a 0-bin channel reconstructs every value as ``fill`` (``bits`` 0).
    fill : array_like, optional
        The 0-bin level (default 0).
    axis : int, optional
        Channel axis of the tensors this grid applies to.

    Examples
    --------
    >>> g = midtread_params(-1.0, 1.0, [4, 3])     # 5 levels with 0; 4 levels at +-1/3, +-1
    >>> g.qmax.tolist(), g.zero_point.tolist(), g.bits.tolist(), g.scale.round(4).tolist()
    ([4, 3], [2.0, 1.5], [3, 2], [0.5, 0.6667])
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    bins = np.asarray(bins)
    if bins.dtype.kind not in "iuf" or not np.all(np.isfinite(bins)) or np.any(bins != np.round(bins)):
        raise ValueError(f"bins must be integers, got {bins!r}")
    if np.any(bins < 0) or np.any(bins > MIDTREAD_MAX_BINS):
        raise ValueError(f"bins must lie in 0..{MIDTREAD_MAX_BINS} (codes in one byte), got "
                         f"{np.unique(bins).tolist()}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("window ends lo and hi must be finite")
    lo, hi, bins = np.broadcast_arrays(lo, hi, bins.astype(np.int64))
    fill = np.broadcast_to(np.asarray(0.0 if fill is None else fill, np.float64), lo.shape)
    width = hi - lo
    ok = (width > 0) & (bins > 0)
    w = np.where(ok, bins, 1).astype(np.float64)
    scale = np.where(ok, width / w, 1.0)
    # 2z = rint(2 w (-lo/width)): exactly w for a symmetric window (-lo/width = 1/2)
    frac = np.where(ok, -lo / np.where(ok, width, 1.0), 0.0)
    zp = np.where(ok, np.clip(np.rint(2.0 * w * frac), 0, 2.0 * w), 0.0) / 2.0
    return GridParams(scale=np.array(scale, np.float64), zero_point=np.array(zp, np.float64),
                      bits=np.array(_CODE_BITS[bins], np.int64), fill=np.array(fill, np.float64), axis=axis,
                      qmax=np.array(bins, np.int64))


def _round_steps(r: torch.Tensor, grid: GridParams, like: torch.Tensor) -> torch.Tensor:
    """``r = x / s`` to the nearest level offset ``q - z`` (before clamping): ``round(r)`` on channels with an
    integer zero point, ``floor(r) + 1/2`` on the half-integer ones. In place where it can."""
    if not grid.has_half:
        return r.round_()
    half = grid.half
    if np.ndim(half) == 0 or np.all(half):
        return r.floor_().add_(0.5)
    mask = _shape(half, like, grid.axis)
    return torch.where(mask, torch.floor(r) + 0.5, torch.round(r))


def _shape(values: np.ndarray, x: torch.Tensor, axis) -> torch.Tensor:
    dtype = {"f": x.dtype, "b": torch.bool}.get(values.dtype.kind, torch.int64)
    t = torch.as_tensor(values, dtype=dtype, device=x.device)
    if axis is None or t.ndim == 0:
        return t
    view = [1] * x.ndim
    view[axis] = -1
    return t.reshape(view)


def codes(x: torch.Tensor, grid: GridParams, *, dtype=torch.int64) -> torch.Tensor:
    """Unsigned integer codes ``q`` of ``x`` (0 for 0-bit channels), as ``dtype`` (``torch.uint8`` holds any).

    Examples
    --------
    >>> codes(torch.tensor([-2.0, -0.1, 0.0, 0.3, 0.9]), grid_params(-1.0, 1.0, 2))
    tensor([0, 2, 2, 2, 3])
    """
    scale = _shape(grid.scale, x, grid.axis)
    zp = _shape(grid.zero_point.astype(np.float64), x, grid.axis)
    qmax = _shape(grid.qmax.astype(np.float64), x, grid.axis)
    q = _round_steps(torch.div(x, scale), grid, x)
    q.add_(zp).clamp_(min=0.0)
    torch.minimum(q, qmax, out=q)
    return q.to(dtype)


def dequantize(q: torch.Tensor, grid: GridParams, *, dtype=torch.float32) -> torch.Tensor:
    """Values ``(q - z) s`` of integer codes (``fill`` for 0-bit channels): ``dequantize(codes(x)) ==
    fake_quantize(x)``.

    Examples
    --------
    >>> g = grid_params(-1.0, 1.0, 2)
    >>> dequantize(codes(torch.tensor([-2.0, 0.3, 0.9]), g), g)
    tensor([-1.3333,  0.0000,  0.6667])
    """
    out = q.to(dtype, copy=True)
    out.sub_(_shape(grid.zero_point.astype(np.float64), out, grid.axis)).mul_(_shape(grid.scale, out, grid.axis))
    if np.any(grid.bits == 0):
        out = torch.where(_shape(grid.bits == 0, out, grid.axis), _shape(grid.fill, out, grid.axis), out)
    return out


def fake_quantize(x: torch.Tensor, grid: GridParams) -> torch.Tensor:
    """Quantize and dequantize ``x`` on ``grid`` (float in, float out, same dtype and device).

    Examples
    --------
    >>> fake_quantize(torch.tensor([-2.0, -0.1, 0.0, 0.3, 0.9]), grid_params(-1.0, 1.0, 2))
    tensor([-1.3333,  0.0000,  0.0000,  0.0000,  0.6667])
    """
    if grid.axis is not None and np.ndim(grid.scale) and x.shape[grid.axis] != np.shape(grid.scale)[0]:
        raise ValueError(f"tensor has {x.shape[grid.axis]} channels on axis {grid.axis}, "
                         f"the grid has {np.shape(grid.scale)[0]}")
    scale = _shape(grid.scale, x, grid.axis)
    zp = _shape(grid.zero_point.astype(np.float64), x, grid.axis)
    qmax = _shape(grid.qmax.astype(np.float64), x, grid.axis)
    out = _round_steps(torch.div(x, scale), grid, x)    # then in place: + z, clamp to [0, qmax], - z, * s
    out.add_(zp).clamp_(min=0.0)
    torch.minimum(out, qmax, out=out)
    out.sub_(zp).mul_(scale)
    if np.any(grid.bits == 0):
        out = torch.where(_shape(grid.bits == 0, x, grid.axis), _shape(grid.fill, x, grid.axis), out)
    return out


class FakeQuant(torch.nn.Module):
    """A fixed grid as a module: the parameters live in buffers (they follow ``.to(device)``)."""

    def __init__(self, grid: GridParams):
        super().__init__()
        self.grid = grid
        self.axis = grid.axis
        self.register_buffer("scale", torch.as_tensor(grid.scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.as_tensor(grid.zero_point, dtype=torch.float32))
        self.register_buffer("qmax", torch.as_tensor(grid.qmax, dtype=torch.float32))
        dead = grid.bits == 0
        self.has_dead = bool(np.any(dead))
        self.register_buffer("dead", torch.as_tensor(dead))
        self.register_buffer("fill", torch.as_tensor(grid.fill, dtype=torch.float32))
        self.has_half = grid.has_half

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None or t.ndim == 0:
            return t
        view = [1] * x.ndim
        view[self.axis] = -1
        return t.reshape(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clamp(round(x/s) + z, 0, qmax) - z == clamp(round(x/s), -z, qmax - z) exactly (integers in float),
        # computed in one buffer: fresh multi-MB temporaries cost more than the arithmetic on a CPU.
        scale = self._view(self.scale, x)
        q = torch.div(x, scale)
        q = _round_steps(q, self.grid, x) if self.has_half else q.round_()
        if self.axis is None or self.scale.ndim == 0:
            q.clamp_(-float(self.zero_point), float(self.qmax - self.zero_point))
        else:
            zp, qmax = self._view(self.zero_point, x), self._view(self.qmax, x)
            torch.maximum(q, -zp, out=q)
            torch.minimum(q, qmax - zp, out=q)
        q.mul_(scale)
        if self.has_dead:
            q = torch.where(self._view(self.dead, x), self._view(self.fill, x), q)
        return q

    def extra_repr(self) -> str:
        bits = np.unique(self.grid.bits).tolist()
        return f"bits={bits}, axis={self.axis}"
