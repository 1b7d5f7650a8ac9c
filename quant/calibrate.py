r"""From statistics to grids: every clipping value, bit-width and correction comes from :mod:`aciq.theory`.

A *site* (a tensor that gets quantized) has statistics (:class:`aciq.quant.observe.SiteStats`). Its window
:math:`[lo, hi]` per clipping mode, with :math:`\mu, b, \sigma` the channel's (or tensor's) mean, Laplace
scale (mean absolute deviation) and standard deviation:

* symmetric: :math:`[\mu - \alpha, \mu + \alpha] \cap [\min, \max]`, :math:`\alpha` from the mode;
* half range, non-negative data (the input of a layer after a ReLU): :math:`[0, \min(\alpha, \max)]` with
  :math:`\alpha` the half-range optimum (:func:`aciq.theory.optimal_alpha` with ``half_range=True``) for the
  scale of the positive part (:math:`b = E[x | x>0]`, :math:`\sigma = \sqrt{E[x^2 | x>0]}`: the tail of
  Laplace / Gauss data cut by a ReLU);
* half range, fused ReLU (the seed's output site): :math:`[0, \max(\mu, 0) + \alpha]`, scales of the
  signed tensor, as the seed's ``alpha2DeltaOffset``.

The window then becomes the gemmlowp grid (:func:`aciq.quant.fake.grid_params`), which always contains 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aciq.theory import optimal_alpha, optimal_alpha_exact
from aciq.theory.allocation import optimal_integer_bits, paper_bits

from .fake import GridParams, fake_quantize, grid_params
from .observe import SiteStats

__all__ = ["SiteSpec", "error_key", "needs_spread", "unit_alpha", "site_window", "site_grid", "candidate_errors",
           "allocate_bits"]


@dataclass(frozen=True)
class SiteSpec:
    """How one site is quantized: mode, bits, granularity, half range, and where it sits."""

    clipping: str
    bits: int
    per_channel: bool
    half: bool
    fused: bool = False          # half range because a ReLU consumes a signed tensor (output site)
    alloc: str | None = None
    avg_bits: float | None = None
    budget: str = "bins"
    kstd: float = 2.0
    exact_prior: str = "laplace"
    mse_candidates: int = 100
    kl_bins: int = 2048
    cap: object = None           # float or per-channel array: the site is the output of a ReLU6 / clamp
    quantizer: str = "uniform"   # "uniform": the gemmlowp grid; "midtread": eq. 10 bins (aciq.quant.midtread)


def error_key(spec: SiteSpec) -> str:
    """The name under which pass 3 stores the candidate errors that ``spec`` reads (they depend on the
    windows tried, hence on the mode, bits, granularity and range of the site)."""
    parts = [spec.clipping, f"b{spec.bits}", "pc" if spec.per_channel else "pt", "half" if spec.half else "full"]
    if spec.fused:
        parts.append("fused")
    if spec.clipping == "mse":
        parts.append(f"n{spec.mse_candidates}")
    if spec.cap is not None:
        parts.append("cap")
    return ":".join(parts)


def needs_spread(spec: SiteSpec) -> bool:
    """Whether ``spec`` reads pass-2 statistics (absolute deviation, histograms) or pass-3 errors."""
    laplace = spec.clipping in ("laplace", "mix") or (spec.clipping == "exact" and spec.exact_prior == "laplace")
    signed = not spec.half or spec.fused        # the non-negative half range uses pass-1 moments of x > 0
    return (laplace and signed) or spec.clipping in ("kl", "mse")


def unit_alpha(mode: str, bits, *, half: bool, exact_prior: str = "laplace") -> np.ndarray:
    """Clipping value in units of the prior's scale, per bit-width (0-bit entries give 0)."""
    bits = np.asarray(bits, np.int64)
    live = np.maximum(bits, 1)
    if mode in ("laplace", "gauss"):
        a = optimal_alpha(prior=mode, bits=live.astype(float), half_range=half).alpha
    elif mode == "exact":
        a = np.empty(live.shape)
        for m in np.unique(live):
            a[live == m] = optimal_alpha_exact(prior=exact_prior, bits=int(m), grid="gemmlowp",
                                               half_range=half).alpha
    else:
        raise ValueError(f"no analytic alpha for clipping mode {mode!r}")
    return np.where(bits > 0, np.broadcast_to(a, bits.shape), 0.0)


def _scale(stats: SiteStats, prior: str, spec: SiteSpec) -> np.ndarray:
    nonneg = spec.half and not spec.fused
    if prior == "laplace":
        return stats.b_pos if nonneg else stats.b
    return stats.sigma_pos if nonneg else stats.std


def _clip(stats: SiteStats, alpha: np.ndarray, spec: SiteSpec):
    if spec.half:
        shift = np.maximum(stats.mean, 0.0) if spec.fused else 0.0
        return np.zeros_like(alpha), np.minimum(shift + alpha, np.maximum(stats.max, 0.0))
    mu = stats.mean
    return np.maximum(mu - alpha, stats.min), np.minimum(mu + alpha, stats.max)


