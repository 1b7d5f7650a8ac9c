r"""How close a quantized model is to the truth and to its float model: top-k, agreement, KL, logit SQNR.

Every function takes logits ``[N, C]`` (any float dtype; reductions run in float64) and rejects NaN or
infinite logits with a ``ValueError`` naming the argument. :class:`Accumulator` sums the same quantities
over batches, so the result over a data loader equals the result over the concatenated batch.
"""
from __future__ import annotations

import math

import torch

__all__ = ["topk_correct", "agreement", "kl_divergence", "sqnr_db", "Accumulator"]


def _check_logits(logits, name: str) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, C] with N, C >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {logits.dtype}")
    if torch.isnan(logits).any():
        raise ValueError(f"{name} contains NaN ({int(torch.isnan(logits).sum())} of {logits.numel()} values)")
    if torch.isinf(logits).any():
        raise ValueError(f"{name} contains inf ({int(torch.isinf(logits).sum())} of {logits.numel()} values)")
    return logits


def _check_pair(a, b, name_a: str, name_b: str):
    a, b = _check_logits(a, name_a), _check_logits(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    return a, b


def topk_correct(logits, labels, ks=(1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the ``k`` largest logits, for each ``k`` in ``ks``.

    Ties are broken as ``torch.topk`` breaks them.

    Examples
    --------
    >>> logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]])
    >>> topk_correct(logits, torch.tensor([1, 2]), ks=(1, 2))
    {1: 1, 2: 2}
    """
    logits = _check_logits(logits, "logits")
    labels = torch.as_tensor(labels)
    if labels.shape != (logits.shape[0],) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers of shape ({logits.shape[0]},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if ((labels < 0) | (labels >= logits.shape[1])).any():
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or not 1 <= k <= logits.shape[1] for k in ks):
        raise ValueError(f"ks must be ints in 1..{logits.shape[1]} (the number of classes), got {ks!r}")
    top = logits.topk(max(ks), dim=1).indices
    hit = top == labels.to(top.device).unsqueeze(1)
    return {k: int(hit[:, :k].any(dim=1).sum()) for k in ks}


def agreement(logits_a, logits_b) -> int:
    """Number of rows whose top-1 class (``argmax``) is the same in both.

    >>> agreement(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0]]))
    1
    """
    a, b = _check_pair(logits_a, logits_b, "logits_a", "logits_b")
    return int((a.argmax(dim=1) == b.argmax(dim=1)).sum())


def kl_divergence(logits_ref, logits_q) -> torch.Tensor:
    r"""Per-row :math:`\mathrm{KL}(p\,\|\,q)` in nats, float64, of :math:`p = \mathrm{softmax}(\text{ref})`,
    :math:`q = \mathrm{softmax}(\text{q})`:

    .. math:: \mathrm{KL}(p\,\|\,q) = \sum_c p_c (\log p_c - \log q_c)

    computed from ``log_softmax`` in float64 (terms with :math:`p_c = 0` count 0); rounding below 0 is
    clamped to 0.

    >>> kl = kl_divergence(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]]))
    >>> round(float(kl[0]), 6)   # 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75) = 0.5 log(4/3)
    0.143841
    """
    ref, q = _check_pair(logits_ref, logits_q, "logits_ref", "logits_q")
    log_p = torch.log_softmax(ref.to(torch.float64), dim=1)
    log_q = torch.log_softmax(q.to(torch.float64), dim=1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=1).clamp_min(0.0)


def _sums(ref, test, name_ref: str = "ref", name_test: str = "test") -> tuple[float, float]:
    for value, name in ((ref, name_ref), (test, name_test)):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.numel() == 0:
            raise ValueError(f"{name} must not be empty")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or inf")
    if ref.shape != test.shape:
        raise ValueError(f"{name_ref} and {name_test} must have the same shape, got {tuple(ref.shape)} "
                         f"and {tuple(test.shape)}")
    ref64, test64 = ref.to(torch.float64), test.to(torch.float64)
    return float((ref64 ** 2).sum()), float(((ref64 - test64) ** 2).sum())


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(ref, test) -> float:
    r"""Signal-to-quantization-noise ratio of ``test`` against ``ref`` in dB (sums in float64):

    .. math:: \mathrm{SQNR} = 10 \log_{10} \frac{\sum \text{ref}^2}{\sum (\text{ref} - \text{test})^2}

    ``+inf`` when the tensors are equal, ``-inf`` when ``ref`` is all zeros and ``test`` is not.

    >>> sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5]))   # 25 / 0.25 = 100
    20.0
    """
    return _db(*_sums(ref, test))


class Accumulator:
    """Sums the metrics of a quantized model over batches; :meth:`compute` gives the final numbers.

    Each :meth:`update` takes the model's ``logits`` and, optionally, the true ``labels`` (for top-1/top-5)
    and the float model's logits ``reference`` on the same inputs (for agreement, KL and logit SQNR). A
    metric whose inputs never came is ``None`` in the result; a metric must be fed on every batch or none.

    Examples
    --------
    >>> acc = Accumulator()
    >>> ref = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    >>> acc.update(ref + 0.5, labels=torch.tensor([0]), reference=ref)
    >>> r = acc.compute()
    >>> r["top1"], r["agreement"], r["n"]
    (100.0, 100.0, 1)
    """

    def __init__(self):
        self.n = 0
        self._n_labelled = 0
        self._n_referenced = 0
        self._top1 = 0
        self._top5 = 0
        self._agree = 0
        self._kl_sum = 0.0
        self._signal = 0.0
        self._noise = 0.0

    def update(self, logits, *, labels=None, reference=None) -> None:
        """Add one batch: ``logits`` ``[N, C]``; ``labels`` ``[N]`` and/or ``reference`` ``[N, C]``."""
        logits = _check_logits(logits, "logits")
        n = logits.shape[0]
        if self.n and (labels is not None) != (self._n_labelled == self.n):
            raise ValueError("labels must be given for every batch or for none")
        if self.n and (reference is not None) != (self._n_referenced == self.n):
            raise ValueError("reference must be given for every batch or for none")
        k5 = min(5, logits.shape[1])
        hits = topk_correct(logits, labels, ks=(1, k5)) if labels is not None else None
        if reference is not None:   # everything is checked before anything is added
            reference, logits = _check_pair(reference, logits, "reference", "logits")
            agree = agreement(reference, logits)
            kl = float(kl_divergence(reference, logits).sum())
            signal, noise = _sums(reference, logits, "reference", "logits")
            self._agree += agree
            self._kl_sum += kl
            self._signal += signal
            self._noise += noise
            self._n_referenced += n
        if hits is not None:
            self._top1 += hits[1]
            self._top5 += hits[k5]
            self._n_labelled += n
        self.n += n

    _COUNTS = ("n", "_n_labelled", "_n_referenced", "_top1", "_top5", "_agree")
    _FLOATS = ("_kl_sum", "_signal", "_noise")

    def sums(self) -> dict:
        """The raw sums and counts (names without the underscore), the state to add across processes.

        Adding the ``sums()`` of accumulators fed disjoint batches and rebuilding with :meth:`from_sums` gives
        the accumulator of all the batches (counts exactly; float sums up to rounding), which averages of
        averages would not.

        >>> a, b = Accumulator(), Accumulator()
        >>> a.update(torch.tensor([[1.0, 0.0]]), labels=torch.tensor([0]))
        >>> b.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), labels=torch.tensor([1, 1]))
        >>> both = {k: a.sums()[k] + b.sums()[k] for k in a.sums()}
        >>> Accumulator.from_sums(both).compute()["top1"]   # 2 of 3, not the mean of 100 % and 50 %
        66.66666666666667
        """
        return {k.lstrip("_"): getattr(self, k) for k in self._COUNTS + self._FLOATS}

    @classmethod
    def from_sums(cls, sums: dict) -> "Accumulator":
        """An accumulator holding ``sums`` (as :meth:`sums` returns them; counts may come back as floats)."""
        acc = cls()
        for k in cls._COUNTS + cls._FLOATS:
            name = k.lstrip("_")
            if name not in sums:
                raise ValueError(f"sums lacks {name!r}")
            v = float(sums[name])
            if k in cls._COUNTS:
                if not (v >= 0 and v == round(v)):
                    raise ValueError(f"sums[{name!r}] must be a non-negative whole count, got {sums[name]!r}")
                setattr(acc, k, int(round(v)))
            else:
                setattr(acc, k, v)
        return acc

    def compute(self) -> dict:
        """``{"top1", "top5", "agreement"`` (percent), ``"mean_kl"`` (nats), ``"logit_sqnr_db"``, ``"n"}``."""
        labelled = self._n_labelled > 0
        referenced = self._n_referenced > 0
        return {
            "top1": 100.0 * self._top1 / self.n if labelled else None,
            "top5": 100.0 * self._top5 / self.n if labelled else None,
            "agreement": 100.0 * self._agree / self.n if referenced else None,
            "mean_kl": self._kl_sum / self.n if referenced else None,
            "logit_sqnr_db": _db(self._signal, self._noise) if referenced else None,
            "n": self.n,
        }
