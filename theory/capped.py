r"""Clipping a bounded (capped) activation: ReLU6, hardtanh and the like.

The input of the layer after a ReLU6 is non-negative and at most the cap :math:`c` (6). It is quantized
on the half-range grid :math:`[0, \alpha]`. Its zeros are exact on that grid (0 is a level) and do not
enter the error; the positive values are a mixture of

* an **atom** at the cap: a fraction :math:`p_c` of the positive values saturated at exactly :math:`c`
  (measured on the calibration data, not implied by the prior);
* a **continuous part** on :math:`(0, c)`, modelled as the half-range prior truncated to :math:`(0, c)`:
  :math:`g(x) = f(x)/F(c)` with :math:`f(x) = e^{-x/b}/b` (``prior="laplace"``: the Laplace tail, an
  exponential) or :math:`f(x) = \sqrt{2/\pi}\,e^{-x^2/(2\sigma^2)}/\sigma` (``"gauss"``: half-normal),
  :math:`F(c) = \int_0^c f`.

A clipping value above the cap only wastes levels, so :math:`\alpha \in (0, c]`. The error per positive
value, with the paper's noise model (eq. 5, as :mod:`aciq.theory.clipping` uses it for the uncapped
half-range tensor: :math:`2^M` cells of width :math:`\Delta = \alpha/2^M` and :math:`\Delta^2/12`
charged to the whole continuous part, the clipped part included), is

.. math::

    \mathrm{MSE}(\alpha) = (1-p_c)\int_\alpha^c (x-\alpha)^2 g(x)\,dx
        + p_c\,(c-\alpha)^2 + (1-p_c)\,\frac{\alpha^2}{12\cdot 4^M} .

The atom carries no rounding noise: below the cap it is clipped to the top level :math:`\alpha`, at
:math:`\alpha = c` it lies on it (error 0). As :math:`c \to \infty`, :math:`p_c \to 0` this is twice
(the positive half of the mass) the uncapped half-range model,
:math:`\int_\alpha^\infty (x-\alpha)^2 f/2 + \alpha^2/(24\cdot 4^M)`.
:math:`\mathrm{MSE}'' = 2(1-p_c)(F(c) - F(\alpha))/F(c) + 2p_c + 2(1-p_c)/(12\cdot4^M) > 0`: the model
is strictly convex on :math:`(0, c]`, so its optimum is the one root of :math:`\mathrm{MSE}'`, and since
:math:`\mathrm{MSE}'(c) = 2(1-p_c)\,c/(12\cdot 4^M) > 0` it lies **strictly below the cap** whenever
:math:`p_c < 1`: the clipping error of the atom grows only quadratically below :math:`c`, the noise it
saves linearly. :mod:`aciq.theory.capped_derivation` derives all of this with sympy.

``grid="gemmlowp"`` is the exact error of the grid that runs instead of the model: levels
:math:`k\alpha/(2^M-1)`, :math:`k = 0..2^M-1`, round to nearest, summed cell by cell in closed form
(:mod:`aciq.theory.priors`), the atom exactly :math:`p_c(c-\alpha)^2`.

Calibration measures the mean (or the mean square) of the values in :math:`(0, c)`, zeros and atom
excluded; :func:`fit_capped_scale` inverts the truncated prior's moment for its scale. A continuous part
that is no longer decreasing (mean :math:`\ge c/2`, mean square :math:`\ge c^2/3`) is fitted by the
uniform limit of both priors, ``scale = inf``, which every function here accepts.

Units: ``alpha``, ``cap`` and ``scale`` are absolute and share units; MSE is per positive value, in
those units squared (multiply by :math:`P(X > 0)` for the error per element).

Examples
--------
>>> res = optimal_alpha_capped(prior="laplace", bits=4, cap=6.0, scale=1.0, cap_mass=0.05)
>>> round(res.alpha, 4), bool(res.at_cap), bool(res.mse < res.mse_at_cap)
(5.9632, False, True)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import elementwise
from scipy.special import erf, gammainc

from ._common import _as_float_array, check_bits, check_grid, check_positive, check_prior, scalar_or_array
from .grids import _check_int_bits
from .priors import _GL_NODES, _GL_WEIGHTS, _GL_WIDTH, _gauss_mass, _phi, _unit_cell_error

__all__ = ["CAPPED_GRIDS", "CappedClipping", "CappedFit", "capped_mse", "optimal_alpha_capped",
           "capped_moments", "fit_capped_scale"]

CAPPED_GRIDS = ("model", "gemmlowp")
"""``model``: the paper's noise model (Delta^2/12, Delta = alpha/2^M); ``gemmlowp``: the exact error of
the half-range gemmlowp grid that runs."""

_TINY = 1e-80        # c/scale below this is the uniform limit (to 1e-80 relative)
_CHUNK = 1 << 18     # cells x values evaluated at once
_SCAN = np.geomspace(0.125, 4.0, 25)  # the exact optimum's scan: units of the model's alpha, and of c - alpha


@dataclass(frozen=True)
class CappedClipping:
    """The optimal clipping value of a capped activation, :math:`0 < \\alpha \\le c`.

    ``alpha`` (absolute units), ``mse`` at ``alpha`` and ``mse_at_cap`` at ``alpha = cap`` (per
    positive value, absolute units squared), ``at_cap`` where the boundary ``alpha = cap`` wins,
    ``converged`` when every solve met its tolerance. Floats for scalar input, arrays otherwise.
    """

    alpha: float | np.ndarray
    mse: float | np.ndarray
    mse_at_cap: float | np.ndarray
    at_cap: bool | np.ndarray
    converged: bool
    prior: str
    grid: str


@dataclass(frozen=True)
class CappedFit:
    """The scale of the continuous part fitted to one measured moment (:func:`fit_capped_scale`).

    ``scale`` is ``inf`` where the moment is at or beyond the uniform limit (``uniform`` True there);
    ``moment`` is ``"mean"`` or ``"mean_square"``.
    """

    scale: float | np.ndarray
    uniform: bool | np.ndarray
    converged: bool
    prior: str
    moment: str


# --------------------------------------------------------------------------- validation
def _check_scale(scale) -> np.ndarray:
    """> 0, +inf allowed (the uniform limit)."""
    arr = _as_float_array(scale, "scale")
    if np.any(np.isnan(arr)) or np.any(arr <= 0):
        raise ValueError(f"scale must be > 0 (inf for the uniform limit), got {scale!r}")
    return arr


def _check_mass(cap_mass) -> np.ndarray:
    arr = _as_float_array(cap_mass, "cap_mass")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"cap_mass must lie in [0, 1], got {cap_mass!r}")
    return arr


def _check_bits(bits, grid) -> np.ndarray:
    return check_bits(bits) if grid == "model" else _check_int_bits(bits, "gemmlowp", True)


def _unit_lam(cap, scale):
    """c / scale, 0 for the uniform limit."""
    with np.errstate(divide="ignore"):
        return np.where(np.isinf(scale), 0.0, cap / np.where(np.isinf(scale), 1.0, scale))


# --------------------------------------------------------------------------- the unit problem
# Units of the cap: u = alpha / c in (0, 1], lam = c / scale in [0, inf) (0: uniform), and the continuous
# part g_lam(y) = lam f1(lam y) / N(lam) on (0, 1), f1 the unit half-range density on (0, inf) as priors.py
# writes it (Laplace: exp(-z)/2, Gauss: phi(z)), N(lam) its mass on (0, lam).

def _mass(lam, prior):
    """N(lam) = integral of the unit density over (0, lam)."""
    return -0.5 * np.expm1(-lam) if prior == "laplace" else 0.5 * erf(lam / np.sqrt(2.0))


def _gauss_shifted(a, b):
    """Integrals over [a, b] (0 <= a <= b < inf) of (z - a)^k phi(z), k = 0, 1, 2: 16-point
    Gauss-Legendre in the shifted variable for intervals at most one sigma wide (exact to rounding, the
    integrand is entire), the closed forms for wider ones."""
    h = b - a
    t = 0.5 * h[..., None] * (1.0 + _GL_NODES)
    w = 0.5 * h[..., None] * _GL_WEIGHTS * _phi(a[..., None] + t)
    quad = (w.sum(-1), (w * t).sum(-1), (w * t * t).sum(-1))
    i0 = _gauss_mass(a, b)
    pa, pb = _phi(a), _phi(b)
    closed = (i0, pa - pb - a * i0, (1.0 + a * a) * i0 - a * pa - (b - 2.0 * a) * pb)
    narrow = h <= _GL_WIDTH
    return tuple(np.where(narrow, q, c) for q, c in zip(quad, closed))


def _tail_integrals(u, lam, prior):
    """J_k(u) = integral over (u, 1) of (y - u)^k g_lam(y), k = 0, 1, 2, stably (shifted variable)."""
    u, lam = np.broadcast_arrays(np.asarray(u, float), np.asarray(lam, float))
    h = 1.0 - u
    uniform = lam < _TINY
    lam_s = np.where(uniform, 1.0, lam)
    if prior == "laplace":
        # lam e^{-lam u} / (2N) * integral_0^h s^k e^{-lam s} ds = e^{-lam u} k! P(k+1, lam h) / (lam^k 2N)
        front = np.exp(-lam_s * u) / (2.0 * _mass(lam_s, prior))
        x = lam_s * h
        js = (front * gammainc(1.0, x), front * gammainc(2.0, x) / lam_s,
              front * 2.0 * gammainc(3.0, x) / lam_s**2)
    else:
        i0, i1, i2 = _gauss_shifted(lam_s * u, lam_s)
        n = _mass(lam_s, prior)
        js = (i0 / n, i1 / (lam_s * n), i2 / (lam_s**2 * n))
    flat = (h, h * h / 2.0, h**3 / 3.0)
    return tuple(np.where(uniform, f, j) for f, j in zip(flat, js))


def _noise_factor(bits):
    """The model's noise per unit alpha^2: (alpha/2^M)^2 / 12."""
    return np.exp2(-2.0 * bits) / 12.0