def _minmax(stats: SiteStats, spec: SiteSpec):
    if spec.half:
        return np.zeros_like(stats.max), np.maximum(stats.max, 0.0)
    return np.minimum(stats.min, 0.0), np.maximum(stats.max, 0.0)


def _capped(stats: SiteStats, spec: SiteSpec) -> bool:
    """A non-negative site known to be capped (ReLU6, clamp) whose statistics counted the values on the cap."""
    return spec.cap is not None and spec.half and not spec.fused and stats.n_cap is not None


def _capped_alpha(stats: SiteStats, prior: str, bits: np.ndarray, grid: str) -> np.ndarray:
    r"""The clipping value of a capped site: the continuous part on :math:`(0, c)` is the prior truncated there
    (scale fitted to its measured mean, or mean square for ``gauss``), the values on the cap an atom of the
    measured mass (:func:`aciq.theory.optimal_alpha_capped`); never above the cap."""
    from aciq.theory import fit_capped_scale, optimal_alpha_capped

    cap = np.broadcast_to(stats.cap, stats.max.shape).astype(np.float64)
    n_cont = stats.n_pos - stats.n_cap
    live = (n_cont > 0) & (cap > 0) & (bits > 0)
    alpha = np.where(stats.n_cap > 0, cap, np.minimum(np.maximum(stats.max, 0.0), cap))   # degenerate channels
    if not live.any():
        return alpha
    c, nc, ncap = cap[live], n_cont[live], stats.n_cap[live]
    if prior == "laplace":
        m = (stats.sum_pos[live] - ncap * c) / nc
        fit = fit_capped_scale(prior=prior, cap=c, mean=np.clip(m, 1e-12 * c, c))
    else:
        m2 = (stats.sumsq_pos[live] - ncap * c * c) / nc
        fit = fit_capped_scale(prior=prior, cap=c, mean_square=np.clip(m2, 1e-24 * c * c, c * c))
    res = optimal_alpha_capped(prior=prior, bits=bits[live].astype(np.float64), cap=c, scale=fit.scale,
                               cap_mass=ncap / stats.n_pos[live], grid=grid)
    alpha[live] = np.minimum(res.alpha, c)
    return alpha


def site_window(stats: SiteStats, mode: str, bits: np.ndarray, spec: SiteSpec):
    """``(lo, hi)`` per channel of ``stats`` for clipping ``mode`` at ``bits`` (per channel)."""
    if mode == "minmax":
        return _minmax(stats, spec)
    if mode in ("laplace", "gauss", "exact"):
        prior = spec.exact_prior if mode == "exact" else mode
        if _capped(stats, spec):
            return np.zeros_like(stats.max), _capped_alpha(stats, prior, bits, "gemmlowp" if mode == "exact"
                                                           else "model")
        alpha = unit_alpha(mode, bits, half=spec.half, exact_prior=spec.exact_prior) * _scale(stats, prior, spec)
        return _clip(stats, alpha, spec)
    if mode == "kstd":
        return _clip(stats, spec.kstd * _scale(stats, "gauss", spec) * (bits > 0), spec)
    if mode == "kl":
        hist = stats.hist_pos if spec.half else stats.hist_abs
        if hist is None:
            raise ValueError("kl clipping needs the histograms of pass 2")
        top = stats.hist_top(spec.half)
        if top <= 0:
            return _minmax(stats, spec)
        from aciq.theory.kl import kl_threshold

        edges = np.linspace(0.0, top, hist.shape[0] + 1)
        alpha = kl_threshold(hist, edges, bits=int(np.max(bits)), half_range=spec.half).alpha
        if spec.half:
            return np.zeros(1), np.minimum(np.array([alpha]), stats.max)
        return np.maximum(np.array([-alpha]), stats.min), np.minimum(np.array([alpha]), stats.max)
    if mode == "mse":
        err = _errors(stats, spec)
        err = np.atleast_2d(err)
        k = np.argmin(err, axis=1)                    # first minimum: the smallest window among ties
        frac = (k + 1) / err.shape[1]
        lo, hi = _minmax(stats, spec)
        return lo * frac, hi * frac
    if mode == "mix":
        err = _errors(stats, spec)
        choice = np.argmin(np.atleast_2d(err), axis=1)  # 0 laplace, 1 gauss, 2 minmax (ties: laplace)
        windows = [site_window(stats, m, bits, spec) for m in ("laplace", "gauss", "minmax")]
        lo = np.choose(choice, [w[0] for w in windows])
        hi = np.choose(choice, [w[1] for w in windows])
        return lo, hi
    raise ValueError(f"unknown clipping mode {mode!r}")


MIX_CANDIDATES = ("laplace", "gauss", "minmax")


def _errors(stats: SiteStats, spec: SiteSpec) -> np.ndarray:
    key = error_key(spec)
    err = stats.errors.get(key)
    if err is None:
        have = sorted(stats.errors) or "none"
        raise ValueError(f"{spec.clipping} clipping needs the candidate errors {key!r} of pass 3; the statistics "
                         f"hold {have}: collect them with this config")
    return err


