"""Observers: record statistics of a tensor over the calibration images, return it unchanged.

Statistics are exact over all calibration images, whatever the batch size: sums in float64 over every
element (pass 1: count, sum, sum of squares, min, max, and the same of the positive part), then the absolute
deviation about the final mean and histograms of :math:`|x|` and of :math:`x^+` on ``[0, max]`` (pass 2), and,
for the ``mse`` and ``mix`` calibrators only, the measured error of candidate windows (pass 3). Statistics are
kept per channel; per-tensor values are sums over channels.

:class:`Statistics` saves to ``<stem>.json`` (metadata) + ``<stem>.npz`` (arrays, loaded with
``allow_pickle=False``): collect on 32 images, evaluate on 50 000.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["SiteStats", "Statistics", "Observer", "FORMAT_VERSION"]

FORMAT_VERSION = 2
_MOMENTS = ("n", "sum", "sumsq", "min", "max", "n_pos", "sum_pos", "sumsq_pos")


@dataclass
class SiteStats:
    """Statistics of one tensor site, per channel (arrays of shape (C,)) and per tensor."""

    channels: int
    axis: int
    ndim: int
    n: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    min: np.ndarray
    max: np.ndarray
    n_pos: np.ndarray
    sum_pos: np.ndarray
    sumsq_pos: np.ndarray
    absdev: np.ndarray | None = None        # sum |x - mean_c| per channel
    absdev_tensor: float | None = None      # sum |x - mean| over the tensor
    hist_abs: np.ndarray | None = None      # |x| on [0, max|x|]
    hist_pos: np.ndarray | None = None      # x on (0, max] (positive part)
    errors: dict = field(default_factory=dict)  # name -> measured squared-error sums (C, K) or (K,)
    cap: np.ndarray | None = None           # the site's known upper bound per channel (ReLU6, clamp) ...
    n_cap: np.ndarray | None = None         # ... and how many values sat exactly on it (the saturated mass)

    # ---- per channel
    @property
    def mean(self) -> np.ndarray:
        return self.sum / np.maximum(self.n, 1)

    @property
    def std(self) -> np.ndarray:
        var = (self.sumsq - self.n * self.mean ** 2) / np.maximum(self.n - 1, 1)
        return np.sqrt(np.maximum(var, 0.0))

    @property
    def b(self) -> np.ndarray:
        """Laplace scale: mean absolute deviation about the mean (the paper's and seed's estimator)."""
        if self.absdev is None:
            raise ValueError("statistics lack the absolute deviation (pass 2 was not collected)")
        return self.absdev / np.maximum(self.n, 1)

    @property
    def b_pos(self) -> np.ndarray:
        """Exponential scale of the positive part, E[x | x > 0] (half range: the tail of a ReLU output)."""
        return self.sum_pos / np.maximum(self.n_pos, 1)

    @property
    def sigma_pos(self) -> np.ndarray:
        """Half-normal scale of the positive part, sqrt(E[x^2 | x > 0])."""
        return np.sqrt(self.sumsq_pos / np.maximum(self.n_pos, 1))

    def hist_top(self, half: bool) -> float:
        """Right end of the histograms of pass 2: ``max x`` for ``hist_pos`` (``half``), ``max |x|`` for
        ``hist_abs`` (0 if there is nothing above 0)."""
        if half:
            return float(max(self.max.max(), 0.0))
        return float(max(np.abs(self.min).max(), np.abs(self.max).max()))

    # ---- per tensor
    def tensor(self) -> "SiteStats":
        """The same statistics for the whole tensor (one channel)."""
        one = lambda a, f=np.sum: np.array([f(a)])  # noqa: E731
        t = SiteStats(channels=1, axis=self.axis, ndim=self.ndim, n=one(self.n), sum=one(self.sum),
                      sumsq=one(self.sumsq), min=one(self.min, np.min), max=one(self.max, np.max),
                      n_pos=one(self.n_pos), sum_pos=one(self.sum_pos), sumsq_pos=one(self.sumsq_pos),
                      hist_abs=self.hist_abs, hist_pos=self.hist_pos)
        if self.absdev_tensor is not None:
            t.absdev = np.array([self.absdev_tensor])
        t.errors = {k: v[None] for k, v in self.errors.items() if v.ndim == 1}
        if self.cap is not None and np.all(self.cap == self.cap.flat[0]):   # one cap for the whole tensor
            t.cap, t.n_cap = self.cap[:1], one(self.n_cap)
        return t

    def to_arrays(self, prefix: str) -> dict:
        out = {f"{prefix}/{k}": getattr(self, k) for k in _MOMENTS}
        for k in ("absdev", "hist_abs", "hist_pos", "cap", "n_cap"):
            if getattr(self, k) is not None:
                out[f"{prefix}/{k}"] = getattr(self, k)
        if self.absdev_tensor is not None:
            out[f"{prefix}/absdev_tensor"] = np.array(self.absdev_tensor)
        for k, v in self.errors.items():
            out[f"{prefix}/errors.{k}"] = v
        return out

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict, prefix: str) -> "SiteStats":
        kw = {k: arrays[f"{prefix}/{k}"] for k in _MOMENTS}
        s = cls(channels=int(meta["channels"]), axis=int(meta["axis"]), ndim=int(meta["ndim"]), **kw)
        for k in ("absdev", "hist_abs", "hist_pos", "cap", "n_cap"):
            if f"{prefix}/{k}" in arrays:
                setattr(s, k, arrays[f"{prefix}/{k}"])
        if f"{prefix}/absdev_tensor" in arrays:
            s.absdev_tensor = float(arrays[f"{prefix}/absdev_tensor"])
        s.errors = {key.split("errors.", 1)[1]: arrays[key] for key in arrays
                    if key.startswith(f"{prefix}/errors.")}
        return s


def _rows(x: torch.Tensor, axis: int) -> torch.Tensor:
    """(C, rest) view of x with channels on ``axis`` (its own dtype: blocks become float64 one at a time)."""
    return x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer(torch.nn.Module):
    """Records statistics of what passes through; returns it unchanged.

    ``phase`` selects what is recorded: 1 moments, 2 absolute deviation and histograms, 3 candidate-window
    errors (``candidates`` maps a name to a callable ``(rows, start) -> (len(rows), K)`` per channel or
    ``(K,)`` per tensor: error sums of a block of channels ``start, start+1, ...``).
    ``hist_bins=None`` skips the histograms (only ``kl`` reads them). ``cap`` (a float or one per channel):
    the site's known upper bound; phase 1 then also counts the values equal to it. NaN/Inf are caught in
    phase 1 (later passes see the same tensors). Work goes by blocks of rows (:func:`_chunks`): the
    temporaries stay small, which matters for VGG-16's 100 M-weight classifier.
    """

    def __init__(self, site: str, *, hist_bins: int | None = 2048, cap=None):
        super().__init__()
        self.site = site
        self.hist_bins = hist_bins
        self.cap = cap
        self.phase = 1
        self.stats: SiteStats | None = None
        self.candidates: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.record(x)
        return x

    @torch.no_grad()
    def record(self, x: torch.Tensor) -> None:
        """Record ``x`` (channels on axis 1, or axis 0 for a 1-D tensor)."""
        if not torch.is_floating_point(x):
            raise ValueError(f"{self.site}: expected a float tensor, got {x.dtype}")
        axis = 1 if x.ndim > 1 else 0
        self.record_rows(_rows(x, axis), axis=axis, ndim=x.ndim)

    @torch.no_grad()
    def record_rows(self, rows: torch.Tensor, *, axis: int, ndim: int) -> None:
        """Record a ``(C, n)`` view: row ``c`` holds every value of channel ``c`` (sums in float64)."""
        if self.phase == 1:
            self._moments(rows, axis, ndim)
        elif self.phase == 2:
            self._spread(rows)
        elif self.phase == 3:
            for name, fn in self.candidates.items():
                parts, start = [], 0
                for chunk in _chunks(rows):
                    parts.append(fn(chunk.double(), start))
                    start += chunk.shape[0]
                # per channel: (rows, K) blocks stacked; per tensor: (K,) sums added
                e = (torch.cat(parts) if parts[0].ndim == 2 else torch.stack(parts).sum(0)).cpu().numpy()
                self.stats.errors[name] = self.stats.errors.get(name, 0.0) + e

    def _moments(self, rows, axis, ndim):
        keys = ("sum", "sumsq", "min", "max", "n_pos", "sum_pos", "sumsq_pos")
        parts = {k: [] for k in keys}
        for raw in _chunks(rows):
            lo, hi = torch.aminmax(raw, dim=1)
            chunk = raw.double()
            nonneg = bool((lo >= 0).all())        # after a ReLU: the positive part is the tensor itself
            pos = chunk if nonneg else chunk.clamp(min=0)
            total, squares = chunk.sum(1), torch.einsum("ij,ij->i", chunk, chunk)
            for k, v in (("sum", total), ("sumsq", squares), ("min", lo.double()), ("max", hi.double()),
                         ("n_pos", (raw > 0).sum(1).double()), ("sum_pos", total if nonneg else pos.sum(1)),
                         ("sumsq_pos", squares if nonneg else torch.einsum("ij,ij->i", pos, pos))):
                parts[k].append(v)
        new = {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}
        new["n"] = np.full(rows.shape[0], rows.shape[1], np.float64)
        if self.cap is not None:
            cap = np.array(np.broadcast_to(np.asarray(self.cap, np.float64), (rows.shape[0],)))
            cap_t = torch.as_tensor(cap, dtype=rows.dtype, device=rows.device)
            new["n_cap"] = torch.cat([(c == cap_t[i:i + c.shape[0], None]).sum(1).double() for i, c in
                                      _blocks(rows)]).cpu().numpy()
        # NaN reaches the sums and min/max, +-Inf the max/min: no separate pass over the data
        if not (np.isfinite(new["sum"]).all() and np.isfinite(new["min"]).all() and np.isfinite(new["max"]).all()):
            raise ValueError(f"{self.site}: the calibration activations contain NaN or Inf")
        s = self.stats
        n_cap = new.pop("n_cap", None)
        if s is None:
            self.stats = SiteStats(channels=rows.shape[0], axis=axis, ndim=ndim, **new)
            if n_cap is not None:
                self.stats.cap = np.array(np.broadcast_to(np.asarray(self.cap, np.float64), (rows.shape[0],)))
                self.stats.n_cap = n_cap
            return
        if rows.shape[0] != s.channels:
            raise ValueError(f"{self.site}: {rows.shape[0]} channels, earlier batches had {s.channels}")
        for k in ("n", "sum", "sumsq", "n_pos", "sum_pos", "sumsq_pos"):
            setattr(s, k, getattr(s, k) + new[k])
        s.min = np.minimum(s.min, new["min"])
        s.max = np.maximum(s.max, new["max"])
        if n_cap is not None:
            s.n_cap = s.n_cap + n_cap

    def _spread(self, rows):
        s = self.stats
        mean_c = torch.as_tensor(s.mean, dtype=torch.float64, device=rows.device)
        mean_t = float(s.sum.sum() / max(s.n.sum(), 1))
        hist = self.hist_bins is not None
        if hist:
            top, pmax = s.hist_top(False), s.hist_top(True)
            hist_abs = torch.zeros(self.hist_bins, dtype=torch.float64, device=rows.device)
            hist_pos = torch.zeros(self.hist_bins, dtype=torch.float64, device=rows.device)
        absdev, absdev_t, start = [], 0.0, 0
        for chunk in _chunks(rows):
            chunk = chunk.double()
            d = chunk - mean_c[start:start + chunk.shape[0], None]
            absdev.append(d.abs_().sum(1))
            torch.sub(chunk, mean_t, out=d)
            absdev_t += float(d.abs_().sum())
            start += chunk.shape[0]
            if hist:
                hist_abs += torch.histc(chunk.abs().float(), bins=self.hist_bins, min=0.0,
                                        max=top if top > 0 else 1.0).double()
                hist_pos += torch.histc(chunk[chunk > 0].float(), bins=self.hist_bins, min=0.0,
                                        max=pmax if pmax > 0 else 1.0).double()
        absdev = torch.cat(absdev).cpu().numpy()
        s.absdev = absdev if s.absdev is None else s.absdev + absdev
        s.absdev_tensor = absdev_t if s.absdev_tensor is None else s.absdev_tensor + absdev_t
        if hist:
            h_abs, h_pos = hist_abs.cpu().numpy(), hist_pos.cpu().numpy()
            s.hist_abs = h_abs if s.hist_abs is None else s.hist_abs + h_abs
            s.hist_pos = h_pos if s.hist_pos is None else s.hist_pos + h_pos


_CHUNK = 1 << 20   # elements per block of rows: bounded temporaries (8 MB in float64) instead of tensor-sized ones


def _chunks(rows: torch.Tensor):
    """Blocks of whole rows of ``rows`` (C, n), about ``_CHUNK`` elements each (at least one row)."""
    step = max(1, _CHUNK // max(rows.shape[1], 1))
    return rows.split(step, dim=0)


def _blocks(rows: torch.Tensor):
    """``(first row, block)`` for the blocks of :func:`_chunks`."""
    start = 0
    for c in _chunks(rows):
        yield start, c
        start += c.shape[0]


@dataclass
class Statistics:
    """Statistics of every observed site of one model, with what identifies the model."""

    sites: dict                      # site name -> SiteStats
    layers: dict                     # layer name -> weight shape (the model's fingerprint)
    images: int = 0
    extra: dict = field(default_factory=dict)
    source: str | None = None        # the file these statistics were loaded from (for error messages)
    hessians: dict = field(default_factory=dict)   # layer name -> (groups, k, k) sum of input patches x x^T
    hessian_rows: dict = field(default_factory=dict)   # layer name -> how many patches those sums hold

    def check_model(self, layers: dict, *, source: str | None = None) -> None:
        """Raise if these statistics were collected on a model with other layers or shapes."""
        if source is None:
            source = "statistics" if self.source is None else f"statistics {self.source}"
        missing = sorted(set(layers) - set(self.layers))
        unknown = sorted(set(self.layers) - set(layers))
        if missing or unknown:
            raise ValueError(f"{source} were collected on another model: layers missing from the file "
                             f"{missing[:5]}, layers the model does not have {unknown[:5]}")
        for name, shape in layers.items():
            if list(self.layers[name]) != list(shape):
                raise ValueError(f"{source} were collected on another model: layer {name} has weight shape "
                                 f"{list(shape)}, the file says {list(self.layers[name])}")

    def save(self, path) -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.npz``; returns both paths."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".npz") else path
        stem.parent.mkdir(parents=True, exist_ok=True)
        arrays, sites = {}, {}
        for i, (name, s) in enumerate(self.sites.items()):
            key = f"s{i}"
            arrays.update(s.to_arrays(key))
            sites[name] = {"key": key, "channels": s.channels, "axis": s.axis, "ndim": s.ndim}
        hessians = {}
        for i, (name, h) in enumerate(self.hessians.items()):
            arrays[f"h{i}"] = h
            hessians[name] = f"h{i}"
        meta = {"format": "aciq-statistics", "version": FORMAT_VERSION, "images": self.images,
                "layers": {k: list(v) for k, v in self.layers.items()}, "sites": sites, "hessians": hessians,
                "hessian_rows": self.hessian_rows,
                "extra": self.extra}
        json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
        json_path.write_text(json.dumps(meta, indent=1))
        np.savez(npz_path, **arrays)
        return json_path, npz_path

    @classmethod
    def load(cls, path) -> "Statistics":
        """Read ``<stem>.json`` + ``<stem>.npz``; a missing, corrupt or foreign file raises naming the file."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".npz") else path
        json_path, npz_path = stem.with_suffix(".json"), stem.with_suffix(".npz")
        for p in (json_path, npz_path):
            if not p.is_file():
                raise ValueError(f"statistics file {p} does not exist")
        try:
            meta = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"statistics file {json_path} is not valid JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != "aciq-statistics" \
                or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{json_path} is not an aciq statistics file (format version {FORMAT_VERSION})")
        try:
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled data), OSError, EOFError ...
            raise ValueError(f"statistics file {npz_path} cannot be read: {type(exc).__name__}: {exc}") from None
        try:
            sites = {}
            for name, m in meta["sites"].items():
                try:
                    sites[name] = SiteStats.from_arrays(m, arrays, m["key"])
                except KeyError as exc:
                    raise ValueError(f"{npz_path} lacks array {exc} of site {name}") from None
            layers = {k: tuple(v) for k, v in meta["layers"].items()}
            images = int(meta["images"])
            hessians = {}
            for name, key in meta.get("hessians", {}).items():
                if key not in arrays:
                    raise ValueError(f"{npz_path} lacks the Hessian {key!r} of layer {name}")
                hessians[name] = arrays[key]
            rows = {k: int(v) for k, v in meta.get("hessian_rows", {}).items()}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"statistics file {json_path} is malformed: {type(exc).__name__}: {exc}") from None
        return cls(sites=sites, layers=layers, images=images, extra=meta.get("extra", {}), source=str(json_path),
                   hessians=hessians, hessian_rows=rows)
