r"""The two priors of ACIQ, Laplace(0, b) and Gaussian(0, sigma), and their pieces in closed form.

Every exact error in :mod:`aciq.theory.grids` and :mod:`aciq.theory.limits` is a sum of *cell
integrals*: the error of mapping every :math:`x \in [a, b]` to one reconstruction value :math:`q`,

.. math::

    \int_a^b (x - q)^2 f(x)\,dx = M_2 - 2 q M_1 + q^2 M_0, \qquad M_k = \int_a^b x^k f(x)\,dx .

The partial moments :math:`M_k` have closed forms (:func:`partial_moments`). Their combination
cancels badly for a narrow cell (the result is :math:`\approx f\,h^3/12` for a cell of width
:math:`h` centred on :math:`q`, the terms are :math:`\approx f\,h\,q^2`), so :func:`cell_error`
integrates :math:`(x-q)^2` in the shifted variable instead: exactly for Laplace (incomplete gamma
functions of the cell width), by Gauss-Legendre quadrature for narrow Gaussian cells (exact to
rounding: the integrand is entire and the cell is at most one sigma wide) and by the centred closed
form for wide ones.

``scale`` is Laplace's ``b`` (variance :math:`2b^2`) or Gauss's ``sigma``. Everything is vectorised
and broadcasts over its array arguments.
"""
from __future__ import annotations

import numpy as np
from scipy.special import erfc, gammainc

from ._common import _as_float_array, check_data, check_prior, check_scale, scalar_or_array

__all__ = ["pdf", "cdf", "sample", "partial_moments", "cell_error", "variance"]

_SQRT2 = np.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
_GL_WIDTH = 1.0  # Gaussian cells at most this many sigma wide are integrated by Gauss-Legendre
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
_GL_NODES.setflags(write=False)
_GL_WEIGHTS.setflags(write=False)


# --------------------------------------------------------------------------- validation
def _check_x(x, name):
    """Real values that may be infinite but not NaN."""
    arr = _as_float_array(x, name)
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} must not be NaN")
    return arr


def _check_interval(a, b):
    a, b = _check_x(a, "a"), _check_x(b, "b")
    if np.any(a == np.inf):
        raise ValueError("a must be < +inf")
    if np.any(b == -np.inf):
        raise ValueError("b must be > -inf")
    if np.any(b < a):
        raise ValueError("b must be >= a")
    return a, b


def variance(*, prior, scale=1.0):
    """The prior's variance: :math:`2b^2` (Laplace) or :math:`\\sigma^2` (Gauss).

    Examples
    --------
    >>> variance(prior="laplace", scale=2.0), variance(prior="gauss", scale=2.0)
    (8.0, 4.0)
    """
    prior = check_prior(prior)
    scale = check_scale(scale)
    return scalar_or_array((2.0 if prior == "laplace" else 1.0) * scale**2)


# --------------------------------------------------------------------------- density and CDF
def pdf(x, *, prior, scale=1.0):
    """Density of Laplace(0, b) or N(0, sigma^2).

    .. math::

        \\frac{1}{2b} e^{-|x|/b}, \\qquad \\frac{1}{\\sqrt{2\\pi}\\,\\sigma} e^{-x^2/(2\\sigma^2)}

    Examples
    --------
    >>> round(pdf(0.0, prior="laplace"), 6), round(pdf(0.0, prior="gauss"), 6)
    (0.5, 0.398942)
    """
    prior = check_prior(prior)
    x = _check_x(x, "x")
    scale = check_scale(scale)
    z = np.abs(x) / scale
    if prior == "laplace":
        return scalar_or_array(0.5 * np.exp(-z) / scale)
    return scalar_or_array(_INV_SQRT_2PI * np.exp(-0.5 * z * z) / scale)


def _unit_sf(z, prior):
    """P(X > z) for the unit prior, accurate in the far tails of both sides."""
    if prior == "laplace":
        return np.where(z >= 0, 0.5 * np.exp(-np.abs(z)), 1.0 - 0.5 * np.exp(-np.abs(z)))
    return 0.5 * erfc(z / _SQRT2)


