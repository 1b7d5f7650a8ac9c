r"""Mid-tread sites (the seed's ``-mtq``): eq. 10 bins per channel, a clipping value per number of bins.

A site with ``quantizer="midtread"`` gives channel :math:`i` a number of bins :math:`\omega_i \in 0..255` that
need not be a power of two, within the bins budget :math:`B = C\,2^{\bar M}` (:math:`\bar M` the site's
``avg_bits``, else its ``bits``; fractional as the seed's ``-bata``/``-batw``), and quantizes it on the
mid-tread grid of :math:`\omega_i` bins (:func:`aciq.quant.fake.midtread_params`: :math:`\omega_i + 1` levels,
both window ends among them). :func:`aciq.theory.midtread.allocate_bins` makes the allocation:

* ``alloc="paper"`` (what the seed runs, ``IQ:128-135, 187``): eq. 10 on the channels' standard deviations,
  :math:`\omega_i = \operatorname{round}(B\,\sigma_i^{2/3}/\sum_j\sigma_j^{2/3})` (the seed's prior is
  always ``std`` here), clamped to 0..255 (the seed does not clamp); the total may exceed the budget.
* ``alloc="optimal"``: the integer optimum of the prior's error within the budget,
  :math:`\min \sum_i s_i^2 f(\omega_i)` with :math:`\sum_i\omega_i \le B`, :math:`s_i` the channel's scale
  (Laplace b, Gauss sigma; those of the positive part on a non-negative site) and :math:`f` the paper's model
  with :math:`\omega` bins at its optimal clipping value, or, with ``clipping="exact"``, the exact error of the
  mid-tread grid at its own optimum (a dynamic programme: the exact error is not convex in :math:`\omega`).

The clipping value of a channel with :math:`\omega_i` bins is :func:`aciq.theory.optimal_alpha_bins` times its
scale: the model's root with real :math:`\omega` (``laplace``/``gauss``: the seed's real-bins table, solved
rather than interpolated) or the exact optimum (``exact``, prior ``exact_prior``); ``minmax`` does not clip
(the seed's weights). The window is then the one of every other grid (:mod:`aciq.quant.calibrate`: centred on
the channel mean, or ``[0, .]`` on half-range sites). A channel with 0 bins, or constant, keeps its mean.

Departures from the seed (``IQ:147-225``): the levels are evenly spaced across the window with integer codes
:math:`0..\omega_i` (the seed's activation clamp bounds :math:`\mu/\Delta \pm \omega/2` are not integers, its
bug (t)); the zero point is the half-integer nearest the window's (the seed rounds :math:`x/\Delta` to
integers, so its grid always has a level at 0; on a symmetric activation window with an odd :math:`\omega`
its fractional clamp then adds the window ends as two extra, unevenly spaced levels); the first and last
layers keep their 8-bit gemmlowp grids (the seed's mid-tread path ignored those overrides, bug (p)); the
clipping of an activation channel uses the prior of ``act_clipping`` (the seed's table is always Laplace's).
"""
from __future__ import annotations

import numpy as np

from aciq.theory import optimal_alpha_bins
from aciq.theory.midtread import allocate_bins

from .calibrate import SiteSpec, _clip, _minmax, _scale
from .config import MIDTREAD_CLIPPING, MIDTREAD_MAX_BINS
from .fake import GridParams, midtread_params
from .observe import SiteStats

__all__ = ["site_bins", "midtread_grid"]


def _prior(spec: SiteSpec) -> str | None:
    if spec.clipping == "exact":
        return spec.exact_prior
    return spec.clipping if spec.clipping in ("laplace", "gauss") else None


def site_bins(view: SiteStats, spec: SiteSpec) -> tuple[np.ndarray, object]:
    """Bins per channel of ``view`` under ``spec.alloc``, and the :class:`~aciq.theory.midtread.BinAllocation`."""
    if spec.clipping not in MIDTREAD_CLIPPING:
        raise ValueError(f"the mid-tread quantizer takes clipping {MIDTREAD_CLIPPING}, got {spec.clipping!r}")
    avg = float(spec.bits if spec.avg_bits is None else spec.avg_bits)
    prior = _prior(spec)
    if spec.alloc == "paper":
        res = allocate_bins(view.std, avg_bits=avg, prior=prior or "laplace", half_range=spec.half,
                            max_bins=MIDTREAD_MAX_BINS, objective="model")
        return res.bins_paper.astype(np.int64), res
    if spec.alloc == "optimal":
        if prior is None:
            raise ValueError("the integer optimum of the bins needs a prior: clipping 'laplace', 'gauss' or "
                             "'exact' ('paper' rounds eq. 10 without one)")
        res = allocate_bins(_scale(view, prior, spec), avg_bits=avg, prior=prior, half_range=spec.half,
                            max_bins=MIDTREAD_MAX_BINS, objective="exact" if spec.clipping == "exact" else "model")
        return res.bins.astype(np.int64), res
    raise ValueError(f"the mid-tread quantizer always allocates bins: alloc must be 'paper' or 'optimal', "
                     f"got {spec.alloc!r}")


def midtread_grid(view: SiteStats, spec: SiteSpec, *, axis: int | None) -> tuple[GridParams, dict]:
    """The mid-tread grid of one site (``view``: per channel), and a JSON-able record of how it was chosen."""
    bins, res = site_bins(view, spec)
    prior = _prior(spec)
    if prior is None:
        lo, hi = _minmax(view, spec)
    else:
        scale = np.asarray(_scale(view, prior, spec), np.float64)
        bins = np.where(scale > 0, bins, 0)           # a constant channel (or no positive part) keeps its mean
        alpha = np.zeros(view.channels)
        live = bins > 0
        if live.any():
            alpha[live] = optimal_alpha_bins(prior=prior, bins=bins[live], scale=scale[live], half_range=spec.half,
                                             exact=spec.clipping == "exact").alpha
        lo, hi = _clip(view, alpha, spec)
    fill = np.zeros(view.channels) if spec.half else view.mean
    grid = midtread_params(lo, hi, bins, fill=fill, axis=axis)
    info = {"clipping": spec.clipping, "half_range": spec.half, "fused_relu": spec.fused,
            "per_channel": spec.per_channel, "quantizer": "midtread", "alloc": spec.alloc,
            "bins_budget": float(res.total_bins), "bins_used": int(bins.sum()), "bins_mean": float(bins.mean()),
            "bins_min": int(bins.min()), "bins_max": int(bins.max()), "odd_bins": int(np.sum(bins % 2 == 1)),
            "bits_mean": float(np.mean(grid.bits))}
    return grid, info
