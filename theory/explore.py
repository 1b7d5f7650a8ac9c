r"""The numbers behind the interactive panels of ``notebooks/00-explore.ipynb``, and their state.

Three panels, each a pure function here or in :mod:`aciq.theory.figures` and a display method of
:class:`Explorer` that the notebook's widgets call:

* MSE vs clipping value for a prior (:func:`prior_curves`) or a measured tensor (:func:`data_curves`):
  the paper's model (eq. 5), the exact error of the grid, and a Monte Carlo (or a measurement on the
  tensor) with two-standard-error bars, each with its optimum;
* bin and bit allocation for a few channels (:func:`aciq.theory.figures.allocation_bars`);
* per layer, the measured histogram, the fitted priors and each calibrator's clipping value
  (:func:`aciq.theory.figures.site_histogram`, with data from :mod:`aciq.quant.explore`).

A redraw has to feel live on two cores (under 0.3 s): the curves are vectorised, the Monte Carlo
sample of each prior is drawn once (the same sample at every setting, so the points do not jitter
as the controls move), and :class:`Explorer` keeps the curves of every setting it has drawn, so
moving only the clipping value redraws from the cache.

Units: ``alpha`` on the curves is in units of the prior's scale (b or sigma) for a prior, and of the
fitted Laplace b for a tensor; MSE in units of the scale squared for a prior, absolute for a tensor.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ._common import CODED_GRIDS, PRIORS, check_bits, check_data, check_grid, check_positive, check_prior
from .clipping import model_mse, optimal_alpha
from .grids import exact_mse, optimal_alpha_exact, quantize
from .priors import sample
from .stats import gauss_scale, laplace_scale

__all__ = ["GRID_CHOICES", "MseCurves", "prior_curves", "data_curves", "measured_mse", "Explorer"]

GRID_CHOICES = ("model", *CODED_GRIDS)
"""The grids the MSE panel offers: the paper's model and the quantizers that M-bit codes address."""

_SPAN = (0.25, 2.5)   # the curves cover alpha in [0.25, 2.5] times the model's optimum
_POINTS = 136         # alphas per curve
_BLOCK = 1 << 21      # alphas x values quantized at once by measured_mse


@dataclass(frozen=True)
class MseCurves:
    """MSE against the clipping value, ready to draw.

    ``alphas`` (in units of ``unit``) is the x axis; ``curves`` maps a label to the MSE at every
    alpha; ``optima`` maps a label to its ``(alpha, mse)``; ``points`` is the Monte Carlo (or the
    measurement on a tensor): ``(alphas, mse, stderr)`` and ``points_label``; ``note`` says what is
    missing and why. ``at`` evaluates every curve and the points at one alpha (same units).
    """

    title: str
    unit: str
    mse_unit: str
    alphas: np.ndarray
    curves: dict
    optima: dict
    points: tuple | None = None
    points_label: str = ""
    note: str = ""
    _at: object = field(default=None, repr=False, compare=False)

    def at(self, alpha: float) -> dict:
        """Every curve (and the points' estimate with its standard error) at ``alpha``."""
        alpha = float(check_positive(alpha, "alpha"))
        return self._at(alpha)


def _scalar_bits(bits) -> float:
    arr = check_bits(bits)
    if arr.ndim != 0:
        raise ValueError(f"bits must be a scalar, got {bits!r}")
    return float(arr)