def _grid_rows(grid: GridParams, rows: slice) -> GridParams:
    """The per-channel ``grid`` restricted to the channels ``rows``."""
    return GridParams(scale=grid.scale[rows], zero_point=grid.zero_point[rows], bits=grid.bits[rows],
                      fill=grid.fill[rows], axis=grid.axis, qmax=grid.qmax[rows])


_CHUNK = 1 << 18
"""Elements per chunk of the candidate errors (1 MiB of float32)."""


def candidate_errors(stats: SiteStats, spec: SiteSpec):
    """Callables for pass 3: ``(rows, start) -> error sums`` of the candidate windows of ``mse`` / ``mix``.

    ``rows`` is a block of channels ``start, start+1, ...`` (the observer works by blocks of rows); the
    result is ``(len(rows), K)`` per channel, or ``(K,)`` per tensor (sums: blocks add up).
    """
    view = stats if spec.per_channel else stats.tensor()
    bits = np.full(view.channels, spec.bits)
    if spec.clipping == "mse":
        lo, hi = _minmax(view, spec)
        windows = [(lo * k / spec.mse_candidates, hi * k / spec.mse_candidates)
                   for k in range(1, spec.mse_candidates + 1)]
    elif spec.clipping == "mix":
        windows = [site_window(view, m, bits, spec) for m in MIX_CANDIDATES]
    else:
        return {}
    grids = [grid_params(lo, hi, bits, axis=0) for lo, hi in windows]
    one_pass = None        # (K, C) arrays for the compiled pass: every grid in one read of the data
    if all(np.all(g.bits > 0) for g in grids):
        one_pass = tuple(np.stack([np.broadcast_to(getattr(g, f), (view.channels,)) for g in grids])
                         for f in ("scale", "zero_point", "qmax", "half"))

    def errors(rows: torch.Tensor, start: int = 0) -> torch.Tensor:
        if one_pass is not None and rows.device.type == "cpu":
            from aciq.kernels.errors import grid_errors

            x = (rows.clamp(min=0) if spec.half else rows).detach().numpy()
            if spec.per_channel:
                sl = slice(start, start + rows.shape[0])
                return torch.from_numpy(grid_errors(x, *(a[:, sl] for a in one_pass)))
            return torch.from_numpy(grid_errors(x.reshape(-1), *(a[:, 0] for a in one_pass)))
        if spec.per_channel:
            x, sl = rows, slice(start, start + rows.shape[0])
            block = grids if (start, rows.shape[0]) == (0, view.channels) else [_grid_rows(g, sl) for g in grids]
        else:
            x, block = rows.reshape(1, -1), grids
        if spec.half:  # what matters after a (fused) ReLU is the error on the positive part
            x = x.clamp(min=0)
        # by column chunks that stay in cache while every candidate reads them (7x faster than whole rows)
        out = torch.zeros(x.shape[0], len(block), dtype=torch.float64, device=x.device)
        for chunk in x.split(max(1, _CHUNK // x.shape[0]), dim=1):
            for k, g in enumerate(block):
                e = fake_quantize(chunk, g).sub_(chunk)
                out[:, k] += e.mul_(e).sum(1, dtype=torch.float64)
        return out if spec.per_channel else out[0]

    return {error_key(spec): errors}


def allocate_bits(alphas: np.ndarray, spec: SiteSpec) -> np.ndarray:
    """Bits per channel: eq. 11 (``paper``) or the integer optimum within the budget (``optimal``)."""
    avg = spec.bits if spec.avg_bits is None else spec.avg_bits
    alphas = np.asarray(alphas, np.float64)
    if spec.alloc == "paper":
        return paper_bits(alphas, avg_bits=avg, mode="round", max_bits=8).astype(np.int64)
    return np.asarray(optimal_integer_bits(alphas, avg_bits=avg, budget=spec.budget, max_bits=8), np.int64)


def site_grid(stats: SiteStats, spec: SiteSpec, *, axis: int | None) -> tuple[GridParams, dict]:
    """The grid of one site, and a record of how it was chosen (JSON-able)."""
    view = stats if spec.per_channel else stats.tensor()
    if spec.quantizer == "midtread":
        from .midtread import midtread_grid

        return midtread_grid(view, spec, axis=axis if spec.per_channel else None)
    bits = np.full(view.channels, spec.bits, np.int64)
    info = {"clipping": spec.clipping, "half_range": spec.half, "fused_relu": spec.fused,
            "per_channel": spec.per_channel}
    if spec.alloc is not None:
        lo, hi = site_window(view, spec.clipping, bits, spec)
        bits = allocate_bits((hi - lo) / 2.0, spec)
        info["bits_mean"] = float(bits.mean())
        info["bits_hist"] = np.bincount(bits, minlength=9).tolist()
    lo, hi = site_window(view, spec.clipping, bits, spec)
    fill = np.zeros(view.channels) if spec.half else view.mean
    grid = grid_params(lo, hi, bits, fill=fill, axis=axis if spec.per_channel else None)
    if not spec.per_channel:
        grid = GridParams(scale=grid.scale[0], zero_point=grid.zero_point[0], bits=grid.bits[0],
                          fill=grid.fill[0], axis=None, qmax=grid.qmax[0])
    return grid, info