def cdf(x, *, prior, scale=1.0):
    """Cumulative distribution function, computed from the nearer tail (no cancellation).

    .. math::

        F_\\text{Laplace}(x) = \\begin{cases} \\tfrac12 e^{x/b} & x < 0\\\\ 1 - \\tfrac12 e^{-x/b} & x\\ge 0
        \\end{cases},\\qquad F_\\text{Gauss}(x) = \\tfrac12\\operatorname{erfc}\\!\\left(-\\frac{x}{\\sqrt2\\,\\sigma}
        \\right)

    Examples
    --------
    >>> float(cdf(0.0, prior="laplace")), round(cdf(1.0, prior="gauss"), 6)
    (0.5, 0.841345)
    >>> print(f'{float(cdf(-30.0, prior="gauss")):.4e}')  # the tail itself, not 1 - 1
    4.9067e-198
    """
    prior = check_prior(prior)
    x = _check_x(x, "x")
    scale = check_scale(scale)
    return scalar_or_array(_unit_sf(-x / scale, prior))


def sample(prior, n, *, scale=1.0, seed=0, half_range=False):
    """A seeded sample of ``n`` draws (numpy ``default_rng(seed)``).

    With ``half_range`` the sample is :math:`\\max(X, 0)`: a post-ReLU tensor, half of it exactly 0.

    Examples
    --------
    >>> x = sample("gauss", 4, seed=1, half_range=True)
    >>> x.shape, bool(np.all(x >= 0))
    ((4,), True)
    """
    prior = check_prior(prior)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    scale = float(check_scale(scale))
    rng = np.random.default_rng(seed)
    x = rng.laplace(0.0, scale, int(n)) if prior == "laplace" else rng.normal(0.0, scale, int(n))
    return np.maximum(x, 0.0) if half_range else x


# --------------------------------------------------------------------------- Laplace pieces
def _laplace_side(lo, hi, q):
    """Integral over [lo, hi] (0 <= lo <= hi <= inf) of (x - q)^2 * exp(-x)/2, in x = lo + s.

    .. math:: \\tfrac12 e^{-lo}\\,(u^2 I_0 + 2u I_1 + I_2),\\quad u = lo - q,\\quad
              I_k = \\int_0^h s^k e^{-s} ds = k!\\,P(k+1, h)

    Every I_k is accurate to rounding for any width h (regularised lower incomplete gamma).
    """
    h = hi - lo
    i0 = -np.expm1(-h)
    i1 = gammainc(2.0, h)
    i2 = 2.0 * gammainc(3.0, h)
    u = lo - q
    return 0.5 * np.exp(-lo) * (u * u * i0 + 2.0 * u * i1 + i2)


def _laplace_side_first(lo, hi, q):
    """Integral over [lo, hi] (0 <= lo <= hi <= inf) of (x - q) * exp(-x)/2: \tfrac12 e^{-lo}(u I_0 + I_1)."""
    h = hi - lo
    return 0.5 * np.exp(-lo) * ((lo - q) * -np.expm1(-h) + gammainc(2.0, h))


def _laplace_side_moments(lo, hi):
    """(M0, M1, M2) of exp(-x)/2 over [lo, hi], 0 <= lo <= hi <= inf: all terms positive."""
    h = hi - lo
    i0 = -np.expm1(-h)
    i1 = gammainc(2.0, h)
    i2 = 2.0 * gammainc(3.0, h)
    w = 0.5 * np.exp(-lo)
    return w * i0, w * (lo * i0 + i1), w * (lo * lo * i0 + 2.0 * lo * i1 + i2)


def _split(a, b):
    """The pieces of [a, b] on each side of 0, the negative one mirrored onto [0, inf)."""
    pos = (np.maximum(a, 0.0), np.maximum(b, 0.0))
    neg = (np.maximum(-b, 0.0), np.maximum(-a, 0.0))
    return pos, neg


