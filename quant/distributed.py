"""Data-parallel ``aciq evaluate`` / ``aciq sweep`` on ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc-per-node N aciq evaluate ...`` starts N processes; each reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address from the environment (``env://``), joins one process group (gloo
on CPU, NCCL with ``--device cuda``; each rank then uses ``cuda:LOCAL_RANK``), and:

1. **statistics once**: rank 0 collects them (or loads ``--stats-load``) and broadcasts them as the same
   JSON + npz bytes that :meth:`aciq.quant.Statistics.save` writes (no pickle), so every rank converts the
   identical model; :func:`check_identical` verifies it (a float64 checksum of every parameter and buffer,
   compared by an all-reduce of min and max);
2. **the evaluation set sharded**: rank ``r`` of ``W`` scores images ``r, r + W, r + 2W, ...``: the order of
   ``DistributedSampler(shuffle=False)`` without its padding, so no image is dropped or scored twice (the
   sampler repeats the first images to even out the shards, which would count them twice);
3. **metrics reduced exactly**: the sums and counts of :class:`aciq.quant.metrics.Accumulator` (hits, KL sum,
   signal and noise energies, image counts) are all-reduced, never the per-rank averages, so top-1 and
   agreement equal the one-process numbers exactly and KL / SQNR to float64 rounding; times are the slowest
   rank's;
4. **one CSV**: only rank 0 writes rows, prints and logs; ``aciq sweep --distribute rows`` instead gives each
   rank whole rows (row ``i`` to rank ``i mod W``) and gathers them, as JSON, to rank 0.

With no ``torchrun`` (``WORLD_SIZE`` unset or 1), :func:`session` yields the one-process :class:`Dist` and
every function here is a no-op.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

__all__ = ["Dist", "session", "share_statistics", "reduce_accumulator", "check_identical", "gather_json"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: ``rank`` of ``world_size``; ``backend`` is None for one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors live: the rank's GPU for NCCL, the CPU for gloo."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def device(self, requested: str) -> torch.device:
        """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
        dev = torch.device(requested)
        if self.active and dev.type == "cuda":
            if dev.index is not None:
                raise ValueError(f"--device {requested}: under torchrun give --device cuda; rank {self.rank} "
                                 f"uses cuda:LOCAL_RANK ({self.local_rank})")
            return torch.device("cuda", self.local_rank)
        return dev

    def describe(self, device: torch.device) -> str:
        """The ``device`` column of a results row: ``cuda:0`` alone, ``cuda x8 (nccl)`` for a group."""
        return str(device) if not self.active else f"{device.type} x{self.world_size} ({self.backend})"

    def shard(self, items):
        """This rank's share of ``items`` (a tensor or a list): ``items[rank::world_size]``."""
        return items[self.rank::self.world_size] if self.active else items

    # ---- collectives (no-ops for one process)
    def all_reduce(self, values, op: str = "sum") -> list[float]:
        """Element-wise sum or max of a list of numbers over the ranks (float64)."""
        if not self.active:
            return [float(v) for v in values]
        import torch.distributed as tdist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(t, op={"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX,
                                "min": tdist.ReduceOp.MIN}[op])
        return t.cpu().tolist()

    def broadcast_bytes(self, payload: bytes | None) -> bytes:
        """Rank 0's ``payload`` on every rank (the others pass None)."""
        if not self.active:
            return payload
        import torch.distributed as tdist

        n = torch.tensor([len(payload) if self.is_main else 0], dtype=torch.int64, device=self.comm_device)
        tdist.broadcast(n, src=0)
        size = int(n.item())
        if size == 0:
            return b""
        buf = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.comm_device) if self.is_main
               else torch.empty(size, dtype=torch.uint8, device=self.comm_device))
        tdist.broadcast(buf, src=0)
        return bytes(buf.cpu().numpy().tobytes())

    def gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's ``payload``, in rank order, on every rank."""
        if not self.active:
            return [payload]
        import torch.distributed as tdist

        n = torch.tensor([len(payload)], dtype=torch.int64, device=self.comm_device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        tdist.all_gather(sizes, n)
        top = max(int(s.item()) for s in sizes)
        buf = torch.zeros(max(top, 1), dtype=torch.uint8, device=self.comm_device)
        if payload:
            buf[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.comm_device)
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        tdist.all_gather(parts, buf)
        return [bytes(p[:int(s.item())].cpu().numpy().tobytes()) for p, s in zip(parts, sizes)]


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"WORLD_SIZE is set but {name} is not: start the ranks with torchrun")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


