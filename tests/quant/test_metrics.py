"""aciq.quant.metrics: hand-computed cases, identities, batch additivity, bad input."""
import doctest
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import aciq.quant.metrics as metrics
from aciq.quant.metrics import Accumulator, agreement, kl_divergence, sqnr_db, topk_correct


def test_docstring_examples():
    assert doctest.testmod(metrics).failed == 0


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],     # order 5 4 3 2 1 0
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],     # order 0 1 2 3 4 5
                           [0.0, 0.0, 9.0, 0.0, 0.0, 1.0]])    # order 2 5 ...
    labels = torch.tensor([5, 5, 0])
    # row 0: top-1 hit; row 1: label ranked 6th; row 2: label 0 ties with 1, 3, 4 for 3rd place
    assert topk_correct(logits, labels, ks=(1, 2, 5, 6)) == {1: 1, 2: 1, 5: 2, 6: 3}
    assert topk_correct(logits, labels) == {1: 1, 5: 2}


def test_agreement_by_hand():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    assert agreement(a, b) == 2
    assert agreement(a, a) == 3


def test_kl_by_hand():
    p = np.array([0.2, 0.3, 0.5])
    q = np.array([0.5, 0.25, 0.25])
    expected = float(np.sum(p * np.log(p / q)))
    kl = kl_divergence(torch.tensor(np.log(p))[None], torch.tensor(np.log(q) + 7.0)[None])  # shift-invariant
    assert kl.dtype == torch.float64 and kl.shape == (1,)
    assert float(kl[0]) == pytest.approx(expected, rel=1e-12)


def test_kl_zero_for_identical_and_float32_input():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.equal(kl_divergence(logits, logits), torch.zeros(8, dtype=torch.float64))
    assert float(kl_divergence(logits, logits + 3.0).max()) < 1e-12   # softmax is shift-invariant


def test_kl_with_vanishing_probabilities_is_finite():
    ref = torch.tensor([[0.0, -800.0]])    # p = (1, ~0): exp(-800) underflows to 0 in float64
    q = torch.tensor([[0.0, 0.0]])
    assert float(kl_divergence(ref, q)[0]) == pytest.approx(math.log(2.0), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_kl_nonnegative_and_matches_numpy(n, c, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 3, (n, c)), rng.normal(0, 3, (n, c))
    p = np.exp(a - a.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    q = np.exp(b - b.max(1, keepdims=True)); q /= q.sum(1, keepdims=True)
    expected = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    kl = kl_divergence(torch.tensor(a), torch.tensor(b)).numpy()
    assert np.all(kl >= 0)
    np.testing.assert_allclose(kl, expected, rtol=1e-9, atol=1e-12)


def test_sqnr_by_hand_and_limits():
    assert sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])) == pytest.approx(20.0, abs=1e-12)
    ref = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)   # signal 9, noise 0.09 -> 20 dB
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0, abs=1e-9)
    assert sqnr_db(ref, ref.clone()) == math.inf
    assert sqnr_db(torch.zeros(3), torch.ones(3)) == -math.inf
    assert sqnr_db(torch.zeros(3), torch.zeros(3)) == math.inf


def _batch(seed, n=7, c=10):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(n, c, generator=g) * 4
    q = ref + 0.8 * torch.randn(n, c, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    return ref, q, labels


def test_accumulator_two_batches_equal_one_concatenated():
    (r1, q1, l1), (r2, q2, l2) = _batch(1), _batch(2, n=5)
    two = Accumulator()
    two.update(q1, labels=l1, reference=r1)
    two.update(q2, labels=l2, reference=r2)
    one = Accumulator()
    one.update(torch.cat([q1, q2]), labels=torch.cat([l1, l2]), reference=torch.cat([r1, r2]))
    a, b = two.compute(), one.compute()
    assert a["n"] == b["n"] == 12
    for key in ("top1", "top5", "agreement"):
        assert a[key] == b[key]
    for key in ("mean_kl", "logit_sqnr_db"):
        assert a[key] == pytest.approx(b[key], rel=1e-12)


def test_accumulator_values_match_functions():
    ref, q, labels = _batch(3, n=40)
    acc = Accumulator()
    acc.update(q, labels=labels, reference=ref)
    r = acc.compute()
    hits = topk_correct(q, labels)
    assert r["top1"] == pytest.approx(100 * hits[1] / 40)
    assert r["top5"] == pytest.approx(100 * hits[5] / 40)
    assert r["agreement"] == pytest.approx(100 * agreement(ref, q) / 40)
    assert r["mean_kl"] == pytest.approx(float(kl_divergence(ref, q).mean()), rel=1e-12)
    assert r["logit_sqnr_db"] == pytest.approx(sqnr_db(ref, q), rel=1e-12)


def test_accumulator_missing_inputs_give_none_and_must_be_consistent():
    ref, q, labels = _batch(4)
    acc = Accumulator()
    acc.update(q, labels=labels)
    r = acc.compute()
    assert r["top1"] is not None and r["agreement"] is None and r["mean_kl"] is None
    with pytest.raises(ValueError, match="labels"):
        acc.update(q)
    with pytest.raises(ValueError, match="reference"):
        acc.update(q, labels=labels, reference=ref)
    assert acc.compute() == r    # a rejected batch adds nothing


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_logits_rejected(bad):
    ref, q, labels = _batch(5)
    q[2, 3] = bad
    with pytest.raises(ValueError, match="logits"):
        topk_correct(q, labels)
    with pytest.raises(ValueError, match="logits_b"):
        agreement(ref, q)
    with pytest.raises(ValueError, match="logits_q"):
        kl_divergence(ref, q)
    with pytest.raises(ValueError, match="test"):
        sqnr_db(ref, q)
    with pytest.raises(ValueError, match="logits"):
        Accumulator().update(q, reference=ref)


def test_bad_shapes_and_arguments():
    ref, q, labels = _batch(6)
    with pytest.raises(ValueError, match="logits_ref and logits_q"):
        kl_divergence(ref, q[:3])
    with pytest.raises(ValueError, match="logits_a"):
        agreement(ref[0], q[0])
    with pytest.raises(ValueError, match="labels"):
        topk_correct(q, labels[:3])
    with pytest.raises(ValueError, match="labels"):
        topk_correct(q, torch.full_like(labels, 10))
    with pytest.raises(ValueError, match="ks"):
        topk_correct(q, labels, ks=(1, 11))
    with pytest.raises(ValueError, match="ref and test"):
        sqnr_db(ref, q[:2])
