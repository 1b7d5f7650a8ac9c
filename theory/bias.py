r"""Per-channel bias (mean) and variance correction of quantized weights (the paper's eq. 12, 13).

Quantization shifts the mean and shrinks or stretches the spread of each output channel's weights
(clipping pulls the tails in; rounding does not average out over a few hundred weights). For
output channel :math:`c` (a row of ``w`` reshaped to ``[C_out, -1]``, i.e. ``axis=0`` of OIHW or
``[out, in]`` weights), eq. 12 measures

.. math::

    \mu_c = \mathbb{E}(W_c) - \mathbb{E}(W_c^q), \qquad
    \xi_c = \frac{\lVert W_c - \mathbb{E}(W_c)\rVert_2}{\lVert W_c^q - \mathbb{E}(W_c^q)\rVert_2}
    \qquad (12)

and eq. 13 corrects :math:`w \leftarrow \xi_c(w + \mu_c)` for every :math:`w \in W_c^q`.

Two forms are offered (``form=``):

* ``"paper"``: eq. 13 as printed. Its channel mean becomes :math:`\xi_c\,\mathbb{E}(W_c)`, so it
  restores the mean only when :math:`\xi_c = 1` (mean error :math:`(\xi_c - 1)\mathbb{E}W_c`).
* ``"seed"``: what the authors' code does, :math:`\xi_c(w - \mathbb{E}W_c^q) + \mathbb{E}W_c`:
  it restores the channel mean and the centred norm (hence the standard deviation) exactly.

With ``mode="mean"`` (:math:`\xi_c` taken as 1; all the published experiments) the two forms are
the same, :math:`w + \mu_c`.

Every correction is affine per channel, ``corrected = scale_factor * w_q + offset``
(:func:`correction_terms`): a quantizer can fold ``scale_factor`` into the channel's step size and
``offset`` into a per-channel shift, so the integer codes stay integers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import check_axis, check_data

MODES = ("mean", "mean+variance")
FORMS = ("seed", "paper")


@dataclass(frozen=True)
class BiasStats:
    """Per-channel terms of eq. 12: ``mu`` (mean shift, float) and ``xi`` (norm ratio, > 0 or 0)."""

    mu: np.ndarray
    xi: np.ndarray


@dataclass(frozen=True)
class CorrectionTerms:
    """Per-channel affine correction: ``corrected = scale_factor * w_q + offset`` (channel-wise)."""

    scale_factor: np.ndarray
    offset: np.ndarray


# --------------------------------------------------------------------------- helpers
def _rows(w, w_q, axis):
    """Validate and reshape both tensors to [channels, -1] along ``axis``."""
    w = check_data(w, "w")
    w_q = check_data(w_q, "w_q")
    if w.ndim == 0:
        raise ValueError("w must have at least one dimension (the channel axis)")
    if w_q.shape != w.shape:
        raise ValueError(f"w_q must have the shape of w {w.shape}, got {w_q.shape}")
    axis = check_axis(axis, what="weights", ndim=w.ndim)
    c = w.shape[axis]
    return (np.moveaxis(w, axis, 0).reshape(c, -1), np.moveaxis(w_q, axis, 0).reshape(c, -1), axis)


def _check_choice(value, name, allowed):
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value.lower()


def _centred_norm(rows: np.ndarray) -> np.ndarray:
    """||r - mean r||_2 per row, exactly 0 for a constant row (no rounding residue)."""
    norm = np.linalg.norm(rows - rows.mean(axis=1, keepdims=True), axis=1)
    return np.where(rows.max(axis=1) == rows.min(axis=1), 0.0, norm)


# --------------------------------------------------------------------------- eq. 12
def channel_bias(w, w_q, *, axis=0) -> BiasStats:
    r"""Per-channel mean shift :math:`\mu_c` and norm ratio :math:`\xi_c` of eq. 12.

    .. math::

        \mu_c = \mathbb{E}(W_c) - \mathbb{E}(W_c^q), \qquad
        \xi_c = \frac{\lVert W_c - \mathbb{E}W_c\rVert_2}{\lVert W_c^q - \mathbb{E}W_c^q\rVert_2}

    The ratio of centred norms equals the ratio of standard deviations (the seed uses
    ``std(W)/(std(W^q)+1e-8)``). A channel whose quantized weights are constant has no spread
    to rescale: its :math:`\xi_c` is defined as 1 (never inf or NaN), so that correcting it only
    shifts its mean.

    Parameters
    ----------
    w, w_q : array_like
        Full-precision and quantized weights of the same shape.
    axis : int
        The output-channel axis (0 for OIHW conv and ``[out, in]`` linear weights).

    Returns
    -------
    BiasStats
        ``mu`` and ``xi``, one value per channel.

    Examples
    --------
    >>> w = [[0.1, 0.5, 0.9], [-1.0, 0.0, 2.0]]
    >>> w_q = [[0.0, 0.5, 1.0], [-1.0, 0.0, 1.0]]
    >>> s = channel_bias(w, w_q)
    >>> s.mu.round(4).tolist(), s.xi.round(4).tolist()
    ([0.0, 0.3333], [0.8, 1.5275])
    """
    rows, rows_q, _ = _rows(w, w_q, axis)
    mu = rows.mean(axis=1) - rows_q.mean(axis=1)
    norm_q = _centred_norm(rows_q)
    safe = np.where(norm_q > 0, norm_q, 1.0)
    xi = np.where(norm_q > 0, _centred_norm(rows) / safe, 1.0)
    return BiasStats(mu=mu, xi=xi)


# --------------------------------------------------------------------------- eq. 13
def correction_terms(w, w_q, *, mode="mean", form="seed", axis=0) -> CorrectionTerms:
    r"""Per-channel ``(scale_factor, offset)`` with ``corrected = scale_factor * w_q + offset``.

    With :math:`m_c = \mathbb{E}W_c` and :math:`m^q_c = \mathbb{E}W^q_c`:

    * ``mode="mean"`` (both forms): :math:`(1,\ \mu_c)`;
    * ``mode="mean+variance"``, ``form="seed"``: :math:`(\xi_c,\ m_c - \xi_c m^q_c)`;
    * ``mode="mean+variance"``, ``form="paper"`` (eq. 13): :math:`(\xi_c,\ \xi_c \mu_c)`.

    Parameters
    ----------
    w, w_q : array_like
        Full-precision and quantized weights of the same shape.
    mode : {"mean", "mean+variance"}
    form : {"seed", "paper"}
    axis : int
        The output-channel axis.

    Returns
    -------
    CorrectionTerms
        ``scale_factor`` and ``offset``, one value per channel.

    Examples
    --------
    >>> t = correction_terms([[0.1, 0.5, 0.9]], [[0.0, 0.5, 1.0]], mode="mean+variance")
    >>> t.scale_factor.round(4).tolist(), t.offset.round(4).tolist()
    ([0.8], [0.1])
    """
    mode = _check_choice(mode, "mode", MODES)
    form = _check_choice(form, "form", FORMS)
    rows, rows_q, _ = _rows(w, w_q, axis)
    if mode == "mean":  # no norms needed
        mu = rows.mean(axis=1) - rows_q.mean(axis=1)
        return CorrectionTerms(scale_factor=np.ones_like(mu), offset=mu)
    stats = channel_bias(rows, rows_q, axis=0)
    if form == "seed":
        offset = rows.mean(axis=1) - stats.xi * rows_q.mean(axis=1)
    else:
        offset = stats.xi * stats.mu
    return CorrectionTerms(scale_factor=stats.xi, offset=offset)


def correct_bias(w, w_q, *, mode="mean", form="seed", axis=0) -> np.ndarray:
    r"""Bias-corrected quantized weights (eq. 13, or the seed's mean- and norm-preserving form).

    .. math::

        \text{paper:}\quad w \leftarrow \xi_c\,(w + \mu_c) \qquad (13)

        \text{seed:}\quad w \leftarrow \xi_c\,\big(w - \mathbb{E}W^q_c\big) + \mathbb{E}W_c

    for every :math:`w \in W^q_c`; ``mode="mean"`` sets :math:`\xi_c = 1` (both forms become
    :math:`w + \mu_c`). The seed form restores each channel's mean and centred norm exactly; the
    paper form's channel mean is :math:`\xi_c\,\mathbb{E}W_c` (off by :math:`(\xi_c-1)\mathbb{E}W_c`).
    The corrected weights leave the integer grid: use :func:`correction_terms` to fold the
    correction into a per-channel scale and offset instead.

    Parameters
    ----------
    w, w_q : array_like
        Full-precision and quantized weights of the same shape.
    mode : {"mean", "mean+variance"}
    form : {"seed", "paper"}
    axis : int
        The output-channel axis.

    Returns
    -------
    numpy.ndarray
        Same shape as ``w_q``.

    Examples
    --------
    >>> w, w_q = [[0.1, 0.5, 0.9]], [[0.0, 0.5, 1.0]]
    >>> correct_bias(w, w_q, mode="mean+variance").round(4).tolist()
    [[0.1, 0.5, 0.9]]
    >>> correct_bias([[1.0, 2.0]], [[1.0, 1.0]]).tolist()  # constant w_q: xi = 1, mean restored
    [[1.5, 1.5]]
    """
    terms = correction_terms(w, w_q, mode=mode, form=form, axis=axis)
    w_q = check_data(w_q, "w_q")
    axis = check_axis(axis, what="weights", ndim=w_q.ndim)
    shape = [1] * w_q.ndim
    shape[axis] = -1
    return terms.scale_factor.reshape(shape) * w_q + terms.offset.reshape(shape)
