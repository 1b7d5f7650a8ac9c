r"""ACIQ's analytical clipping: the paper's MSE model and its optimal clipping value alpha*.

The model (Banner, Nahshan & Soudry 2019, eq. 5) splits the error of clipping a tensor to
:math:`[-\alpha, \alpha]` and quantizing it uniformly with :math:`M` bits into the clipping error of
the two tails and the rounding noise :math:`\Delta^2/12` of :math:`2^M` cells of width
:math:`\Delta = 2\alpha/2^M`:

.. math::

    \mathrm{MSE}(\alpha) = 2\int_\alpha^\infty (x-\alpha)^2 f(x)\,dx + \frac{\alpha^2}{3\cdot 4^M}

The half-range form models a non-negative (post-ReLU) tensor: the positive half of the same prior
quantized on :math:`[0, \alpha]`, the rest exactly 0. It keeps one tail and weights the noise of cells
of width :math:`\alpha/2^M` by :math:`P(X>0)=1/2`, i.e. :math:`\alpha^2/(24\cdot 4^M)`; it is half the
symmetric model at :math:`M+1` bits, so its optimum is the symmetric optimum at :math:`M+1` bits.

These are plain numpy formulas; :mod:`aciq.theory.derivation` derives the same ones with sympy and the
tests check that they agree. Bits may be fractional (bit allocation produces them).

Examples
--------
>>> res = optimal_alpha(prior="laplace", bits=4)
>>> round(res.alpha, 5), round(res.mse, 5)
(5.02864, 0.04602)
"""
from __future__ import annotations

import numpy as np
from scipy.special import erfc, erfcx

from ._common import ClippingResult, check_bits, check_nonnegative, check_prior, check_scale, scalar_or_array

__all__ = ["clipping_error", "quantization_noise", "model_mse", "optimal_alpha"]

_SQRT2 = np.sqrt(2.0)
_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
_LOG3, _LOG4 = np.log(3.0), np.log(4.0)
_RTOL = 1e-14        # Newton stops once its step is below this, relative; the error is then ~ step**2
_MAX_ITER = 100      # safeguarded Newton; bisection alone would need ~55 halvings from the bracket
_ASYMPTOTIC_T = 50.0  # above this the Gaussian tail term uses its asymptotic series
_FAST_Y = 20.0       # -log c up to which the Gaussian root takes the fast path (M up to about 13.6)
_BLOCK = 1 << 16     # elements solved at a time


# --------------------------------------------------------------------------- the model
def _unit_clipping(t, prior):
    """Both tails for unit scale, at the clipping value t = alpha / scale."""
    if prior == "laplace":
        return 2.0 * np.exp(-t)
    return (t * t + 1.0) * erfc(t / _SQRT2) - _SQRT_2_OVER_PI * t * np.exp(-0.5 * t * t)


def _noise_factor(bits, half_range):
    """The factor of alpha**2 in the noise: 1/(3*4^M), or 1/(24*4^M) for half range."""
    return np.exp2(-2.0 * bits) / (24.0 if half_range else 3.0)