# --------------------------------------------------------------------------- Gauss pieces
def _phi(z):
    """Standard normal density; 0 at +-inf."""
    return _INV_SQRT_2PI * np.exp(-0.5 * z * z)


def _z_phi(z, c):
    """(z - c) * phi(z), 0 at z = +-inf (no inf * 0)."""
    finite = np.isfinite(z)
    zs = np.where(finite, z, 0.0)
    return np.where(finite, (zs - c) * _phi(zs), 0.0)


def _gauss_mass(a, b):
    """Phi(b) - Phi(a), from the tail on the side away from 0 (erfc keeps relative accuracy there)."""
    right = _unit_sf(a, "gauss") - _unit_sf(b, "gauss")            # a >= 0: Q(a) - Q(b)
    left = _unit_sf(-b, "gauss") - _unit_sf(-a, "gauss")           # b <= 0: Q(-b) - Q(-a)
    middle = 1.0 - _unit_sf(-a, "gauss") - _unit_sf(b, "gauss")    # a < 0 < b
    return np.where(a >= 0, right, np.where(b <= 0, left, middle))


def _gauss_cell(a, b, q):
    """Unit-sigma integral over [a, b] of (x - q)^2 phi(x)."""
    narrow = np.isfinite(a) & np.isfinite(b) & (b - a <= _GL_WIDTH)
    out = np.empty(np.broadcast(a, b, q).shape)
    a, b, q = np.broadcast_arrays(a, b, q)
    if np.any(narrow):
        an, bn, qn = a[narrow], b[narrow], q[narrow]
        half = 0.5 * (bn - an)
        t = (0.5 * ((an - qn) + (bn - qn)))[:, None] + half[:, None] * _GL_NODES  # x - q, no cancellation
        out[narrow] = half * ((t * t * _phi(qn[:, None] + t)) @ _GL_WEIGHTS)
    wide = ~narrow
    if np.any(wide):
        aw, bw, qw = a[wide], b[wide], q[wide]
        # M2 - 2q M1 + q^2 M0 = (1 + q^2) M0 + (a - 2q) phi(a) - (b - 2q) phi(b)
        out[wide] = (1.0 + qw * qw) * _gauss_mass(aw, bw) + _z_phi(aw, 2.0 * qw) - _z_phi(bw, 2.0 * qw)
    return np.maximum(out, 0.0)


def _gauss_first(a, b, q):
    """Unit-sigma integral over [a, b] of (x - q) phi(x): Gauss-Legendre in x - q for narrow cells,
    phi(a) - phi(b) - q (Phi(b) - Phi(a)) for wide ones."""
    a, b, q = np.broadcast_arrays(a, b, q)
    narrow = np.isfinite(a) & np.isfinite(b) & (b - a <= _GL_WIDTH)
    out = np.empty(a.shape)
    if np.any(narrow):
        an, bn, qn = a[narrow], b[narrow], q[narrow]
        half = 0.5 * (bn - an)
        t = (0.5 * ((an - qn) + (bn - qn)))[:, None] + half[:, None] * _GL_NODES
        out[narrow] = half * ((t * _phi(qn[:, None] + t)) @ _GL_WEIGHTS)
    wide = ~narrow
    if np.any(wide):
        aw, bw, qw = a[wide], b[wide], q[wide]
        fa = np.where(np.isfinite(aw), _phi(np.where(np.isfinite(aw), aw, 0.0)), 0.0)
        fb = np.where(np.isfinite(bw), _phi(np.where(np.isfinite(bw), bw, 0.0)), 0.0)
        out[wide] = fa - fb - qw * _gauss_mass(aw, bw)
    return out