def measured_mse(x, alphas, *, bits, grid, half_range=False, centre=0.0):
    """Mean squared error of ``grid`` on the values ``x`` at every clipping value, and its standard error.

    .. math::

        \\widehat{\\mathrm{MSE}}(\\alpha) = \\frac1n\\sum_k \\big(x_k - \\mu - Q_\\alpha(x_k - \\mu)\\big)^2,
        \\qquad \\mathrm{se} = s/\\sqrt n

    (:func:`aciq.theory.empirical.empirical_mse` for many alphas at once; :math:`Q_\\alpha` is
    :func:`aciq.theory.grids.quantize`, :math:`\\mu` = ``centre``). Vectorised over the alphas.

    Examples
    --------
    >>> x = sample("laplace", 20_000, seed=1)
    >>> mse, se = measured_mse(x, [2.0, 5.0], bits=4, grid="midrise")
    >>> bool(abs(mse[1] - exact_mse(5.0, prior="laplace", bits=4, grid="midrise")) < 4 * se[1])
    True
    """
    x = check_data(x, "x").ravel() - float(centre)
    alphas = check_positive(alphas, "alphas").ravel()
    n = x.size
    mse, se = np.empty(alphas.size), np.empty(alphas.size)
    step = max(1, _BLOCK // n)
    for start in range(0, alphas.size, step):
        a = alphas[start:start + step, None]
        err = (x - quantize(x[None, :], alpha=a, bits=bits, grid=grid, half_range=half_range)) ** 2
        mse[start:start + step] = err.mean(axis=1)
        se[start:start + step] = err.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.nan
    return mse, se


def _grid_note(grid, bits, half_range):
    """Why a real grid has no exact error here ("" if it has one)."""
    if grid == "model":
        return "grid 'model' is the paper's objective, not a quantizer: no exact or measured error"
    if bits != round(bits):
        return f"{grid} needs integer bits: exact and measured errors only at whole bit-widths"
    if grid == "symmetric" and bits < 2 and not half_range:
        return "the signed symmetric grid needs 2 bits"
    return ""


def prior_curves(*, prior, bits, grid="model", half_range=False, n=20_000, seed=0, points=9,
                 samples=None) -> MseCurves:
    """The MSE of a unit-scale prior against alpha: eq. 5, the grid's exact error, Monte Carlo.

    .. math::

        \\mathrm{MSE}_\\text{eq. 5}(\\alpha) = 2\\int_\\alpha^\\infty (x-\\alpha)^2 f(x)\\,dx
        + \\frac{\\alpha^2}{3\\cdot 4^M}, \\qquad
        \\mathrm{MSE}_\\text{grid}(\\alpha) = \\sum_i \\int_{t_{i-1}}^{t_i} (x - l_i)^2 f(x)\\,dx

    (:func:`aciq.theory.clipping.model_mse`, :func:`aciq.theory.grids.exact_mse`), with their
    optima (:func:`aciq.theory.clipping.optimal_alpha`, :func:`aciq.theory.grids.optimal_alpha_exact`)
    and ``points`` Monte Carlo estimates on ``n`` seeded draws with their standard errors
    (``samples``: the draws to use, e.g. cached; their minimum is marked too). ``bits`` may be
    fractional: then only eq. 5 exists (integer codes need whole bits); so for ``grid="model"``.

    Examples
    --------
    >>> c = prior_curves(prior="laplace", bits=4, grid="midrise", n=5_000)
    >>> sorted(c.optima), round(c.optima["eq. 5"][0], 3)
    (['Monte Carlo', 'eq. 5', 'exact, midrise'], 5.029)
    >>> prior_curves(prior="gauss", bits=2.5, grid="gemmlowp").note
    'gemmlowp needs integer bits: exact and measured errors only at whole bit-widths'
    """
    prior = check_prior(prior)
    grid = check_grid(grid)
    bits = _scalar_bits(bits)
    half_range = bool(half_range)
    best = optimal_alpha(prior=prior, bits=bits, half_range=half_range)
    alphas = np.linspace(*_SPAN, _POINTS) * best.alpha
    curves = {"eq. 5": model_mse(alphas, prior=prior, bits=bits, half_range=half_range)}
    optima = {"eq. 5": (best.alpha, best.mse)}
    note = _grid_note(grid, bits, half_range)
    measured = None
    if not note:
        m = int(bits)
        label = f"exact, {grid}"
        curves[label] = exact_mse(alphas, prior=prior, bits=m, grid=grid, half_range=half_range)
        ex = optimal_alpha_exact(prior=prior, bits=m, grid=grid, half_range=half_range)
        optima[label] = (ex.alpha, ex.mse)
        x = samples if samples is not None else sample(prior, n, seed=seed, half_range=half_range)
        where = alphas[np.linspace(0, alphas.size - 1, points).round().astype(int)]
        mse, se = measured_mse(x, where, bits=m, grid=grid, half_range=half_range)
        measured = (where, mse, se)
        k = int(np.argmin(mse))
        optima["Monte Carlo"] = (float(where[k]), float(mse[k]))

    def at(alpha):
        out = {"eq. 5": float(model_mse(alpha, prior=prior, bits=bits, half_range=half_range))}
        if measured is not None:
            out[f"exact, {grid}"] = float(exact_mse(alpha, prior=prior, bits=int(bits), grid=grid,
                                                    half_range=half_range))
            mse, se = measured_mse(x, [alpha], bits=int(bits), grid=grid, half_range=half_range)
            out["Monte Carlo"], out["Monte Carlo stderr"] = float(mse[0]), float(se[0])
        return out

    scale = "b" if prior == "laplace" else "sigma"
    return MseCurves(title=f"{prior}{', half range' if half_range else ''}, {bits:g} bits, grid {grid}",
                     unit=scale, mse_unit=f"{scale}^2", alphas=alphas, curves=curves, optima=optima,
                     points=measured, points_label=f"Monte Carlo, n={0 if measured is None else x.size:,}",
                     note=note, _at=at)


def data_curves(x, *, bits, grid="midrise", name="tensor", points=9) -> MseCurves:
    """The MSE of quantizing the values ``x`` against alpha: eq. 5 for the fitted Laplace and Gauss
    priors, and the error measured on ``x`` itself with its standard error.

    Non-negative ``x`` (a post-ReLU tensor) is quantized on the half-range grid :math:`[0, \\alpha]`
    with the scales of its positive part (:math:`b = E[x|x>0]`, :math:`\\sigma = \\sqrt{E[x^2|x>0]}`,
    as :mod:`aciq.quant.calibrate`), the model weighted by the positive fraction :math:`p`
    (:math:`2p` times the half-range eq. 5, which assumes :math:`p = 1/2`); signed ``x`` around its
    mean :math:`\\mu` with :math:`b = E|x-\\mu|` and :math:`\\sigma` the standard deviation. The x axis
    is alpha in units of the fitted b, the MSE absolute.

    Examples
    --------
    >>> x = sample("laplace", 20_000, scale=0.5, seed=2)
    >>> c = data_curves(x, bits=4, grid="midrise")
    >>> round(c.optima["eq. 5, Laplace fit"][0], 1)  # units of the fitted b
    5.0
    """
    x = check_data(x, "x").ravel()
    grid = check_grid(grid)
    bits = _scalar_bits(bits)
    half = bool(x.min() >= 0)
    if half:
        pos = x[x > 0]
        if pos.size == 0:
            raise ValueError("x is all zeros: nothing to quantize")
        centre, weight = 0.0, 2.0 * pos.size / x.size
        scales = {"laplace": float(pos.mean()), "gauss": float(np.sqrt(np.mean(pos * pos)))}
    else:
        centre, weight = float(x.mean()), 1.0
        scales = {"laplace": float(laplace_scale(x)), "gauss": float(gauss_scale(x))}
    if min(scales.values()) <= 0:
        raise ValueError("x has no spread: nothing to quantize")
    b = scales["laplace"]
    fits = {p: optimal_alpha(prior=p, bits=bits, half_range=half, scale=scales[p]) for p in PRIORS}
    alphas = np.linspace(*_SPAN, _POINTS) * fits["laplace"].alpha
    curves, optima = {}, {}
    for p in PRIORS:
        label = f"eq. 5, {p.capitalize()} fit"
        curves[label] = weight * model_mse(alphas, prior=p, bits=bits, scale=scales[p], half_range=half)
        optima[label] = (fits[p].alpha / b, weight * fits[p].mse)
    note = _grid_note(grid, bits, half)
    measured = None
    if not note:
        m = int(bits)
        mse, se = measured_mse(x, alphas, bits=m, grid=grid, half_range=half, centre=centre)
        label = f"measured, {grid}"
        curves[label] = mse
        k = int(np.argmin(mse))
        optima[label] = (alphas[k] / b, float(mse[k]))
        pick = np.linspace(0, alphas.size - 1, points).round().astype(int)
        measured = (alphas[pick] / b, mse[pick], se[pick])

    def at(alpha):
        a = alpha * b
        out = {f"eq. 5, {p.capitalize()} fit": float(weight * model_mse(a, prior=p, bits=bits, scale=scales[p],
                                                                       half_range=half)) for p in PRIORS}
        if measured is not None:
            mse, se = measured_mse(x, [a], bits=int(bits), grid=grid, half_range=half, centre=centre)
            out[f"measured, {grid}"], out[f"measured, {grid} stderr"] = float(mse[0]), float(se[0])
        return out

    return MseCurves(title=f"{name}{' (half range)' if half else ''}, {bits:g} bits, grid {grid}",
                     unit="b (fitted)", mse_unit="absolute", alphas=alphas / b, curves=curves, optima=optima,
                     points=measured, points_label=f"measured on {x.size:,} values", note=note, _at=at)


class Explorer:
    """What the notebook's widgets call: cached curves and samples, and one ``show_*`` per panel.

    ``tensors`` maps a name to values of a measured tensor (offered next to the priors); ``sites``
    maps a name to an object whose ``figure()`` draws that layer's panel (e.g.
    :class:`aciq.quant.explore.SiteView`). ``n`` and ``seed`` fix the Monte Carlo sample of each prior,
    drawn once. The ``show_*`` methods render the figure to PNG (Agg) and display it (IPython); the
    ``*_figure`` methods return the :class:`matplotlib.figure.Figure` instead.

    Examples
    --------
    >>> ex = Explorer(n=2_000)
    >>> fig = ex.mse_figure(prior="laplace", bits=3, grid="gemmlowp", half_range=False, alpha=4.0)
    >>> len(ex._curves), len(fig.axes)
    (1, 1)
    """

    def __init__(self, *, tensors=None, sites=None, n: int = 20_000, seed: int = 0, dpi: int = 96):
        self.tensors = dict(tensors or {})
        self.sites = dict(sites or {})
        self.n, self.seed, self.dpi = n, seed, dpi
        self._samples: dict = {}
        self._curves: dict = {}

    @property
    def sources(self) -> list:
        """What the prior control offers: the priors, then the tensors."""
        return [*PRIORS, *self.tensors]

    def curves(self, *, prior, bits, grid, half_range=False) -> MseCurves:
        """The curves of one setting, computed once."""
        key = (prior, float(bits), grid, bool(half_range) and prior in PRIORS)
        if key not in self._curves:
            if prior in self.tensors:
                self._curves[key] = data_curves(self.tensors[prior], bits=bits, grid=grid, name=prior)
            else:
                if prior not in PRIORS:
                    raise ValueError(f"prior must be one of {self.sources}, got {prior!r}")
                skey = (prior, bool(half_range))
                if skey not in self._samples:
                    self._samples[skey] = sample(prior, self.n, seed=self.seed, half_range=half_range)
                self._curves[key] = prior_curves(prior=prior, bits=bits, grid=grid, half_range=half_range,
                                                 samples=self._samples[skey])
        return self._curves[key]

    def mse_figure(self, *, prior, bits, grid, half_range=False, alpha=None):
        from .figures import mse_curves

        return mse_curves(curves=self.curves(prior=prior, bits=bits, grid=grid, half_range=half_range), alpha=alpha)

    def allocation_figure(self, *, avg_bits, budget="bins", max_bits=8, **channels):
        """``channels``: the ranges, one keyword each (``alpha_0=1.0, alpha_1=2.0, ...``, in name order)."""
        from .figures import allocation_bars

        return allocation_bars([channels[k] for k in sorted(channels)], avg_bits=avg_bits, budget=budget,
                               max_bits=max_bits)

    def site_figure(self, *, site):
        if site not in self.sites:
            raise ValueError(f"site must be one of {list(self.sites)}, got {site!r}")
        return self.sites[site].figure()

    def png(self, fig) -> bytes:
        """The figure as PNG bytes (Agg)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi)
        return buf.getvalue()

    def _show(self, make, controls) -> None:
        """Display ``make(**controls)`` as a PNG, or the one-line message of a ValueError (a setting
        the maths refuses, e.g. more average bits than the cap) instead of a traceback."""
        from IPython.display import Image, display

        try:
            fig = make(**controls)
        except ValueError as exc:
            print(f"not drawn: {exc}")
            return
        display(Image(data=self.png(fig)))

    def show_mse(self, **controls) -> None:
        self._show(self.mse_figure, controls)

    def show_allocation(self, **controls) -> None:
        self._show(self.allocation_figure, controls)

    def show_site(self, **controls) -> None:
        self._show(self.site_figure, controls)