def clipping_error(alpha, *, prior, scale=1.0, half_range=False):
    r"""Mean squared error of clipping the prior to :math:`[-\alpha, \alpha]` (its tails only).

    .. math::

        \text{Laplace}(0, b):\ 2b^2 e^{-\alpha/b},\qquad
        \mathcal N(0, \sigma^2):\ (\alpha^2+\sigma^2)\operatorname{erfc}\frac{\alpha}{\sqrt2\,\sigma}
        - \sqrt{\frac2\pi}\,\alpha\sigma\,e^{-\alpha^2/(2\sigma^2)}

    Half range (clipping a post-ReLU tensor to :math:`[0, \alpha]`) keeps one tail: half of the above.

    Parameters
    ----------
    alpha : array_like
        Clipping value(s), >= 0, in the units of ``scale``.
    prior : {"laplace", "gauss"}
    scale : array_like
        The prior's scale: Laplace ``b``, Gaussian ``sigma``; > 0.
    half_range : bool

    Returns
    -------
    float or ndarray
        Broadcast over ``alpha`` and ``scale``.

    Notes
    -----
    The two Gaussian terms cancel as :math:`t = \alpha/\sigma` grows (their difference is about
    :math:`2t^{-4}` of each): measured against 40-digit values the relative error is 3e-13 at
    :math:`t = 4` (the optimum at 8 bits), 3e-12 at :math:`t = 6` and 2e-11 at :math:`t = 8`. The
    Laplace form is exact to rounding.

    Examples
    --------
    >>> round(clipping_error(2.0, prior="laplace"), 6)  # 2 exp(-2)
    0.270671
    >>> round(clipping_error(0.0, prior="gauss", scale=3.0), 6)  # nothing kept: the variance
    9.0
    """
    prior = check_prior(prior)
    alpha = check_nonnegative(alpha, "alpha")
    scale = check_scale(scale)
    err = scale**2 * _unit_clipping(alpha / scale, prior)
    return scalar_or_array(0.5 * err if half_range else err)


def quantization_noise(alpha, *, bits, half_range=False):
    r"""The model's rounding noise: :math:`\Delta^2/12` of :math:`2^M` cells over the range.

    .. math::

        \frac{\Delta^2}{12} = \frac{\alpha^2}{3\cdot 4^M},\quad \Delta = \frac{2\alpha}{2^M}
        \qquad\text{half range: } \frac12\cdot\frac{(\alpha/2^M)^2}{12} = \frac{\alpha^2}{24\cdot 4^M}

    The second term of eq. 5; independent of the prior.

    Parameters
    ----------
    alpha : array_like
        Clipping value(s), >= 0.
    bits : array_like
        Bit-width(s) M >= 1, fractional allowed.
    half_range : bool

    Examples
    --------
    >>> quantization_noise(3.0, bits=1)  # 9 / 12
    0.75
    >>> quantization_noise(3.0, bits=1, half_range=True)
    0.09375
    """
    alpha = check_nonnegative(alpha, "alpha")
    bits = check_bits(bits)
    return scalar_or_array(alpha**2 * _noise_factor(bits, half_range))


def model_mse(alpha, *, prior, bits, scale=1.0, half_range=False):
    r"""The paper's MSE model: clipping error plus rounding noise (eq. 5 for Laplace).

    .. math::

        \mathrm{MSE}(\alpha) = 2\int_\alpha^\infty (x-\alpha)^2 f(x)\,dx + \frac{\alpha^2}{3\cdot 4^M}
        \;\overset{\text{Laplace}}{=}\; 2b^2e^{-\alpha/b} + \frac{\alpha^2}{3\cdot 4^M}

    Half range: :math:`\int_\alpha^\infty (x-\alpha)^2 f(x)\,dx + \alpha^2/(24\cdot 4^M)`.

    Parameters
    ----------
    alpha : array_like
        Clipping value(s), >= 0, in the units of ``scale``.
    prior : {"laplace", "gauss"}
    bits : array_like
        Bit-width(s) M >= 1, fractional allowed.
    scale : array_like
        Laplace ``b`` or Gaussian ``sigma``, > 0.
    half_range : bool

    Returns
    -------
    float or ndarray
        Broadcast over ``alpha``, ``bits`` and ``scale``; in absolute units (scale squared).

    Examples
    --------
    >>> round(model_mse(2.830683, prior="laplace", bits=2), 5)
    0.28488
    >>> np.round(model_mse(1.0, prior="gauss", bits=[2, 3]), 5)
    array([0.17151, 0.15589])
    """
    prior = check_prior(prior)
    alpha = check_nonnegative(alpha, "alpha")
    bits = check_bits(bits)
    scale = check_scale(scale)
    clip = scale**2 * _unit_clipping(alpha / scale, prior)
    if half_range:
        clip = 0.5 * clip
    return scalar_or_array(clip + alpha**2 * _noise_factor(bits, half_range))


