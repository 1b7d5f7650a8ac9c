"""Data-parallel evaluate / sweep on torch.distributed: sharding, exact reduction, and 2 gloo ranks vs 1 process."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from aciq.quant import fashion_mnist as fm
from aciq.quant.distributed import Dist, session
from aciq.quant.metrics import Accumulator
from aciq.theory.cli import main


def _has_fmnist():
    try:
        fm.find_root(split="test")
        fm.find_root(split="train")
    except (FileNotFoundError, ValueError):
        return False
    return True


needs_fmnist = pytest.mark.skipif(not _has_fmnist(), reason="Fashion-MNIST not installed (make data)")
needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


# --------------------------------------------------------------------------- one process
@pytest.mark.parametrize("n", [0, 1, 5, 500, 501])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_partition_the_set_without_padding(n, world):
    items = list(range(n))
    shards = [Dist(rank=r, world_size=world).shard(items) for r in range(world)]
    flat = sorted(i for s in shards for i in s)
    assert flat == items                                     # nothing dropped, nothing twice
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    # the order of DistributedSampler(shuffle=False), minus the padding it appends
    from torch.utils.data import DistributedSampler

    if n:
        for r in range(world):
            sampler = list(DistributedSampler(items, num_replicas=world, rank=r, shuffle=False))
            assert sampler[:len(shards[r])] == shards[r]
            assert len(sampler) - len(shards[r]) in (0, 1)


def test_adding_sums_is_exact_where_averaging_is_not():
    g = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(37, 10, generator=g), torch.randn(37, 10, generator=g)
    labels = torch.randint(0, 10, (37,), generator=g)
    whole = Accumulator()
    whole.update(logits, labels=labels, reference=ref)
    parts = []
    for r in range(3):     # rank r's strided shard, in batches of 4
        acc = Accumulator()
        idx = torch.arange(r, 37, 3)
        for i in range(0, len(idx), 4):
            b = idx[i:i + 4]
            acc.update(logits[b], labels=labels[b], reference=ref[b])
        parts.append(acc.sums())
    merged = Accumulator.from_sums({k: sum(p[k] for p in parts) for k in parts[0]}).compute()
    expect = whole.compute()
    for k in ("top1", "top5", "agreement", "n"):
        assert merged[k] == expect[k]
    for k in ("mean_kl", "logit_sqnr_db"):
        assert merged[k] == pytest.approx(expect[k], rel=1e-12)
    with pytest.raises(ValueError, match="top1"):
        Accumulator.from_sums({**parts[0], "top1": 2.5})
    with pytest.raises(ValueError, match="noise"):
        Accumulator.from_sums({k: v for k, v in parts[0].items() if k != "noise"})


def test_one_process_session_is_inactive(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with session("cpu") as d:
        assert not d.active and d.is_main and d.shard([1, 2]) == [1, 2]
        assert d.all_reduce([1.5, 2], "max") == [1.5, 2.0]
        assert d.gather_bytes(b"x") == [b"x"] and d.broadcast_bytes(b"y") == b"y"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK"):
        with session("cpu"):
            pass


def test_device_per_rank():
    d = Dist(rank=1, world_size=2, local_rank=1, backend="nccl")
    assert d.device("cuda") == torch.device("cuda", 1) and d.device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda:0"):
        d.device("cuda:0")
    assert d.describe(torch.device("cuda", 1)) == "cuda x2 (nccl)"
    assert Dist().describe(torch.device("cpu")) == "cpu"


# --------------------------------------------------------------------------- two gloo processes
def _torchrun(*argv, cwd, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


COLLECTIVES = textwrap.dedent('''
    import json, math, sys
    import torch
    from aciq.quant.distributed import session, share_statistics, reduce_accumulator, check_identical, gather_json
    from aciq.quant.metrics import Accumulator
    from aciq.quant import collect_statistics, preset

    torch.set_num_threads(1)
    out = {}
    with session("cpu") as d:
        out["rank"] = d.rank
        out["gather"] = gather_json({"r": d.rank, "x": [math.inf] * d.rank}, d)
        out["empty"] = [p.decode() for p in d.gather_bytes(b"" if d.rank else b"abc")]
        out["bcast"] = [d.broadcast_bytes(b"" if d.rank == 0 else None).decode(),
                        d.broadcast_bytes(b"xyz" if d.rank == 0 else None).decode()]
        # rank 0's statistics on every rank, bit for bit
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                  torch.nn.Linear(4 * 6 * 6, 5))
        calls = []
        def make():
            calls.append(1)
            return collect_statistics(net, preset("w4a4-all"), torch.randn(6, 3, 8, 8) + d.rank)
        stats = share_statistics(d, make)
        out["made_here"] = len(calls)
        out["mean"] = float(stats.sites["0:input"].mean.sum())
        # rank 0 fails: every rank raises the same error
        def fail():
            raise ValueError("statistics file /nope.json does not exist")
        try:
            share_statistics(d, fail)
        except ValueError as exc:
            out["error"] = str(exc)
        # sums, not averages: rank 0 has 1 image (right), rank 1 has 3 (1 right)
        acc = Accumulator()
        if d.rank == 0:
            acc.update(torch.tensor([[1.0, 0.0]]), labels=torch.tensor([0]))
        else:
            acc.update(torch.tensor([[1.0, 0.0]] * 3), labels=torch.tensor([0, 1, 1]))
        out["top1"] = reduce_accumulator(acc, d).compute()["top1"]
        # a model that differs on one rank is caught
        lin = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(lin.weight, 1.0 + d.rank)
        try:
            check_identical(lin, d)
        except ValueError as exc:
            out["differ"] = str(exc)
        same = torch.nn.Linear(2, 2)
        torch.nn.init.constant_(same.weight, 0.5)
        torch.nn.init.constant_(same.bias, 0.25)
        check_identical(same, d)        # equal everywhere: passes
    with open(f"rank{out['rank']}.json", "w") as fh:    # a file per rank: no interleaved stdout
        json.dump(out, fh)
''')


@needs_gloo
@pytest.mark.slow
def test_collectives_on_two_gloo_ranks(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    res = _torchrun(str(script), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    outs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [o["rank"] for o in outs] == [0, 1]
    for o in outs:
        assert o["gather"] == [{"r": 0, "x": []}, {"r": 1, "x": [float("inf")]}]
        assert o["empty"] == ["abc", ""] and o["bcast"] == ["", "xyz"]
        assert o["top1"] == 50.0                              # 2 of 4, not mean(100 %, 33 %)
        assert "differ between ranks" in o["differ"]
    assert [o["made_here"] for o in outs] == [1, 0]           # made once, on rank 0
    assert outs[0]["mean"] == outs[1]["mean"]                  # rank 0's statistics everywhere
    assert outs[0]["error"] == "statistics file /nope.json does not exist"
    assert outs[1]["error"] == "rank 0: statistics file /nope.json does not exist"


FMNIST_ARGS = ("--model", "resnet20_fmnist", "--limit", "501", "--calib-images", "32", "--batch-size", "64",
               "--threads", "1", "--no-progress")


@needs_fmnist
@needs_gloo
@pytest.mark.slow
def test_two_gloo_ranks_give_the_one_process_result(tmp_path, capsys):
    """ResNet-20 on 501 Fashion-MNIST test images (odd: the shards differ in size), W4A4 with every technique."""
    assert main(["evaluate", *FMNIST_ARGS, "--preset", "w4a4-all", "--json",
                 "--results", str(tmp_path / "one.csv"), "--norms", str(tmp_path / "norms1.csv")]) == 0
    one = json.loads(capsys.readouterr().out)
    res = _torchrun("-m", "aciq.theory.cli", "evaluate", *FMNIST_ARGS, "--preset", "w4a4-all", "--json",
                    "--results", str(tmp_path / "two.csv"), "--stats-save", str(tmp_path / "stats"),
                    "--norms", str(tmp_path / "norms2.csv"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1                                   # rank 0 prints, rank 1 does not
    two = json.loads(lines[0])
    assert two["n"] == one["n"] == 501 and two["device"] == "cpu x2 (gloo)" and one["device"] == "cpu"
    for k in ("top1", "top5", "agreement", "calib_images"):
        assert two[k] == one[k]
    for k in ("mean_kl", "logit_sqnr_db"):
        assert two[k] == pytest.approx(one[k], rel=1e-9)
    assert len(list(csv.DictReader(open(tmp_path / "two.csv")))) == 1   # written once
    assert (tmp_path / "stats.json").is_file()
    # per-sample norms gathered to rank 0: every image once, in order (the float32 convs see other batches)
    n1, n2 = (list(csv.reader(open(tmp_path / f))) for f in ("norms1.csv", "norms2.csv"))
    assert len(n1) == len(n2) == 1 + 501 * 22
    assert [r[:2] for r in n1] == [r[:2] for r in n2]
    a, b = (np.array([[float(v) for v in r[2:]] for r in rows[1:]]) for rows in (n1, n2))
    assert np.allclose(a[:, :2], b[:, :2], rtol=1e-5) and np.mean(np.isclose(a[:, 2], b[:, 2], rtol=1e-3)) > 0.99

    # a bad --stats-load fails on every rank with one message, instead of a hang
    res = _torchrun("-m", "aciq.theory.cli", "evaluate", *FMNIST_ARGS, "--preset", "w4a4-all",
                    "--stats-load", str(tmp_path / "missing"), "--results", "", cwd=tmp_path)
    assert res.returncode != 0
    assert "rank 0: statistics file" in res.stderr and "missing.json does not exist" in res.stderr


@needs_fmnist
@needs_gloo
@pytest.mark.slow
def test_sweep_spreads_rows_over_ranks_and_writes_the_csv_once(tmp_path, capsys):
    sweep = ("sweep", "--models", "resnet20_fmnist", "--presets", "float", "w4a4-naive", "--bits", "4/4", "8/8",
             "--json", *FMNIST_ARGS[2:])
    assert main([*sweep, "--results", str(tmp_path / "one.csv")]) == 0
    one = json.loads(capsys.readouterr().out)
    res = _torchrun("-m", "aciq.theory.cli", *sweep, "--distribute", "rows", "--results", str(tmp_path / "two.csv"),
                    cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    two = json.loads([line for line in res.stdout.splitlines() if line.startswith("[")][0])
    assert [(r["preset"], r["weight_bits"]) for r in two] == [(r["preset"], r["weight_bits"]) for r in one] == [
        ("float", None), ("w4a4-naive", 4), ("w4a4-naive", 8)]
    for a, b in zip(one, two):
        assert b["device"] == "cpu" and b["n"] == a["n"] == 501
        for k in ("top1", "agreement", "mean_kl", "logit_sqnr_db"):
            assert b[k] == a[k]          # the same computation in one process: identical
    rows = list(csv.DictReader(open(tmp_path / "two.csv")))
    assert [r["preset"] for r in rows] == ["float", "w4a4-naive", "w4a4-naive"]
