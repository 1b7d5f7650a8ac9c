r"""Second-order weight rounding (GPTQ / OBQ) on the per-channel gemmlowp grid that runs.

Nearest rounding minimises each weight's own error. What a layer's output feels is the error of the
layer's product :math:`XW^\top`: for inputs :math:`X` (rows are samples, :math:`K` columns) and the
Hessian of the layer's output error, :math:`H = X^\top X`, the calibration objective is

.. math::

    E(\hat W) = \lVert X (W - \hat W)^\top \rVert_F^2
              = \operatorname{tr}\!\big((W - \hat W)\,H\,(W - \hat W)^\top\big)
              = \sum_r e_r H e_r^\top, \qquad e_r = w_r - \hat w_r ,

a sum of independent quadratic forms, one per output row :math:`r`. GPTQ (Frantar et al., ICLR 2023,
Algorithm 1; the column-wise form of OBQ, Frantar & Alistarh, NeurIPS 2022) rounds the columns one at a
time, in a fixed order, and after each column moves the not-yet-rounded columns :math:`F` to the
least-squares optimum given the rounded ones :math:`Q`:

.. math::

    w_F \leftarrow w_F - \frac{w_q - \hat w_q}{[H_F^{-1}]_{qq}}\,[H_F^{-1}]_{q,F},
    \qquad\text{i.e.}\qquad e_F = -e_Q H_{QF} H_{FF}^{-1} .

Every :math:`[H_F^{-1}]` row that this needs is a row of the upper Cholesky factor :math:`U` of
:math:`H^{-1} = U^\top U` divided by its diagonal (GPTQ, section 3, "Cholesky reformulation"), so one
factorisation serves all columns, and the updates are applied lazily, ``block`` columns at a time
(GPTQ's "lazy batch updates"). Here :math:`U` comes from one Cholesky factorisation of :math:`H` with its
columns reversed, :math:`J H J = L L^\top \Rightarrow U = J L^{-1} J`, without forming :math:`H^{-1}`.

Choices, as in GPTQ:

* **damping**: :math:`H + \lambda I`, :math:`\lambda = \text{damp}\cdot\operatorname{mean}\,\operatorname{diag} H`
  (the mean over the live columns);
* **column order**: ``"descending"`` diagonal of :math:`H` first (GPTQ's act-order), ``"natural"``,
  or an explicit permutation;
* **dead columns** (:math:`H_{ii} = 0`: an input that was always zero on the calibration data): nothing in
  the objective depends on them, and they are decoupled from the rest. GPTQ sets them to 0; here they
  keep the nearest rounding of their own weight, so a layer whose input is not dead on new data still
  sees its weight, and an all-zero Hessian gives plain nearest rounding.

The grid is the per-output-row gemmlowp grid of :mod:`aciq.quant.fake` (:mod:`aciq.theory.grids`,
``grid="gemmlowp"``): step :math:`s_r > 0`, integer zero point :math:`z_r`, :math:`q_{max} = 2^{M_r}-1`,
codes :math:`q = \operatorname{clip}(\operatorname{rint}(w/s_r) + z_r, 0, q_{max})` (round half to even)
and values :math:`(q - z_r)s_r`; a row with :math:`M_r = 0` bits reconstructs as its constant ``fill``.
Grouped and depthwise convolutions have one Hessian per group; every group is solved at once with
batched numpy linear algebra.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((256, 6)) @ rng.standard_normal((6, 6))   # correlated inputs
>>> w = rng.standard_normal((4, 6))
>>> res = gptq_round(w, x.T @ x, scale=0.5, zero_point=4, bits=3)
>>> bool(res.codes.min() >= 0 and res.codes.max() <= 7)
True
>>> bool(res.objective.sum() < res.nearest_objective.sum())   # ||X (W - W_hat)^T||^2 falls
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["RoundingResult", "gptq_round", "layer_objective"]

_MAX_BITS = 16
_SYMMETRY_RTOL = 1e-5   # |H - H^T| allowed, relative to max |H| of the group (float32 accumulation)


@dataclass(frozen=True)
class RoundingResult:
    """Second-order rounding of one layer's weight (:func:`gptq_round`).

    Attributes
    ----------
    codes : ndarray of int64
        Unsigned codes in ``[0, 2^bits - 1]`` per row (0 for 0-bit rows), the shape of the weight.
    weight : ndarray of float64
        The dequantized weight :math:`(q - z)s` (``fill`` for 0-bit rows).
    target : ndarray of float64
        The compensated weights that were rounded: each column as it was just before its own rounding
        (the original weight for 0-bit rows and dead columns). ``codes`` is the nearest rounding of
        ``target``.
    objective, nearest_objective : ndarray of float64
        :math:`e_r H e_r^\\top` per output row (shape ``weight.shape[:-1]``) with the Hessian as given
        (undamped), for this result and for plain nearest rounding of the weight; ``.sum()`` is
        :func:`layer_objective`.
    damping : float or ndarray
        The :math:`\\lambda` added to the diagonal, per group (a float for a 2-d weight).
    dead : ndarray of bool
        Columns whose Hessian diagonal is 0, the shape of ``hessian.shape[:-1]``.
    order : ndarray of int64
        The order in which the columns were rounded, per group (shape ``hessian.shape[:-1]``).
    """

    codes: np.ndarray
    weight: np.ndarray
    target: np.ndarray
    objective: np.ndarray
    nearest_objective: np.ndarray
    damping: float | np.ndarray
    dead: np.ndarray
    order: np.ndarray


# --------------------------------------------------------------------------- validation
def _fail(name, message):
    raise ValueError(f"layer {name!r}: {message}")


def _as_groups(weight, hessian, name):
    """(W, H) as (G, R, K) and (G, K, K) float64, checked, plus whether the input was grouped."""
    try:
        w = np.asarray(weight, dtype=np.float64)
        h = np.asarray(hessian, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layer {name!r}: weight and hessian must be numeric arrays") from exc
    if w.ndim not in (2, 3) or 0 in w.shape:
        _fail(name, f"weight must be a non-empty (O, K) or (G, O/G, K/G) array, got shape {w.shape}")
    grouped = w.ndim == 3
    expected = (w.shape[0], w.shape[2], w.shape[2]) if grouped else (w.shape[1], w.shape[1])
    if h.shape != expected:
        _fail(name, f"hessian has shape {h.shape}, expected {expected} for a weight of shape {w.shape}")
    if not np.all(np.isfinite(w)):
        _fail(name, "weight contains NaN or Inf")
    if not np.all(np.isfinite(h)):
        _fail(name, "hessian contains NaN or Inf")
    if not grouped:
        w, h = w[None], h[None]
    return w, h, grouped


def _check_hessian(h, name):
    """Symmetrised H, its diagonal and the dead columns; ValueError if H is not a plausible X^T X."""
    size = np.max(np.abs(h), axis=(1, 2), keepdims=True)
    if np.any(np.abs(h - h.swapaxes(1, 2)) > _SYMMETRY_RTOL * size):
        _fail(name, "hessian must be symmetric")
    h = 0.5 * (h + h.swapaxes(1, 2))
    diag = np.diagonal(h, axis1=1, axis2=2).copy()
    if np.any(diag < 0):
        _fail(name, "hessian has a negative diagonal entry: it is not positive semidefinite")
    dead = diag == 0
    if np.any(dead[:, :, None] & (h != 0)):
        _fail(name, "hessian has a zero diagonal entry whose row is not zero: it is not positive semidefinite")
    return h, diag, dead


def _per_row(value, rows, what, name):
    """A per-output-row parameter as a float64 array of shape ``rows`` (G, R): a scalar, one value per
    row in the weight's row shape, or, for a grouped weight, the flat (G*R,) of a conv's output channels."""
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        _fail(name, f"{what} must be numeric, got {value!r}")
    arr = arr.astype(np.float64)
    if arr.ndim == 0:
        return np.broadcast_to(arr, rows)
    if arr.shape == rows:
        return arr
    if arr.shape in ((rows[1],), (rows[0] * rows[1],)) and (rows[0] == 1 or arr.size == rows[0] * rows[1]):
        return arr.reshape(rows)
    _fail(name, f"{what} must be a scalar or have one value per output row ({rows[0] * rows[1]}), "
                f"got shape {arr.shape}")


def _grid(scale, zero_point, bits, fill, rows, name):
    """(s, z, qmax, fill, live) per row, float64 (qmax, z integral), checked against each other."""
    bits = _per_row(bits, rows, "bits", name)
    if np.any(~np.isfinite(bits)) or np.any(bits != np.round(bits)):
        _fail(name, f"bits must be integers, got {np.unique(bits).tolist()}")
    if np.any(bits < 0) or np.any(bits > _MAX_BITS):
        _fail(name, f"bits must lie in 0..{_MAX_BITS}, got {np.unique(bits).tolist()}")
    live = bits > 0
    qmax = np.where(live, np.exp2(bits) - 1.0, 0.0)
    s = _per_row(scale, rows, "scale", name)
    z = _per_row(zero_point, rows, "zero_point", name)
    f = _per_row(fill, rows, "fill", name)
    if np.any(live & ~(np.isfinite(s) & (s > 0))):
        _fail(name, "scale must be finite and > 0 in every row with bits > 0")
    if np.any(live & ~(np.isfinite(z) & (z == np.round(z)) & (z >= 0) & (z <= qmax))):
        _fail(name, "zero_point must be an integer in [0, 2^bits - 1] in every row with bits > 0")
    if np.any(~live & ~np.isfinite(f)):
        _fail(name, "fill must be finite in every row with 0 bits")
    return np.where(live, s, 1.0), np.where(live, z, 0.0), qmax, f, live


def _order(order, diag, name):
    """The column order per group, (G, K) int64."""
    groups, k = diag.shape
    if isinstance(order, str):
        if order == "descending":
            return np.argsort(-diag, axis=1, kind="stable")
        if order == "natural":
            return np.broadcast_to(np.arange(k), (groups, k)).copy()
        _fail(name, f"order must be 'descending', 'natural' or a permutation of the columns, got {order!r}")
    perm = np.asarray(order)
    if perm.shape == (k,):
        perm = np.broadcast_to(perm, (groups, k))
    if perm.shape != (groups, k) or not np.issubdtype(perm.dtype, np.integer) \
            or np.any(np.sort(perm, axis=1) != np.arange(k)):
        _fail(name, f"order must be a permutation of the {k} columns (shape ({k},) or ({groups}, {k}))")
    return perm.astype(np.int64)


# --------------------------------------------------------------------------- the solve
def _round(w, s, z, qmax):
    """Codes and values of ``w`` on the per-row grid; s, z, qmax broadcast against ``w``."""
    q = np.clip(np.rint(w / s) + z, 0.0, qmax)
    return q, (q - z) * s


def _row_objective(err, h):
    """e_r H e_r^T for every row: (G, R)."""
    return np.einsum("grk,grk->gr", err @ h, err)


def _inverse_cholesky(h, damp, diag, dead, name):
    """Upper U with (H + lambda I)^{-1} = U^T U, per group, and lambda; dead columns made decoupled."""
    groups, k, _ = h.shape
    count = np.count_nonzero(~dead, axis=1)
    live_mean = np.where(count > 0, np.where(dead, 0.0, diag).sum(axis=1) / np.maximum(count, 1), 1.0)
    lam = damp * live_mean
    hd = h.copy()
    idx = np.arange(k)
    # a dead column is decoupled (its row is 0); give it a diagonal of the group's size so that the
    # factorisation stays well scaled; nothing else sees it
    hd[:, idx, idx] = np.where(dead, live_mean[:, None], diag) + lam[:, None]
    flipped = hd[:, ::-1, ::-1]
    try:
        low = np.linalg.cholesky(flipped)
    except np.linalg.LinAlgError:
        bad = [g for g in range(groups) if not _is_positive_definite(flipped[g])]
        where = f" (group {bad[0]}{' and ' + str(len(bad) - 1) + ' more' if len(bad) > 1 else ''})" \
            if groups > 1 else ""
        hint = "use damp > 0" if damp == 0 else "it is not positive semidefinite"
        _fail(name, f"hessian{where} is singular or not positive definite with damping lambda = "
                    f"{lam[bad[0]]:.3g} (damp={damp:g}); {hint}")
    eye = np.broadcast_to(np.eye(k), low.shape)
    upper = solve_triangular(low, eye, lower=True)[:, ::-1, ::-1]   # J L^{-1} J
    return upper, lam


def _is_positive_definite(a):
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


def _gptq(w, upper, s, z, qmax, live, block):
    """Algorithm 1 of GPTQ on permuted (G, R, K) weights and (G, K, K) upper factors, batched."""
    w = w.copy()
    k = w.shape[2]
    codes = np.empty_like(w)
    target = np.empty_like(w)
    s, z, qmax, live = s[..., None], z[..., None], qmax[..., None], live[..., None]
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, :, i1:i2]                       # a view: updated in place
        err1 = np.empty_like(w1)
        u1 = upper[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i:i + 1]
            q, value = _round(col, s, z, qmax)
            codes[:, :, i1 + i:i1 + i + 1] = q
            target[:, :, i1 + i:i1 + i + 1] = col
            err = np.where(live, (col - value) / u1[:, None, i, i:i + 1], 0.0)
            w1[:, :, i:] -= err * u1[:, None, i, i:]
            err1[:, :, i:i + 1] = err
        if i2 < k:
            w[:, :, i2:] -= err1 @ upper[:, i1:i2, i2:]
    return codes, target


def gptq_round(weight, hessian, *, scale, zero_point, bits, fill=0.0, damp=0.01, order="descending",
               block=128, name="layer") -> RoundingResult:
    r"""Round a layer's weight to its grid column by column, compensating with the Hessian (GPTQ).

    Greedy second-order rounding of :math:`\min_{\hat W}\operatorname{tr}((W-\hat W)H(W-\hat W)^\top)`
    over the grid (GPTQ, Frantar et al. 2023, Algorithm 1): for each column :math:`q` in ``order``,

    .. math::

        \hat w_q = \operatorname{grid}(w_q),\qquad
        w_F \leftarrow w_F - \frac{w_q - \hat w_q}{U_{qq}}\,U_{q,F},\qquad
        (H + \lambda I)^{-1} = U^\top U,

    which puts the not-yet-rounded columns :math:`F` at the least-squares optimum
    :math:`e_F = -e_Q H_{QF}H_{FF}^{-1}` given the rounded ones (OBQ, Frantar & Alistarh 2022, eq. 3).
    With :math:`H = I` (or any diagonal :math:`H`) nothing is compensated and the result is nearest
    rounding.

    Parameters
    ----------
    weight : array_like
        ``(O, K)`` (a linear layer, or a conv flattened to ``(O, C*kh*kw)``), or ``(G, O/G, K/G)`` for a
        grouped conv with ``G`` groups (depthwise: ``G`` = channels, ``K/G = kh*kw``).
    hessian : array_like
        :math:`H = X^\top X` of the layer's input columns: ``(K, K)``, or ``(G, K/G, K/G)``, one per group.
        Symmetric positive semidefinite; its scale does not matter (any positive multiple gives the
        same rounding).
    scale, zero_point, bits : array_like
        The grid of each output row: step :math:`s_r > 0`, integer zero point in ``[0, 2^bits - 1]``,
        bits 0..16. A scalar, an array of the weight's row shape ``weight.shape[:-1]``, or, for a
        grouped weight, the flat ``(O,)`` in the order of a conv's output channels. Where ``bits`` is 0,
        ``scale`` and ``zero_point`` are ignored.
    fill : array_like
        The constant that 0-bit rows reconstruct as (same shapes as ``scale``).
    damp : float
        :math:`\lambda = \text{damp}\cdot\operatorname{mean}\operatorname{diag}H` over the live columns,
        >= 0. With ``damp=0`` a singular Hessian raises.
    order : {"descending", "natural"} or array_like of int
        Column order: by descending :math:`H_{ii}` (GPTQ's act-order), as stored, or an explicit
        permutation of ``K/G`` columns (shared, or one row per group).
    block : int
        Columns updated together (lazy batch updates); the result does not depend on it, up to rounding.
    name : str
        The layer's name, used in error messages.

    Returns
    -------
    RoundingResult
        ``codes``, ``weight`` (dequantized), ``target``, per-row ``objective`` and ``nearest_objective``,
        ``damping``, ``dead`` columns and the ``order`` used.

    Raises
    ------
    ValueError
        Naming the layer: shapes that do not match, NaN or Inf, a Hessian that is not symmetric or not
        positive semidefinite (negative diagonal, a zero diagonal with a non-zero row) or singular with
        ``damp=0``, a grid parameter out of range.

    Examples
    --------
    Levels :math:`(q - 2)/4`, i.e. -0.5, -0.25, 0, 0.25. With :math:`H = I` the codes are nearest
    rounding; with correlated inputs the second row's error in column 0 (0.12) is compensated by
    moving column 1 from 0.1 to :math:`0.1 + 0.12\cdot 0.9 = 0.208`, which rounds up:

    >>> w = np.array([[0.3, -0.2], [0.12, 0.1]])
    >>> gptq_round(w, np.eye(2), scale=0.25, zero_point=2, bits=2).codes
    array([[3, 1],
           [2, 2]])
    >>> h = np.array([[1.0, 0.9], [0.9, 1.0]])
    >>> res = gptq_round(w, h, scale=0.25, zero_point=2, bits=2, damp=0.0, order="natural")
    >>> res.codes, res.target[1].round(3)
    (array([[3, 1],
           [2, 3]]), array([0.12 , 0.208]))
    >>> res.objective.round(4), res.nearest_objective.round(4)
    (array([0.0095, 0.0045]), array([0.0095, 0.046 ]))
    """
    w, h, grouped = _as_groups(weight, hessian, name)
    groups, rows, k = w.shape
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        _fail(name, f"block must be a positive integer, got {block!r}")
    try:
        damp = float(damp)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layer {name!r}: damp must be a number, got {damp!r}") from exc
    if not np.isfinite(damp) or damp < 0:
        _fail(name, f"damp must be finite and >= 0, got {damp!r}")
    s, z, qmax, fill, live = _grid(scale, zero_point, bits, fill, (groups, rows), name)
    h, diag, dead = _check_hessian(h, name)
    perm = _order(order, diag, name)

    gi = np.arange(groups)[:, None]
    hp = h[gi[:, :, None], perm[:, :, None], perm[:, None, :]]
    upper, lam = _inverse_cholesky(hp, damp, diag[gi, perm], dead[gi, perm], name)
    wp = np.take_along_axis(w, perm[:, None, :], axis=2)
    codes_p, target_p = _gptq(wp, upper, s, z, qmax, live, int(block))

    inverse = np.argsort(perm, axis=1)
    codes = np.take_along_axis(codes_p, inverse[:, None, :], axis=2)
    target = np.take_along_axis(target_p, inverse[:, None, :], axis=2)
    live3 = live[..., None]
    target = np.where(live3, target, w)
    codes = np.where(live3, codes, 0.0)
    values = np.where(live3, (codes - z[..., None]) * s[..., None], fill[..., None])
    nearest = np.where(live3, _round(w, s[..., None], z[..., None], qmax[..., None])[1], fill[..., None])
    objective = _row_objective(w - values, h)
    nearest_objective = _row_objective(w - nearest, h)

    def out(a):
        return a if grouped else a[0]

    return RoundingResult(codes=out(codes.astype(np.int64)), weight=out(values), target=out(target),
                          objective=out(objective), nearest_objective=out(nearest_objective),
                          damping=lam if grouped else float(lam[0]), dead=out(dead), order=out(perm))


def layer_objective(weight, quantized, hessian, *, name="layer") -> float:
    r"""The layer's calibration objective :math:`\sum_g \operatorname{tr}((W-\hat W)H(W-\hat W)^\top)`.

    With :math:`H = X^\top X` this is :math:`\lVert X(W-\hat W)^\top\rVert_F^2`, the squared error of
    the layer's output on the inputs :math:`X` (summed over groups for a grouped weight).

    Parameters
    ----------
    weight, quantized : array_like
        ``(O, K)`` or ``(G, O/G, K/G)``, the same shape.
    hessian : array_like
        ``(K, K)`` or ``(G, K/G, K/G)``.
    name : str
        The layer's name, used in error messages.

    Examples
    --------
    >>> x = np.array([[1.0, 2.0], [0.0, 1.0]])
    >>> w, w_hat = np.array([[1.0, 1.0]]), np.array([[0.5, 1.0]])
    >>> layer_objective(w, w_hat, x.T @ x), float(np.sum((x @ (w - w_hat).T) ** 2))
    (0.25, 0.25)
    """
    w, h, _ = _as_groups(weight, hessian, name)
    q = np.asarray(quantized, dtype=np.float64)
    if q.shape != np.shape(weight):
        _fail(name, f"quantized has shape {q.shape}, expected {np.shape(weight)}")
    if not np.all(np.isfinite(q)):
        _fail(name, "quantized contains NaN or Inf")
    return float(_row_objective(w - q.reshape(w.shape), h).sum())