# --------------------------------------------------------------------------- the optimum
# Unit scale throughout: t = alpha/scale. Half the derivative of the unit model is
#     Laplace: c t - e^{-t},    Gauss: c t + t erfc(t/sqrt2) - sqrt(2/pi) e^{-t^2/2},
# with c = 1/(3*4^M), or c = 1/(12*4^M) for half range (whose model is half the symmetric one at M+1
# bits). In both cases the unit MSE is h*(C(t) + c t^2), C the two-tail clipping error, h = 1 or 1/2.

def _log_c(bits, half_range):
    """log c, c = 1/(3*4^M) or 1/(12*4^M), without overflow for any M."""
    return -(_LOG3 + bits * _LOG4 + (_LOG4 if half_range else 0.0))


def _lambertw_exp(y):
    """W(exp(y)), real branch, for real y >= 1: the root w of w + log w = y.

    Halley's iteration in this log form never overflows (3*4^M does for M > 510) and is several times
    faster than ``scipy.special.lambertw``, which works in complex arithmetic; the tests compare the two.
    The start y - log y + log(y)/y (the asymptotic expansion) is within 5% for y >= 1. Returns
    (w, converged): converged once every Newton correction is below 1e-14 relative.
    """
    log_y = np.log(y)
    w = y - log_y + log_y / y
    for _ in range(_MAX_ITER):
        f = w + np.log(w) - y
        fprime = 1.0 + 1.0 / w
        newton = f / fprime
        small = np.abs(newton) <= _RTOL * w
        w = w - newton / (1.0 + 0.5 * newton / (w * w * fprime))  # Halley, f'' = -1/w^2
        if np.all(small):
            return w, True
    return w, False


def _gauss_start(y):
    """A start for the unit-sigma Gaussian root, within 0.4% for y = -log c in [log 12, 30].

    The asymptotic balance c t^3 ~ sqrt(2/pi) exp(-t^2/2) gives t^2 ~ 2y + 2 log sqrt(2/pi) - 3 log(2y);
    the constants 17.06, 44.24, 4.53 were fitted (least squares, relative error) to the exact root on
    that interval. Only the speed of the iteration depends on them, not its result.
    """
    return np.sqrt(2.0 * y + 2.0 * np.log(_SQRT_2_OVER_PI) - 3.0 * np.log(2.0 * y + 17.06) + 44.24 / (y + 4.53))


def _gauss_root_halley(y):
    """Fast path for y = -log c <= 20 (M up to about 13.6): two Halley steps on the plain equation

    g(t) = (c + erfc(t/sqrt2)) t - sqrt(2/pi) exp(-t^2/2),  g' = c + erfc(t/sqrt2),  g'' = -sqrt(2/pi) exp(-t^2/2)

    from :func:`_gauss_start` (0.4% -> ~1e-8 -> ~1e-16 relative), then a third evaluation that checks
    the next Newton correction is below 1e-14 relative and gives the clipping error at the root.
    Rounding in exp(-t^2/2) and erfc grows with t (the Newton correction at the root is rounding noise
    of 4e-15 relative at y = 20, 1e-14 at y = 30), which is why larger y goes to
    :func:`_gauss_root_bracketed`. Returns (t, ok, unit two-tail clipping error at t).
    """
    c = np.exp(-y)
    t = _gauss_start(y)
    with np.errstate(all="ignore"):  # a wild step only fails the check below and is redone safely
        for i in range(3):
            big_e = erfc(t / _SQRT2)
            gauss = _SQRT_2_OVER_PI * np.exp(-0.5 * t * t)
            fprime = c + big_e
            newton = t - gauss / fprime
            if i == 2:
                break
            t = t - newton / (1.0 + 0.5 * newton * gauss / fprime)
        ok = np.isfinite(newton) & (t > 0) & (np.abs(newton) <= _RTOL * t)
    return t, ok, (t * t + 1.0) * big_e - t * gauss