def _gauss_moments(a, b):
    """Unit-sigma (M0, M1, M2) over [a, b]: closed forms, Gauss-Legendre for narrow finite cells.

    The closed forms lose relative accuracy in a narrow cell (Phi(b) - Phi(a) is a difference of
    numbers near 1/2 for a tiny mass); 16-point Gauss-Legendre on a cell at most one sigma wide is
    exact to rounding, the integrands being entire.
    """
    a, b = np.broadcast_arrays(a, b)
    fa = np.where(np.isfinite(a), _phi(np.where(np.isfinite(a), a, 0.0)), 0.0)
    fb = np.where(np.isfinite(b), _phi(np.where(np.isfinite(b), b, 0.0)), 0.0)
    m0 = np.array(_gauss_mass(a, b), dtype=np.float64)
    m1 = np.array(fa - fb, dtype=np.float64)
    m2 = np.array(m0 + _z_phi(a, 0.0) - _z_phi(b, 0.0), dtype=np.float64)
    narrow = np.isfinite(a) & np.isfinite(b) & (b - a <= _GL_WIDTH)
    if np.any(narrow):
        an, bn = a[narrow], b[narrow]
        half = 0.5 * (bn - an)
        x = (0.5 * (an + bn))[:, None] + half[:, None] * _GL_NODES
        w = half[:, None] * _GL_WEIGHTS * _phi(x)
        m0[narrow], m1[narrow], m2[narrow] = w.sum(axis=1), (w * x).sum(axis=1), (w * x * x).sum(axis=1)
    return m0, m1, m2


# --------------------------------------------------------------------------- public
def partial_moments(a, b, *, prior, scale=1.0):
    """Partial moments :math:`M_k = \\int_a^b x^k f(x)\\,dx`, k = 0, 1, 2, in closed form.

    Laplace(0, b), per side of 0 (the negative side mirrored), with :math:`h = hi - lo`:

    .. math::

        \\int_{lo}^{hi} x^k \\tfrac12 e^{-x} dx = \\tfrac12 e^{-lo}\\,\\{I_0,\\ lo\\,I_0 + I_1,\\
        lo^2 I_0 + 2\\,lo\\,I_1 + I_2\\},\\qquad I_k = \\int_0^h s^k e^{-s} ds

    (every term positive). Gauss, unit sigma:

    .. math::

        M_0 = \\Phi(b) - \\Phi(a),\\quad M_1 = \\varphi(a) - \\varphi(b),\\quad
        M_2 = M_0 + a\\varphi(a) - b\\varphi(b)

    with :math:`M_0` taken from the erfc tail on the far side of 0; for a finite cell at most one
    sigma wide, where these differences lose relative accuracy, 16-point Gauss-Legendre (exact to
    rounding for these entire integrands). The error of one cell
    :math:`[a, b]` reconstructed at :math:`q` is :math:`M_2 - 2qM_1 + q^2M_0`; for narrow cells
    prefer :func:`cell_error`, which avoids the cancellation of that sum.

    Parameters
    ----------
    a, b : array_like
        Interval ends, ``a <= b``; ``a`` may be ``-inf``, ``b`` may be ``+inf``. Absolute units.
    prior : {"laplace", "gauss"}
    scale : array_like
        Laplace ``b`` or Gaussian ``sigma``, > 0.

    Returns
    -------
    tuple of float or ndarray
        ``(M0, M1, M2)``, broadcast over ``a``, ``b`` and ``scale``.

    Examples
    --------
    >>> m0, m1, m2 = partial_moments(0.0, np.inf, prior="laplace", scale=2.0)
    >>> float(m0), float(m1), float(m2)  # 1/2, b/2, b^2
    (0.5, 1.0, 4.0)
    >>> [round(float(m), 6) for m in partial_moments(-1.0, 1.0, prior="gauss")]
    [0.682689, 0.0, 0.198748]
    """
    prior = check_prior(prior)
    a, b = _check_interval(a, b)
    scale = check_scale(scale)
    za, zb = a / scale, b / scale
    if prior == "laplace":
        (plo, phi), (nlo, nhi) = _split(za, zb)
        p0, p1, p2 = _laplace_side_moments(plo, phi)
        n0, n1, n2 = _laplace_side_moments(nlo, nhi)
        m0, m1, m2 = p0 + n0, p1 - n1, p2 + n2
    else:
        m0, m1, m2 = _gauss_moments(za, zb)
    m0, m1, m2 = np.broadcast_arrays(m0, m1 * scale, m2 * scale**2)
    return scalar_or_array(m0 * 1.0), scalar_or_array(m1 * 1.0), scalar_or_array(m2 * 1.0)