@contextmanager
def session(device: str = "cpu", *, timeout_s: float = 1800.0):
    """The process group for this run (``env://``, as torchrun sets it up), destroyed on exit.

    Yields the one-process :class:`Dist` when ``WORLD_SIZE`` is unset or 1; joins an existing default group
    (and leaves it alone) when one is already initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        yield Dist()
        return
    import torch.distributed as tdist

    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: start at most "
                             f"that many processes per node (torchrun --nproc-per-node)")
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    owned = not tdist.is_initialized()
    if owned:
        tdist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    elif tdist.get_backend() != backend:
        raise ValueError(f"a {tdist.get_backend()} process group exists; --device {device} needs {backend}")
    try:
        yield Dist(rank=tdist.get_rank(), world_size=tdist.get_world_size(), local_rank=local, backend=backend)
    finally:
        if owned:
            tdist.destroy_process_group()


def share_statistics(dist: Dist, make):
    """``make()`` (collect or load the statistics) on rank 0 only, the result on every rank.

    The statistics travel as the bytes of :meth:`Statistics.save` (``.json`` + ``.npz``, loaded back with
    ``allow_pickle=False``). If rank 0 fails (a bad ``--stats-load`` file), every rank raises the same error
    instead of waiting for a broadcast that never comes.
    """
    from .observe import Statistics

    if not dist.active:
        return make()
    header, parts = None, (b"", b"")
    if dist.is_main:
        try:
            stats = make()
            with tempfile.TemporaryDirectory() as tmp:
                j, z = stats.save(Path(tmp) / "stats")
                parts = (j.read_bytes(), z.read_bytes())
            header = {"ok": True, "sizes": [len(p) for p in parts]}
        except Exception as exc:       # noqa: BLE001 - the other ranks must hear of any failure
            failure = exc
            header = {"ok": False, "error": str(exc) if isinstance(exc, ValueError)
                      else f"{type(exc).__name__}: {exc}"}
    header = json.loads(dist.broadcast_bytes(json.dumps(header).encode() if dist.is_main else None))
    if not header["ok"]:
        if dist.is_main:
            raise failure
        raise ValueError(f"rank 0: {header['error']}")
    payload = dist.broadcast_bytes(b"".join(parts) if dist.is_main else None)
    if dist.is_main:
        return stats
    js, npz = payload[:header["sizes"][0]], payload[header["sizes"][0]:]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "stats.json").write_bytes(js)
        Path(tmp, "stats.npz").write_bytes(npz)
        return Statistics.load(Path(tmp) / "stats")


def reduce_accumulator(acc, dist: Dist):
    """The :class:`~aciq.quant.metrics.Accumulator` of every rank's images: its sums and counts all-reduced."""
    from .metrics import Accumulator

    if not dist.active:
        return acc
    sums = acc.sums()
    keys = sorted(sums)
    total = dist.all_reduce([sums[k] for k in keys], "sum")
    return Accumulator.from_sums(dict(zip(keys, total)))


@torch.no_grad()
def check_identical(model: torch.nn.Module, dist: Dist) -> None:
    """Raise unless every rank holds the same parameters and buffers (a float64 checksum per tensor)."""
    if not dist.active:
        return
    sums = []
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_complex():
            v = t.detach().double().flatten()
            w = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device) / max(v.numel(), 1)
            sums.append(float((v * (1.0 + w)).sum()))
    lo, hi = dist.all_reduce(sums, "min"), dist.all_reduce(sums, "max")
    bad = [i for i, (a, b) in enumerate(zip(lo, hi)) if a != b]
    if bad:
        raise ValueError(f"the quantized models differ between ranks ({len(bad)} of {len(sums)} tensors): the "
                         "ranks must load the same weights and statistics")


def gather_json(obj, dist: Dist) -> list:
    """Every rank's ``obj`` (JSON-able; floats may be inf), in rank order, on every rank."""
    return [json.loads(p) for p in dist.gather_bytes(json.dumps(obj).encode())]