def _gauss_tail_factor(t):
    """k(t) = sqrt(2/pi) - t*erfcx(t/sqrt2) = 2*E[(X-t)+] * exp(t^2/2), X ~ N(0, 1); and erfcx(t/sqrt2).

    For t > 50 the difference is taken from the asymptotic series
    k = sqrt(2/pi)/t^2 (1 - 3/t^2 + 15/t^4 - 105/t^6 + 945/t^8), whose next term is below 1e-16.
    """
    ex = erfcx(t / _SQRT2)
    k = _SQRT_2_OVER_PI - t * ex
    big = t > _ASYMPTOTIC_T
    if np.any(big):
        u = 1.0 / t[big] ** 2
        k[big] = _SQRT_2_OVER_PI * u * (1.0 + u * (-3.0 + u * (15.0 + u * (-105.0 + u * 945.0))))
    return k, ex


def _gauss_root_bracketed(log_c):
    """Safeguarded Newton for any c: the root of F(t) = log c + log t + t^2/2 - log k(t), k as in
    :func:`_gauss_tail_factor`.

    This log form of the same equation is strictly increasing on t > 0 from -inf, never overflows and
    keeps its relative accuracy for any bit-width. The root lies in (0, max(1, sqrt(2 L))],
    L = log(sqrt(2/pi)/c), since F > 0 there. Each Newton step that would leave the bracket is replaced
    by bisection; the loop stops once the step is below 1e-14 relative. Returns (t, converged).
    """
    lo = np.zeros_like(log_c)
    hi = np.maximum(np.sqrt(2.0 * (np.log(_SQRT_2_OVER_PI) - log_c)), 1.0)
    t = np.clip(_gauss_start(-log_c), 0.5 * hi, hi)
    done = np.zeros(log_c.shape, dtype=bool)
    active = np.arange(log_c.size)
    for _ in range(_MAX_ITER):
        ta, la, ha = t[active], lo[active], hi[active]
        k, ex = _gauss_tail_factor(ta)
        f = log_c[active] + np.log(ta) + 0.5 * ta * ta - np.log(k)
        fprime = 1.0 / ta + ex / k
        neg = f < 0
        la = np.where(neg, ta, la)
        ha = np.where(neg, ha, ta)
        step = f / fprime
        t_new = ta - step
        inside = (t_new > 0) & (t_new >= la) & (t_new <= ha)
        t_new = np.where(inside, t_new, 0.5 * (la + ha))
        stop = (inside & (np.abs(step) <= _RTOL * ta)) | (ha - la <= 4e-16 * ha)
        t[active], lo[active], hi[active] = t_new, la, ha
        done[active] = stop
        active = active[~stop]
        if active.size == 0:
            break
    return t, bool(np.all(done))


def _gauss_root(log_c):
    """The unit Gaussian root for a 1-d block: the fast Halley path where it applies, the bracketed
    solver for the rest and for anything the fast path did not verify.
    Returns (t, unit two-tail clipping error at t, converged)."""
    fast = log_c >= -_FAST_Y
    if np.all(fast):
        t, ok, clip = _gauss_root_halley(-log_c)
    else:
        t, clip = np.empty_like(log_c), np.empty_like(log_c)
        ok = np.zeros(log_c.shape, dtype=bool)
        t[fast], ok[fast], clip[fast] = _gauss_root_halley(-log_c[fast])
    converged = True
    if not np.all(ok):
        t[~ok], converged = _gauss_root_bracketed(log_c[~ok])
        clip[~ok] = _unit_clipping(t[~ok], "gauss")
    return t, clip, converged


