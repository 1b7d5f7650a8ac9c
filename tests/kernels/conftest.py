"""Shared fixtures of the kernel tests: seeded random operands of the fused op."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from aciq.kernels.spec import ActQuant, QuantWeights, code_range, pack_int4


def make_weights(rng, n, k, *, bits, packed=None, zero_point=False):
    """Random signed weight codes (every code of the grid reachable), per-channel scale/zp."""
    lo, hi = (int(v) for v in code_range(bits, True))
    q = rng.integers(lo, hi + 1, size=(n, k)).astype(np.int8)
    zp = rng.integers(lo, hi + 1, size=n) if zero_point else np.zeros(n, np.int64)
    scale = rng.uniform(0.01, 0.1, size=n).astype(np.float32)
    if packed is None:
        packed = bits <= 4
    codes = pack_int4(q) if packed else q
    return QuantWeights(codes=codes, scale=scale, zero_point=zp, bits=bits, k=k, n=n, packed=packed)


def make_act(rng, k, *, bits, signed, per_channel, zero_point=True):
    """Activation quantizer: per-tensor or per-channel scale/zp, ``bits`` an int or a list to mix."""
    b = np.asarray(bits)
    b = rng.choice(b, size=k) if b.ndim else np.full(k, int(b))
    lo, hi = code_range(b, signed)
    if per_channel:
        scale = rng.uniform(0.02, 0.2, size=k).astype(np.float32)
        zp = rng.integers(lo, hi + 1) if zero_point else np.zeros(k, np.int64)
        return ActQuant(scale=scale, zero_point=zp, bits=b, signed=signed)
    z = int(rng.integers(int(lo.max()), int(hi.min()) + 1)) if zero_point else 0
    return ActQuant(scale=np.full(k, np.float32(0.07)), zero_point=z, bits=b, signed=signed)


def make_x(rng, m, k, act: ActQuant, *, ties=0.25):
    """Activations spanning every channel's clip range, with a fraction of exact .5 ties."""
    lo = (act.qmin - act.zero_point - 2).astype(np.float32) * act.scale
    hi = (act.qmax - act.zero_point + 2).astype(np.float32) * act.scale
    x = rng.uniform(lo, hi, size=(m, k)).astype(np.float32)
    tie_codes = rng.integers(-40, 40, size=(m, k)).astype(np.float32) + np.float32(0.5)
    tie = (tie_codes * act.scale).astype(np.float32)  # exact ties when the scale is a power of 2
    mask = rng.random((m, k)) < ties
    return np.ascontiguousarray(np.where(mask, tie, x).astype(np.float32))


@pytest.fixture
def rng():
    return np.random.default_rng(20190527)


@pytest.fixture
def ops():
    """The operand factories above, as a fixture (test modules do not import conftest)."""
    return SimpleNamespace(weights=make_weights, act=make_act, x=make_x)