def _unit_model(u, lam, p, nu, prior):
    _, _, j2 = _tail_integrals(u, lam, prior)
    return (1.0 - p) * (j2 + nu * u * u) + p * (1.0 - u) ** 2


def _unit_cells(lo, hi, level, lam, prior):
    """Integral over each cell [lo, hi] in (0, 1) of (y - level)^2 g_lam(y)."""
    uniform = lam < _TINY
    lam_s = np.where(uniform, 1.0, lam)
    scaled = _unit_cell_error(lam_s * lo, lam_s * hi, lam_s * level, prior) / (lam_s**2 * _mass(lam_s, prior))
    flat = ((hi - level) ** 3 - (lo - level) ** 3) / 3.0
    return np.where(uniform, flat, scaled)


def _unit_exact(u, lam, p, m, prior):
    """Exact error of the half-range gemmlowp grid at u (any shape), one integer bit-width m."""
    shape = np.broadcast(u, lam, p).shape
    u, lam, p = (np.broadcast_to(a, shape).ravel() for a in (u, lam, p))
    qmax = (1 << m) - 1
    k = np.arange(qmax + 1, dtype=np.float64)
    out = np.empty(u.size)
    step = max(1, _CHUNK // k.size)
    for start in range(0, u.size, step):
        sl = slice(start, start + step)
        d = (u[sl] / qmax)[:, None]
        lo = np.maximum((k - 0.5) * d, 0.0)
        hi = (k + 0.5) * d
        hi[:, -1] = 1.0  # everything above the top level's threshold goes to alpha (clipped)
        cells = _unit_cells(lo, hi, k * d, lam[sl, None], prior).sum(axis=1)
        out[sl] = (1.0 - p[sl]) * cells + p[sl] * (1.0 - u[sl]) ** 2
    return out.reshape(shape)


# --------------------------------------------------------------------------- public
def capped_mse(alpha, *, prior, bits, cap, scale, cap_mass, grid="model"):
    r"""Mean squared error per positive value of clipping a capped activation to :math:`[0, \alpha]`.

    .. math::

        \mathrm{MSE}(\alpha) = (1-p_c)\,\frac{\int_\alpha^c (x-\alpha)^2 f(x)\,dx}{F(c)}
            + p_c\,(c-\alpha)^2 + (1-p_c)\,\frac{\alpha^2}{12\cdot 4^M}
        \qquad (0 < \alpha \le c)

    for ``grid="model"`` (the module docstring explains each term); ``grid="gemmlowp"`` replaces the
    last term and the tail by the exact error of the grid :math:`\{k\alpha/(2^M-1)\}`:
    :math:`(1-p_c)\sum_k\int_{cell_k}(x - l_k)^2 g(x)\,dx + p_c(c-\alpha)^2`. Closed forms (Laplace:
    incomplete gamma functions in the shifted variable; Gauss: erf, or Gauss-Legendre for intervals
    under one sigma).

    Parameters
    ----------
    alpha : array_like
        Clipping value(s), ``0 < alpha <= cap``.
    prior : {"laplace", "gauss"}
        The continuous part: exponential (the Laplace tail) or half-normal, truncated to ``(0, cap)``.
    bits : array_like
        M >= 1 (fractional allowed for ``"model"``; integers up to 16 for ``"gemmlowp"``).
    cap : array_like
        The activation's cap c > 0 (6 for ReLU6).
    scale : array_like
        The prior's ``b`` or ``sigma`` (> 0; ``inf``: the uniform limit).
    cap_mass : array_like
        :math:`p_c \in [0, 1]`: the fraction of the positive values that sit exactly at the cap.
    grid : {"model", "gemmlowp"}

    Returns
    -------
    float or ndarray
        Broadcast over every array argument; absolute units squared.

    Examples
    --------
    At the cap only the continuous part's noise is left, :math:`0.9\cdot 6^2/(12\cdot 4^4)`:

    >>> round(capped_mse(6.0, prior="laplace", bits=4, cap=6.0, scale=1.0, cap_mass=0.1), 6)
    0.010547
    >>> round(capped_mse(5.0, prior="laplace", bits=4, cap=6.0, scale=1.0, cap_mass=0.1), 5)
    0.1083
    >>> round(capped_mse(5.0, prior="laplace", bits=4, cap=6.0, scale=1.0, cap_mass=0.1, grid="gemmlowp"), 5)
    0.10925

    The uniform limit, clipped at half the cap: :math:`6^2 (1/2)^3/3 + 3^2/(12\cdot 4^2)`:

    >>> capped_mse(3.0, prior="gauss", bits=2, cap=6.0, scale=np.inf, cap_mass=0.0)
    1.546875
    """
    prior = check_prior(prior)
    grid = check_grid(grid, allowed=CAPPED_GRIDS)
    alpha = check_positive(alpha, "alpha")
    bits = _check_bits(bits, grid)
    cap = check_positive(cap, "cap")
    scale = _check_scale(scale)
    p = _check_mass(cap_mass)
    alpha, bits, cap, scale, p = np.broadcast_arrays(alpha, bits, cap, scale, p)
    if np.any(alpha > cap):
        raise ValueError("alpha must be <= cap (a clipping value above the cap only wastes levels)")
    u, lam = alpha / cap, _unit_lam(cap, scale)
    if grid == "model":
        unit = _unit_model(u, lam, p, _noise_factor(bits), prior)
    else:
        unit = np.empty(u.shape)
        for m in np.unique(bits):
            sel = bits == m
            unit[sel] = _unit_exact(u[sel], lam[sel], p[sel], int(m), prior)
    return scalar_or_array(unit * cap**2)


def _model_root(lam, p, nu, prior):
    """The model's optimum u in (0, 1]: the root of MSE'/2 = (1-p)(nu u - J_1(u)) - p (1-u), increasing
    in u (MSE is strictly convex), negative at 0 and (1-p) nu > 0 at 1; u = 1 where p = 1."""
    def slope(u, lam, p, nu):
        return (1.0 - p) * (nu * u - _tail_integrals(u, lam, prior)[1]) - p * (1.0 - u)

    u = np.ones(lam.shape)
    inside = p < 1.0
    if not np.any(inside):
        return u, True
    res = elementwise.find_root(slope, (np.zeros(np.count_nonzero(inside)), 1.0),
                                args=(lam[inside], p[inside], nu[inside]))
    u[inside] = res.x
    return u, bool(np.all(res.success))


def _exact_optimum(lam, p, m, u_model, prior):
    """The exact grid's optimum for one bit-width: a scan around the model's optimum u_m, 25 points
    over [u_m/8, 4 u_m] and 25 whose distance to the cap spans [(1 - u_m)/8, 4 (1 - u_m)] (the optimum
    is often just below the cap), all within (0, 1], plus u = 1; then Chandrupatla's minimiser between
    the best point's neighbours. Returns (u, unit mse, converged: False where the best is the lowest)."""
    low = 0.5 * _SCAN[0] * u_model[:, None]
    us = np.concatenate([u_model[:, None] * _SCAN, 1.0 - (1.0 - u_model[:, None]) * _SCAN], axis=1)
    us = np.sort(np.concatenate([np.clip(us, low, 1.0), np.ones((us.shape[0], 1))], axis=1), axis=1)
    vals = _unit_exact(us, lam[:, None], p[:, None], m, prior)
    rows = np.arange(us.shape[0])
    best = np.argmin(vals, axis=1)  # the first of equal values, so us[best - 1] < us[best]
    u, unit = us[rows, best], vals[rows, best]
    interior = (best > 0) & (u < 1.0)
    converged = not np.any(best == 0)
    if np.any(interior):
        i, b = rows[interior], best[interior]
        right = np.argmax(us[i] > u[i, None], axis=1)  # the first point above (u = 1 is always there)
        res = elementwise.find_minimum(lambda x, lam, p: _unit_exact(x, lam, p, m, prior),
                                       (us[i, b - 1], u[i], us[i, right]), args=(lam[i], p[i]))
        better = res.f_x <= unit[i]
        u[i] = np.where(better, res.x, u[i])
        unit[i] = np.where(better, res.f_x, unit[i])
        converged = converged and bool(np.all(res.success))
    return u, unit, converged


def optimal_alpha_capped(*, prior, bits, cap, scale, cap_mass, grid="model") -> CappedClipping:
    r"""The clipping value :math:`\alpha^* \in (0, c]` of a capped activation, and its error.

    ``grid="model"``: the one root of the strictly increasing

    .. math::

        \tfrac12\mathrm{MSE}'(\alpha) = (1-p_c)\Big(\frac{\alpha}{12\cdot 4^M}
            - \frac{\int_\alpha^c (x-\alpha) f(x)\,dx}{F(c)}\Big) - p_c\,(c - \alpha),

    negative at 0 and :math:`(1-p_c)\,c/(12\cdot 4^M) > 0` at the cap, found by Chandrupatla's bracketed
    root-finder (:func:`scipy.optimize.elementwise.find_root`) on :math:`(0, c)`, vectorised. So
    :math:`\alpha^* < c` unless :math:`p_c = 1` (then :math:`\alpha^* = c`, ``at_cap``).

    ``grid="gemmlowp"``: the exact error of the grid that runs (:func:`capped_mse`), scanned around the
    model's optimum (25 points over :math:`[\alpha_\text{model}/8, 4\alpha_\text{model}]`, 25 whose
    distance to the cap spans :math:`[(c-\alpha_\text{model})/8, 4(c-\alpha_\text{model})]`, all
    within :math:`(0, c]`, and :math:`c` itself), refined by
    :func:`scipy.optimize.elementwise.find_minimum` (about 1e-8 relative); ``at_cap`` where
    :math:`\alpha = c` is the best point. ``converged`` is False if the best scan point is the lowest.

    Parameters
    ----------
    prior : {"laplace", "gauss"}
    bits, cap, scale, cap_mass : array_like
        As :func:`capped_mse`; broadcast against each other.
    grid : {"model", "gemmlowp"}

    Returns
    -------
    CappedClipping

    Examples
    --------
    The cap far above the data and no atom: the uncapped half-range optimum (5.0286 b at 3 bits):

    >>> round(optimal_alpha_capped(prior="laplace", bits=3, cap=1e3, scale=1.0, cap_mass=0.0).alpha, 4)
    5.0286
    >>> res = optimal_alpha_capped(prior="gauss", bits=[2, 3, 4], cap=6.0, scale=2.5, cap_mass=0.2)
    >>> np.round(res.alpha, 4), res.at_cap
    (array([5.8781, 5.9689, 5.9922]), array([False, False, False]))
    >>> np.round(res.mse / res.mse_at_cap, 4)  # what clipping just below the cap saves
    array([0.9797, 0.9948, 0.9987])
    >>> optimal_alpha_capped(prior="gauss", bits=4, cap=6.0, scale=2.5, cap_mass=1.0).at_cap
    True
    """
    prior = check_prior(prior)
    grid = check_grid(grid, allowed=CAPPED_GRIDS)
    bits = _check_bits(bits, grid)
    cap = check_positive(cap, "cap")
    scale = _check_scale(scale)
    p = _check_mass(cap_mass)
    bits, cap, scale, p = np.broadcast_arrays(bits, cap, scale, p)
    shape = bits.shape
    bits, cap, scale, p = (a.ravel() for a in (bits, cap, scale, p))
    lam = _unit_lam(cap, scale)
    u, converged = _model_root(lam, p, _noise_factor(bits), prior)
    if grid == "model":
        unit = _unit_model(u, lam, p, _noise_factor(bits), prior)
        unit_cap = _unit_model(np.ones_like(u), lam, p, _noise_factor(bits), prior)
    else:
        unit, unit_cap = np.empty_like(u), np.empty_like(u)
        for m in np.unique(bits):
            sel = bits == m
            u[sel], unit[sel], ok = _exact_optimum(lam[sel], p[sel], int(m), u[sel], prior)
            unit_cap[sel] = _unit_exact(np.ones(np.count_nonzero(sel)), lam[sel], p[sel], int(m), prior)
            converged = converged and ok
    at_cap = u >= 1.0
    alpha = np.where(at_cap, cap, u * cap)

    def out(a):
        return scalar_or_array(a.reshape(shape))

    return CappedClipping(alpha=out(alpha), mse=out(unit * cap**2), mse_at_cap=out(unit_cap * cap**2),
                          at_cap=bool(at_cap[0]) if not shape else at_cap.reshape(shape),
                          converged=converged, prior=prior, grid=grid)


def capped_moments(*, prior, cap, scale):
    r"""Mean and mean square of the continuous part, the prior truncated to :math:`(0, c)`.

    .. math::

        m_k = \frac{\int_0^c x^k f(x)\,dx}{F(c)}:\qquad
        \text{Laplace: } m_1 = b - \frac{c}{e^{c/b} - 1},\quad
        \text{Gauss: } m_1 = \sqrt{\frac2\pi}\,\sigma\,\frac{1 - e^{-c^2/(2\sigma^2)}}
            {\operatorname{erf}(c/(\sqrt2\sigma))}

    Both rise with the scale to the uniform limit :math:`c/2`, :math:`c^2/3` (``scale = inf``).

    Returns
    -------
    tuple of float or ndarray
        ``(mean, mean_square)``, broadcast over ``cap`` and ``scale``.

    Examples
    --------
    >>> [round(m, 6) for m in capped_moments(prior="laplace", cap=6.0, scale=1.0)]
    [0.985091, 1.880724]
    >>> capped_moments(prior="gauss", cap=6.0, scale=np.inf)
    (3.0, 12.0)
    """
    prior = check_prior(prior)
    cap = check_positive(cap, "cap")
    scale = _check_scale(scale)
    cap, scale = np.broadcast_arrays(cap, scale)
    _, j1, j2 = _tail_integrals(np.zeros(cap.shape), _unit_lam(cap, scale), prior)
    return scalar_or_array(j1 * cap), scalar_or_array(j2 * cap**2)


def fit_capped_scale(*, prior, cap, mean=None, mean_square=None) -> CappedFit:
    r"""The scale whose truncated prior has the measured mean (or mean square) on :math:`(0, c)`.

    Solves :math:`m_1(\text{scale}) = \text{mean}` (or :math:`m_2 = \text{mean\_square}`), see
    :func:`capped_moments`, with Chandrupatla's bracketed root-finder on :math:`\log(\text{scale}/c)`,
    vectorised. The moments rise with the scale towards the uniform limit (:math:`c/2`, :math:`c^2/3`); a
    measured moment at or beyond it is fitted by ``scale = inf`` (``uniform``: the continuous part is not
    decreasing, the uniform distribution is the closest member of the family).

    Parameters
    ----------
    prior : {"laplace", "gauss"}
    cap : array_like
        c > 0.
    mean, mean_square : array_like
        Exactly one: the mean of the values in :math:`(0, c)` (zeros and the atom at the cap excluded),
        in :math:`(0, c)`, or their mean square, in :math:`(0, c^2)`.

    Returns
    -------
    CappedFit

    Examples
    --------
    >>> mean, mean_square = capped_moments(prior="laplace", cap=6.0, scale=1.5)
    >>> fit = fit_capped_scale(prior="laplace", cap=6.0, mean=mean)
    >>> round(fit.scale, 12), fit.uniform
    (1.5, False)
    >>> fit_capped_scale(prior="gauss", cap=6.0, mean_square=[3.0, 12.5]).scale  # 12.5 > 6^2/3
    array([1.738..., inf])
    """
    prior = check_prior(prior)
    if (mean is None) == (mean_square is None):
        raise ValueError("give exactly one of mean and mean_square")
    moment = "mean" if mean is not None else "mean_square"
    value = _as_float_array(mean if mean is not None else mean_square, moment)
    cap = check_positive(cap, "cap")
    value, cap = np.broadcast_arrays(value, cap)
    k = 1 if moment == "mean" else 2
    target = value / cap**k
    if not np.all(np.isfinite(target)) or np.any(target <= 0) or np.any(target >= 1):
        raise ValueError(f"{moment} must lie in (0, cap{'**2' if k == 2 else ''}), got {value!r}")
    limit = 0.5 if k == 1 else 1.0 / 3.0
    uniform = target >= limit
    beta = np.full(target.shape, np.inf)   # scale / cap
    converged = True
    fit = ~uniform
    if np.any(fit):
        t = target[fit]

        def residual(log_beta, t):
            return _tail_integrals(np.zeros(np.shape(log_beta)), np.exp(-log_beta), prior)[k] - t

        # the truncated moment is below the untruncated one (<= beta, <= 2 beta^2): m(lo) < t at lo
        lo = np.log(0.5 * t) if k == 1 else 0.5 * np.log(t / 4.0)
        hi = lo + 1.0
        for _ in range(200):  # grow the bracket: the moment reaches its uniform limit as beta -> inf
            short = residual(hi, t) < 0
            if not np.any(short):
                break
            hi = np.where(short, hi + 2.0 * (hi - lo), hi)
        res = elementwise.find_root(residual, (lo, hi), args=(t,))
        beta[fit] = np.exp(res.x)
        converged = bool(np.all(res.success))
    return CappedFit(scale=scalar_or_array(beta * cap), uniform=scalar_or_array(uniform) if uniform.ndim
                     else bool(uniform), converged=converged, prior=prior, moment=moment)