def _unit_optimum(prior, log_c):
    """Unit-scale optimum for a 1-d block of log c: (t, C(t) + c t^2, converged)."""
    if prior == "laplace":
        t, converged = _lambertw_exp(-log_c)  # c t = e^{-t}  <=>  t e^t = 1/c  <=>  t = W(1/c)
        clip = _unit_clipping(t, prior)
    else:
        t, clip, converged = _gauss_root(log_c)
    return t, clip + np.exp(log_c) * t * t, converged


def optimal_alpha(*, prior, bits, scale=1.0, half_range=False) -> ClippingResult:
    r"""The clipping value alpha* that minimises the paper's MSE model, and that MSE.

    The minimum of the paper's model (:func:`model_mse`), the root of

    .. math::

        \text{Laplace (eq. 6):}\quad \frac{2\alpha}{3\cdot 4^M} - 2b\,e^{-\alpha/b} = 0
        \;\Rightarrow\; \alpha^* = b\,W(3\cdot 4^M)

    .. math::

        \text{Gauss, } t = \alpha/\sigma:\quad
        t\operatorname{erfc}\frac{t}{\sqrt2} - \sqrt{\frac2\pi}\,e^{-t^2/2} + \frac{t}{3\cdot 4^M} = 0

    where :math:`W` is the real branch of Lambert's W. Half range replaces :math:`3\cdot 4^M` by
    :math:`12\cdot 4^M` in both (the symmetric optimum at :math:`M+1` bits). The Gaussian equation is
    solved by a vectorised Halley iteration, checked and, where needed, redone by a bracketed Newton
    iteration, to about 1e-14 relative (``converged``). Laplace uses a real-branch Lambert W solved
    in log form. The scale enters
    linearly: :math:`\alpha^*(k b) = k\,\alpha^*(b)`.

    The optimum of the exact error of a quantizer that runs (``"midrise"``, ``"gemmlowp"``,
    ``"symmetric"``, ``"midtread"``) is :func:`aciq.theory.grids.optimal_alpha_exact`.

    Parameters
    ----------
    prior : {"laplace", "gauss"}
    bits : array_like
        Bit-width(s) M >= 1, fractional allowed.
    scale : array_like
        Laplace ``b`` or Gaussian ``sigma``, > 0. Broadcast against ``bits``.
    half_range : bool
        The one-sided (post-ReLU) model.

    Returns
    -------
    ClippingResult
        ``alpha`` (units of ``scale``), ``mse`` (the model MSE at ``alpha``, absolute units),
        ``converged``; floats for scalar input, arrays of the broadcast shape otherwise; ``grid`` is
        ``"model"``.

    Examples
    --------
    >>> res = optimal_alpha(prior="gauss", bits=[2, 3, 4])
    >>> np.round(res.alpha, 5)
    array([1.71064, 2.15159, 2.55914])
    >>> res.converged
    True
    >>> round(optimal_alpha(prior="laplace", bits=3, half_range=True).alpha, 5)  # = 4-bit symmetric
    5.02864
    >>> round(optimal_alpha(prior="laplace", bits=2, scale=2.0).alpha, 5)
    5.66137
    """
    prior = check_prior(prior)
    half_range = bool(half_range)
    bits = check_bits(bits)
    scale = check_scale(scale)
    bits, scale = np.broadcast_arrays(bits, scale)
    log_c = _log_c(bits, half_range).ravel()
    t, unit = np.empty_like(log_c), np.empty_like(log_c)
    converged = True
    for start in range(0, log_c.size, _BLOCK):  # blocks that stay in cache: about 1.5x faster
        block = slice(start, start + _BLOCK)
        t[block], unit[block], ok = _unit_optimum(prior, log_c[block])
        converged = converged and ok
    t, unit = t.reshape(bits.shape), unit.reshape(bits.shape)
    if half_range:
        unit = 0.5 * unit
    alpha = scale * t
    return ClippingResult(alpha=scalar_or_array(alpha), mse=scalar_or_array(scale**2 * unit),
                          converged=converged, prior=prior, grid="model", half_range=half_range)