def cell_error(a, b, q, *, prior, scale=1.0):
    """Error of one quantizer cell: :math:`\\int_a^b (x-q)^2 f(x)\\,dx`, computed stably.

    .. math::

        \\int_a^b (x-q)^2 f(x)\\,dx = M_2 - 2qM_1 + q^2M_0

    (:func:`partial_moments`), evaluated without that sum's cancellation: Laplace in the shifted
    variable :math:`s = x - lo` on each side of 0, :math:`\\tfrac12 e^{-lo}(u^2I_0 + 2uI_1 + I_2)`,
    :math:`u = lo - q`; Gauss by 16-point Gauss-Legendre for cells at most one sigma wide and by
    :math:`(1+q^2)M_0 + (a-2q)\\varphi(a) - (b-2q)\\varphi(b)` (unit sigma) for wider ones, where
    the cancellation is mild.

    Parameters
    ----------
    a, b : array_like
        Cell ends, ``a <= b`` (``-inf``/``+inf`` allowed), absolute units.
    q : array_like
        Reconstruction value(s), finite.
    prior : {"laplace", "gauss"}
    scale : array_like
        Laplace ``b`` or Gaussian ``sigma``, > 0.

    Examples
    --------
    >>> round(cell_error(0.0, np.inf, 1.0, prior="laplace"), 6)  # Var|X| = 2b^2 - b^2 over half the mass
    0.5
    >>> round(cell_error(-1e-3, 1e-3, 0.0, prior="gauss") / (0.398942 * 8e-9 / 12), 4)  # ~ f h^3 / 12
    1.0
    """
    prior = check_prior(prior)
    a, b = _check_interval(a, b)
    q = check_data(q, "q")
    scale = check_scale(scale)
    za, zb, zq = a / scale, b / scale, q / scale
    if prior == "laplace":
        (plo, phi), (nlo, nhi) = _split(za, zb)
        unit = _laplace_side(plo, phi, zq) + _laplace_side(nlo, nhi, -zq)
    else:
        unit = _gauss_cell(*np.broadcast_arrays(za, zb, zq))
    return scalar_or_array(unit * scale**2)


def _unit_cell_error(a, b, q, prior):
    """cell_error for the unit prior without validation (callers pass well-formed arrays)."""
    if prior == "laplace":
        (plo, phi), (nlo, nhi) = _split(a, b)
        return _laplace_side(plo, phi, q) + _laplace_side(nlo, nhi, -q)
    return _gauss_cell(*np.broadcast_arrays(a, b, q))


def _unit_cell_first(a, b, q, prior):
    """:math:`\\int_a^b (x - q) f(x)\\,dx` for the unit prior without validation: the derivative of
    :func:`_unit_cell_error` with respect to ``q`` is minus twice this."""
    if prior == "laplace":
        (plo, phi), (nlo, nhi) = _split(a, b)
        return _laplace_side_first(plo, phi, q) - _laplace_side_first(nlo, nhi, -q)
    return _gauss_first(a, b, q)


def _unit_moments(a, b, prior):
    """(M0, M1) of the unit prior over [a, b] without validation (for centroids)."""
    if prior == "laplace":
        (plo, phi), (nlo, nhi) = _split(a, b)
        p0, p1, _ = _laplace_side_moments(plo, phi)
        n0, n1, _ = _laplace_side_moments(nlo, nhi)
        return p0 + n0, p1 - n1
    m0, m1, _ = _gauss_moments(a, b)
    return m0, m1
