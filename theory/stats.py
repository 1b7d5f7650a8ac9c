r"""Calibration statistics: the scale of the prior, per tensor or per channel, and the choice of prior.

ACIQ needs the scale of the assumed density of a tensor: the Laplace :math:`b` or the Gaussian
:math:`\sigma`. Both are estimated from the tensor itself, as in the paper and the seed:

* :math:`b = \mathbb{E}\,|x - \mathbb{E}x|`, the mean absolute deviation about the **mean** (the
  maximum-likelihood estimate would use the median; the seed and the paper use the mean);
* :math:`\sigma` = the sample standard deviation with ``ddof=1`` (``torch.std``'s default, which
  the seed uses).

Per channel: ``axis`` names the **channel** axis and the statistics are taken over all the other
axes (``axis=1`` for NCHW activations, one value per channel over N, H, W; ``axis=0`` for OIHW
weights); ``axis=None`` treats the tensor as one channel. A channel with no spread (all values
equal, or a single value) has scale exactly 0 (the quantizer then uses a zero range), never NaN.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln

from ._common import PRIORS, QUANTIZER_GRIDS, check_bits, check_data, check_grid, check_prior

METHODS = ("empirical", "predicted")


# --------------------------------------------------------------------------- helpers
def _channels(x, axis) -> tuple[np.ndarray, bool]:
    """x as rows [channels, samples] (one row for axis=None), and whether to return scalars."""
    arr = check_data(x, "x")
    if axis is None:
        return arr.reshape(1, -1), True
    if arr.ndim == 0:
        raise ValueError("x must have at least one dimension when axis is given")
    try:
        axis = operator.index(axis)
    except TypeError as exc:
        raise ValueError(f"axis must be an integer or None, got {axis!r}") from exc
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis {axis} is out of range for x with {arr.ndim} dimensions")
    rows = np.moveaxis(arr, axis, 0)
    return rows.reshape(rows.shape[0], -1), False


def _out(values: np.ndarray, scalar: bool):
    return float(values[0]) if scalar else values


def _constant(rows: np.ndarray) -> np.ndarray:
    return rows.max(axis=1) == rows.min(axis=1)


def _laplace_rows(rows: np.ndarray) -> np.ndarray:
    b = np.abs(rows - rows.mean(axis=1, keepdims=True)).mean(axis=1)
    return np.where(_constant(rows), 0.0, b)


def _gauss_rows(rows: np.ndarray) -> np.ndarray:
    n = rows.shape[1]
    if n < 2:
        return np.zeros(rows.shape[0])
    sigma = rows.std(axis=1, ddof=1)
    return np.where(_constant(rows), 0.0, sigma)


# --------------------------------------------------------------------------- scales
def laplace_scale(x, *, axis=None):
    r"""Laplace scale :math:`b = \mathbb{E}|x - \mathbb{E}x|` per tensor or per channel.

    .. math::

        \hat b = \frac1n \sum_{k=1}^n |x_k - \bar x|

    The mean absolute deviation about the mean, as the paper and the seed (``IQ:520``); for a
    Laplace(:math:`\mu`, b) sample it converges to b.

    Parameters
    ----------
    x : array_like
        The tensor (finite, non-empty).
    axis : int or None
        The channel axis: one value per index along it, over all other axes. None: one value.

    Returns
    -------
    float or numpy.ndarray

    Examples
    --------
    >>> laplace_scale([1.0, 2.0, 3.0, 6.0])  # mean 3: (2 + 1 + 0 + 3) / 4
    1.5
    >>> laplace_scale([[1.0, 1.0], [0.0, 4.0]], axis=0).tolist()  # rows are channels
    [0.0, 2.0]
    """
    rows, scalar = _channels(x, axis)
    return _out(_laplace_rows(rows), scalar)


def gauss_scale(x, *, axis=None):
    r"""Gaussian scale :math:`\sigma`: the sample standard deviation with ``ddof=1``.

    .. math::

        \hat\sigma = \sqrt{\frac{1}{n-1}\sum_{k=1}^n (x_k - \bar x)^2}

    ``ddof=1`` matches ``torch.std``, which the seed uses (``IQ:522``); the difference from
    ``ddof=0`` is a factor :math:`\sqrt{n/(n-1)}`, negligible for activations. A channel with a
    single value has :math:`\hat\sigma = 0` (no spread seen), not NaN.

    Examples
    --------
    >>> round(gauss_scale([1.0, 2.0, 3.0, 6.0]), 6)  # sqrt(14 / 3)
    2.160247
    >>> gauss_scale([[5.0], [7.0]], axis=0).tolist()
    [0.0, 0.0]
    """
    rows, scalar = _channels(x, axis)
    return _out(_gauss_rows(rows), scalar)


def estimate_scale(x, *, prior, axis=None):
    """The scale of ``prior`` estimated from ``x``: :func:`laplace_scale` or :func:`gauss_scale`.

    Examples
    --------
    >>> estimate_scale([1.0, 2.0, 3.0, 6.0], prior="laplace")
    1.5
    """
    prior = check_prior(prior)
    return laplace_scale(x, axis=axis) if prior == "laplace" else gauss_scale(x, axis=axis)


# --------------------------------------------------------------------------- all statistics
@dataclass(frozen=True)
class ChannelStats:
    """Calibration statistics, floats per tensor or arrays per channel.

    ``std`` uses ``ddof=1`` (as :func:`gauss_scale`), ``b`` is :func:`laplace_scale`, ``count``
    the number of values per channel and ``kurtosis`` the excess kurtosis
    :math:`m_4/m_2^2 - 3` (biased moments, ``scipy.stats.kurtosis``'s default; 3 for Laplace, 0 for
    Gauss), defined as 0 for a constant channel.
    """

    mean: float | np.ndarray
    min: float | np.ndarray
    max: float | np.ndarray
    std: float | np.ndarray
    b: float | np.ndarray
    count: int
    kurtosis: float | np.ndarray


def channel_stats(x, *, axis=None) -> ChannelStats:
    r"""Mean, min, max, std, Laplace b, count and excess kurtosis, per tensor or per channel.

    .. math::

        \kappa = \frac{\frac1n\sum (x_k-\bar x)^4}{\big(\frac1n\sum (x_k-\bar x)^2\big)^2} - 3

    Examples
    --------
    >>> s = channel_stats([[0.0, 2.0], [1.0, 1.0]], axis=0)
    >>> s.mean.tolist(), s.b.tolist(), s.count, s.kurtosis.tolist()
    ([1.0, 1.0], [1.0, 0.0], 2, [-2.0, 0.0])
    """
    rows, scalar = _channels(x, axis)
    centred = rows - rows.mean(axis=1, keepdims=True)
    m2 = np.mean(centred**2, axis=1)
    m4 = np.mean(centred**4, axis=1)
    constant = _constant(rows) | (m2 == 0)
    kurt = np.where(constant, 0.0, m4 / np.where(constant, 1.0, m2) ** 2 - 3.0)
    return ChannelStats(
        mean=_out(rows.mean(axis=1), scalar), min=_out(rows.min(axis=1), scalar),
        max=_out(rows.max(axis=1), scalar), std=_out(_gauss_rows(rows), scalar),
        b=_out(_laplace_rows(rows), scalar), count=int(rows.shape[1]), kurtosis=_out(kurt, scalar),
    )


# --------------------------------------------------------------------------- generalized Gaussian
@dataclass(frozen=True)
class GeneralizedGaussianFit:
    """Shape ``beta`` (1: Laplace, 2: Gauss), ``scale`` s and ``mean`` of the density
    :math:`\\propto \\exp(-|x-\\mu|^\\beta / s^\\beta)`; ``converged`` is False where the sample
    ratio fell outside the solver's bracket (``beta`` is then the bracket end) or the channel is
    constant (``beta`` 2, ``scale`` 0)."""

    beta: float | np.ndarray
    scale: float | np.ndarray
    mean: float | np.ndarray
    converged: bool | np.ndarray


_BETA_BRACKET = (0.05, 50.0)


def _log_ratio(beta):
    """log of E|x| / sqrt(E x^2) for the generalized Gaussian of shape beta."""
    return gammaln(2 / beta) - 0.5 * (gammaln(1 / beta) + gammaln(3 / beta))


def fit_generalized_gaussian(x, *, axis=None) -> GeneralizedGaussianFit:
    r"""Fit a generalized Gaussian by matching :math:`\mathbb{E}|x-\mu|/\sqrt{\mathbb{E}(x-\mu)^2}`.

    For the density :math:`\frac{\beta}{2s\Gamma(1/\beta)} e^{-(|x-\mu|/s)^\beta}`,

    .. math::

        \frac{\mathbb{E}|x-\mu|}{\sqrt{\mathbb{E}(x-\mu)^2}}
        = \frac{\Gamma(2/\beta)}{\sqrt{\Gamma(1/\beta)\,\Gamma(3/\beta)}},
        \qquad s = \mathbb{E}|x-\mu|\,\frac{\Gamma(1/\beta)}{\Gamma(2/\beta)},

    which rises from 0 (:math:`\beta\to0`) through :math:`1/\sqrt2` (Laplace, :math:`\beta=1`) and
    :math:`\sqrt{2/\pi}` (Gauss, :math:`\beta=2`) to :math:`\sqrt3/2` (uniform,
    :math:`\beta\to\infty`). The sample ratio (moments about the sample mean, ``ddof=0``) is solved
    for :math:`\beta` with ``brentq`` on :math:`[0.05, 50]`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> fit = fit_generalized_gaussian(rng.laplace(scale=2.0, size=100_000))
    >>> round(fit.beta, 1), round(fit.scale, 1), fit.converged
    (1.0, 2.0, True)
    >>> fit_generalized_gaussian([-1.0, 1.0, -1.0, 1.0]).converged  # two points: flatter than uniform
    False
    """
    rows, scalar = _channels(x, axis)
    centred = rows - rows.mean(axis=1, keepdims=True)
    m1 = np.abs(centred).mean(axis=1)
    m2 = np.mean(centred**2, axis=1)
    constant = _constant(rows) | (m2 == 0)
    lo, hi = _BETA_BRACKET
    r_lo, r_hi = _log_ratio(lo), _log_ratio(hi)
    beta = np.full(rows.shape[0], 2.0)
    converged = np.zeros(rows.shape[0], dtype=bool)
    for i in np.flatnonzero(~constant):
        target = np.log(m1[i]) - 0.5 * np.log(m2[i])
        if target <= r_lo:
            beta[i] = lo
        elif target >= r_hi:
            beta[i] = hi
        else:
            beta[i] = np.exp(brentq(lambda t: _log_ratio(np.exp(t)) - target, np.log(lo), np.log(hi),
                                    xtol=1e-14, rtol=1e-14))
            converged[i] = True
    scale = np.where(constant, 0.0, m1 * np.exp(gammaln(1 / beta) - gammaln(2 / beta)))
    if scalar:
        return GeneralizedGaussianFit(beta=float(beta[0]), scale=float(scale[0]),
                                      mean=float(rows.mean()), converged=bool(converged[0]))
    return GeneralizedGaussianFit(beta=beta, scale=scale, mean=rows.mean(axis=1), converged=converged)


# --------------------------------------------------------------------------- choice of prior
@dataclass(frozen=True)
class PriorChoice:
    """Which prior clips ``x`` best, per tensor or per channel.

    ``prior`` is the winner (a str, or an array of str per channel), ``alpha`` and ``mse`` the
    winner's clipping value and error; ``scales``, ``alphas`` and ``errors`` map each candidate
    prior to its estimated scale, its alpha and its error (measured or predicted, per ``method``).
    """

    prior: str | np.ndarray
    alpha: float | np.ndarray
    mse: float | np.ndarray
    scales: dict
    alphas: dict
    errors: dict
    method: str
    bits: float
    grid: str
    half_range: bool


def choose_prior(x, *, bits, axis=None, grid="midrise", half_range=False,
                 method="empirical") -> PriorChoice:
    r"""Pick, per tensor or per channel, the prior whose ACIQ clipping quantizes ``x`` best.

    The seed's ``mix`` clipping, made to work: for each prior in {Laplace, Gauss}, estimate its
    scale (:func:`estimate_scale`), take the paper's optimal clipping value
    :math:`\alpha^*` (:func:`aciq.theory.clipping.optimal_alpha`, ``grid="model"``), and score it;
    the lower error wins (ties go to Laplace).

    * ``method="empirical"`` (default): the measured error
      :math:`\frac1n\sum_k (x_k - \hat x_k)^2` of quantizing ``x`` with that :math:`\alpha` on
      ``grid`` (:func:`aciq.theory.grids.quantize`). Symmetric: the window is centred on the mean,
      :math:`\hat x = \bar x + Q(x - \bar x)` on :math:`[-\alpha, \alpha]`. Half range (fused ReLU,
      as the seed's ``alpha2DeltaOffset``): the window is :math:`[0, \max(\bar x, 0) + \alpha]`.
    * ``method="predicted"``: the exact error of ``grid`` under the fitted prior itself
      (:func:`aciq.theory.grids.exact_mse`). It assumes the data follow each candidate in turn, so
      it says how well each model thinks it does, not which one fits: on seeded Laplace *and*
      Gaussian samples (2-8 bits, midrise) it always picks the lighter-tailed Gauss. A diagnostic,
      not a selector; use ``"empirical"`` to choose.

    A channel with no spread has scale 0, alpha 0 and error 0 under both priors (Laplace wins).

    Parameters
    ----------
    x : array_like
        The tensor to quantize.
    bits : float
        Bit-width M >= 1.
    axis : int or None
        Channel axis (None: one choice for the whole tensor).
    grid : {"midrise", "gemmlowp", "symmetric", "midtread"}
        The quantizer that runs (:mod:`aciq.theory.grids`; integer ``bits``).
    half_range : bool
        Quantize :math:`\max(x, 0)` on :math:`[0, \cdot]` (post-ReLU, or a fused ReLU); the error is
        measured against :math:`\max(x, 0)`.
    method : {"empirical", "predicted"}

    Returns
    -------
    PriorChoice

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> choose_prior(rng.laplace(size=20_000), bits=4).prior
    'laplace'
    >>> choose_prior(rng.normal(size=20_000), bits=4).prior
    'gauss'
    """
    from .clipping import optimal_alpha
    from .grids import quantize

    bits = float(check_bits(bits, "bits"))
    grid = check_grid(grid, allowed=QUANTIZER_GRIDS)
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    method = method.lower()
    rows, scalar = _channels(x, axis)
    mean = rows.mean(axis=1)
    scales, alphas, errors = {}, {}, {}
    for prior in PRIORS:
        scale = _laplace_rows(rows) if prior == "laplace" else _gauss_rows(rows)
        active = scale > 0
        alpha = np.zeros_like(scale)
        err = np.zeros_like(scale)
        if np.any(active):
            alpha[active] = optimal_alpha(prior=prior, bits=bits, scale=scale[active],
                                          half_range=half_range).alpha
            if method == "empirical":
                sub, a, m = rows[active], alpha[active][:, None], mean[active][:, None]
                if half_range:
                    target = np.maximum(sub, 0.0)
                    x_hat = quantize(sub, alpha=np.maximum(m, 0.0) + a, bits=bits, grid=grid, half_range=True)
                else:
                    target = sub
                    x_hat = m + quantize(sub - m, alpha=a, bits=bits, grid=grid)
                err[active] = np.mean((target - x_hat) ** 2, axis=1)
            else:
                err[active] = _predicted_mse(alpha[active], prior, bits, grid, scale[active], half_range)
        scales[prior], alphas[prior], errors[prior] = scale, alpha, err
    gauss_wins = errors["gauss"] < errors["laplace"]
    winner = np.where(gauss_wins, "gauss", "laplace")
    alpha = np.where(gauss_wins, alphas["gauss"], alphas["laplace"])
    mse = np.where(gauss_wins, errors["gauss"], errors["laplace"])
    if scalar:
        return PriorChoice(prior=str(winner[0]), alpha=float(alpha[0]), mse=float(mse[0]),
                           scales={k: float(v[0]) for k, v in scales.items()},
                           alphas={k: float(v[0]) for k, v in alphas.items()},
                           errors={k: float(v[0]) for k, v in errors.items()},
                           method=method, bits=bits, grid=grid, half_range=bool(half_range))
    return PriorChoice(prior=winner, alpha=alpha, mse=mse, scales=scales, alphas=alphas, errors=errors,
                       method=method, bits=bits, grid=grid, half_range=bool(half_range))


def _predicted_mse(alpha, prior, bits, grid, scale, half_range):
    try:
        from .grids import exact_mse
    except ImportError as exc:  # pragma: no cover - grids.exact_mse is part of the package
        raise ValueError("method='predicted' needs aciq.theory.grids.exact_mse") from exc
    return np.asarray(exact_mse(alpha, prior=prior, bits=bits, grid=grid, scale=scale, half_range=half_range),
                      dtype=float)
