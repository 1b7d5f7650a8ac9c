r"""The seed's activation bias correction (``-bca``, ``IQM:180-196``) at the quantized output of a conv.

With :math:`y` the conv's output before its output quantizer (passed through a ReLU when one consumes it) and
:math:`\hat y` the quantized output, channel :math:`c` of every element is corrected as

.. math::

    q_c = \frac{\sum y_c - \sum \hat y_c}{\#\{y_c > 0\} + 10^{-8}}, \qquad
    \hat y_c \leftarrow \hat y_c + q_c\,[\hat y_c > 0],

sums and counts over the batch and the spatial positions (:func:`batch_shift`). Where as many quantized as float
values are positive, the channel's sum is restored exactly.

.. warning::

    The seed computes :math:`q_c` from the very batch it scores (``mode="oracle"``): the statistics of the
    evaluated data correct their own outputs. That is an **oracle**, not deployable; results made with it are
    marked as such (the layer's report, :meth:`aciq.quant.QuantConfig.describe`), and they depend on the batch
    (its size, its images, the ranks of a data-parallel run). It exists to reproduce the seed.

``mode="calibration"`` is the deployable form: :func:`calibrate_act_bias` runs the quantized model once on the
calibration set as one batch with every correction in oracle mode, each layer on its already corrected
predecessors, and keeps the shifts it computed; afterwards the shifts are constants and the outputs no longer
depend on the batch. With the calibration set equal to a scored batch the two forms agree exactly.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["MODES", "ORACLE_WARNING", "ActBiasCorrection", "batch_shift", "calibrate_act_bias"]

MODES = ("calibration", "oracle")
ORACLE_WARNING = ("oracle: corrected with statistics of the scored batch itself (the seed's -bca); not "
                  "deployable, for reproduction only")
_EPS = 1e-8       # the seed's guard against channels that are never positive


def _view(t: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * like.ndim
    shape[axis] = -1
    return t.reshape(shape)


def batch_shift(y: torch.Tensor, y_hat: torch.Tensor, *, relu: bool, axis: int = 1) -> torch.Tensor:
    """The seed's :math:`q_c` of one batch (float64, one value per channel along ``axis``).

    Examples
    --------
    >>> y = torch.tensor([[[-1.0, 0.5, 1.5, 2.0]]])        # one channel
    >>> y_hat = torch.tensor([[[0.0, 0.0, 1.0, 2.0]]])
    >>> batch_shift(y, y_hat, relu=True)                    # (4 - 3) / 3 positive values
    tensor([0.3333], dtype=torch.float64)
    """
    ref = torch.relu(y) if relu else y
    dims = tuple(d for d in range(y.ndim) if d != axis % y.ndim)
    diff = ref.sum(dim=dims, dtype=torch.float64) - y_hat.sum(dim=dims, dtype=torch.float64)
    return diff / ((ref > 0).sum(dim=dims).to(torch.float64) + _EPS)


class ActBiasCorrection(nn.Module):
    """The correction of one conv's quantized output: ``forward(y, y_hat)`` returns the corrected ``y_hat``.

    ``mode="oracle"``: the shift of every call's own batch (:func:`batch_shift`; see the module's warning).
    ``mode="calibration"``: the fixed ``shift`` set by :func:`calibrate_act_bias` (refuses to run before).
    """

    def __init__(self, channels: int, *, mode: str, relu: bool, axis: int = 1, name: str = "layer"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        self.mode, self.relu, self.axis, self.name = mode, bool(relu), axis, name
        self.register_buffer("shift", torch.zeros(channels, dtype=torch.float64))
        self.calibrated = False
        self.recording = False
        self.seen = False

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        if self.mode == "oracle" or self.recording:
            q = batch_shift(y, y_hat, relu=self.relu, axis=self.axis)
            if self.recording:
                self.shift.copy_(q)
                self.seen = True
        elif not self.calibrated:
            raise ValueError(f"layer {self.name}: the activation bias correction is not calibrated (quantize() "
                             "calibrates it; or call aciq.quant.actbias.calibrate_act_bias(qmodel, calibration_data))")
        else:
            q = self.shift
        return y_hat + _view(q.to(y_hat.dtype), y_hat, self.axis) * (y_hat > 0)

    def record(self) -> dict:
        """The layer's report entry."""
        out = {"mode": self.mode, "relu": self.relu}
        if self.mode == "oracle":
            out["warning"] = ORACLE_WARNING
        else:
            out["mean_abs_shift"] = float(self.shift.abs().mean()) if self.calibrated else None
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode}{' (ORACLE: scored-data statistics)' if self.mode == 'oracle' else ''}, " \
               f"relu={self.relu}"


@torch.no_grad()
def calibrate_act_bias(qmodel: nn.Module, batches: list) -> dict:
    """Set the shifts of every ``calibration``-mode correction of ``qmodel`` from the calibration ``batches``
    (concatenated: one batch, so nothing depends on how they were split); return ``{layer: record}``."""
    modules = {name: m for name, m in qmodel.named_modules()
               if isinstance(m, ActBiasCorrection) and m.mode == "calibration"}
    if not modules:
        return {}
    device = next((p.device for p in qmodel.parameters()), torch.device("cpu"))
    x = torch.cat([b.to(device) for b in batches])
    for m in modules.values():
        m.recording, m.seen = True, False
    try:
        qmodel(x)
    finally:
        for m in modules.values():
            m.recording = False
    unreached = [m.name for m in modules.values() if not m.seen]
    if unreached:
        raise ValueError(f"layer {unreached[0]}: the calibration data never reached it, so its activation bias "
                         "correction has no statistics (leave it in float with skip=)")
    for m in modules.values():
        m.calibrated = True
    return {m.name: m.record() for m in modules.values()}

