"""Code entropy and Huffman code lengths: known cases, Kraft, the entropy bounds, the seed's reference."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from aciq.theory import grid_cells, optimal_alpha, quantize
from aciq.theory.coding import (CodeLength, code_entropy, code_length, huffman_average_length,
                                huffman_code_lengths)

# the seed inventory (section 1f): entropy of the gemmlowp codes of Laplace(0, 1) clipped at ACIQ's alpha
INVENTORY = {2: 1.473, 3: 2.283, 4: 3.020, 8: 6.131}

counts_st = st.lists(st.integers(0, 1000), min_size=2, max_size=40).filter(
    lambda c: sum(x > 0 for x in c) >= 2)


def codes_from_counts(counts):
    return np.repeat(np.arange(len(counts)), counts)


def optimal_cost(counts):
    """Minimum sum(c * l) over prefix codes, by the two-queue method (independent of heapq's tree):
    the total is the sum of the weights of the merged nodes."""
    leaves = sorted(c for c in counts if c > 0)
    merged, total = [], 0
    li = mi = 0

    def pop():
        nonlocal li, mi
        if mi < len(merged) and (li >= len(leaves) or merged[mi] < leaves[li]):
            mi += 1
            return merged[mi - 1]
        li += 1
        return leaves[li - 1]

    while (len(leaves) - li) + (len(merged) - mi) > 1:
        w = pop() + pop()
        merged.append(w)
        total += w
    return total


# --------------------------------------------------------------------------- entropy
def test_entropy_of_known_distributions():
    assert code_entropy([0, 0, 0, 0, 1, 1, 2, 3]) == 1.75
    assert code_entropy(np.arange(16)) == pytest.approx(4.0, abs=1e-15)
    assert code_entropy(np.full(10, 7)) == 0.0
    assert code_entropy([0, 1, 2]) == pytest.approx(np.log2(3), abs=1e-15)


def test_entropy_matches_a_direct_computation_and_ignores_labels():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, size=(5, 3, 7)) * rng.integers(1, 3, size=(5, 3, 7))
    _, c = np.unique(q, return_counts=True)
    p = c / c.sum()
    assert code_entropy(q) == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-14)
    assert code_entropy(q) == pytest.approx(code_entropy(3 * q - 100), abs=1e-14)  # relabelling
    assert code_entropy(q.astype(np.float32)) == code_entropy(q)  # whole-number floats are codes


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_entropy_is_the_entropy_of_each_slice(axis):
    rng = np.random.default_rng(1)
    q = rng.integers(0, 9, size=(4, 5, 6)) // rng.integers(1, 4, size=(4, 5, 6))
    got = code_entropy(q, axis=axis)
    slices = np.moveaxis(q, axis, 0)
    assert got.shape == (q.shape[axis],)
    assert np.allclose(got, [code_entropy(s) for s in slices], atol=1e-14)
    # pooling codebooks can only cost bits: H(pooled) >= weighted mean of per-channel entropies
    assert code_entropy(q) >= got.mean() - 1e-12


# --------------------------------------------------------------------------- Huffman
def test_huffman_known_cases():
    assert list(huffman_code_lengths([4, 2, 1, 1])) == [1, 2, 3, 3]
    assert list(huffman_code_lengths([0, 9, 0])) == [0, 1, 0]        # one symbol: 1 bit
    assert list(huffman_code_lengths([3, 0, 3])) == [1, 0, 1]
    assert list(huffman_code_lengths(np.ones(8))) == [3] * 8          # uniform over 2^k: k bits
    assert huffman_code_lengths([5, 1]).dtype == np.int64
    # deterministic: equal weights are merged lowest symbol first
    assert list(huffman_code_lengths([1, 1, 1, 1, 1])) == [3, 3, 2, 2, 2]
    assert list(huffman_code_lengths([2.5, 0.5, 1.0])) == [1, 2, 2]   # any non-negative weights


@pytest.mark.parametrize("probs", [[1 / 2, 1 / 4, 1 / 8, 1 / 8], [1 / 4] * 4, [1 / 2, 1 / 4, 1 / 16, 1 / 16,
                                                                          1 / 16, 1 / 16]])
def test_dyadic_distribution_huffman_equals_entropy(probs):
    counts = (np.array(probs) * 64).astype(int)
    codes = codes_from_counts(counts)
    assert huffman_average_length(codes) == code_entropy(codes)
    assert np.array_equal(huffman_code_lengths(counts), -np.log2(probs).astype(int))


@settings(max_examples=50, deadline=None)
@given(counts_st)
def test_huffman_kraft_equality_bounds_and_optimality(counts):
    lengths = huffman_code_lengths(counts)
    used = np.array(counts) > 0
    assert np.all(lengths[~used] == 0) and np.all(lengths[used] >= 1)
    assert sum(Fraction(1, 2 ** int(n)) for n in lengths[used]) == 1  # a full binary tree
    cost = int(np.dot(counts, lengths))
    assert cost == optimal_cost(counts)                               # optimal among prefix codes
    codes = codes_from_counts(counts)
    h, avg = code_entropy(codes), huffman_average_length(codes)
    assert avg == pytest.approx(cost / sum(counts), rel=1e-14)
    assert h - 1e-12 <= avg < h + 1
    assert avg <= np.ceil(np.log2(used.sum())) + 1e-12                # never worse than fixed width
    assert np.array_equal(huffman_code_lengths(np.array(counts) * 3), lengths)  # deterministic


def test_huffman_per_channel():
    q = np.array([[0, 0, 0, 0, 1, 1, 2, 3], [5, 5, 5, 5, 5, 5, 5, 6]])
    assert np.allclose(huffman_average_length(q, axis=0), [1.75, 1.0])
    assert np.allclose(huffman_average_length(q.T, axis=1), [1.75, 1.0])


# --------------------------------------------------------------------------- summary
def test_code_length_fields():
    r = code_length([0, 0, 0, 0, 1, 1, 2, 3], bits=4)
    assert isinstance(r, CodeLength)
    assert (r.entropy, r.huffman, r.fixed, r.n, r.symbols) == (1.75, 1.75, 4.0, 8, 4)
    assert code_length(np.arange(5)).fixed == 3.0                    # ceil(log2 5)
    assert code_length(np.zeros(4, dtype=int)).fixed == 1.0          # as Huffman: at least 1 bit
    with pytest.raises(AttributeError):
        r.entropy = 0.0                                               # frozen


def test_code_length_per_channel():
    rng = np.random.default_rng(2)
    q = rng.integers(0, 8, size=(3, 50))
    q[1] = 4
    r = code_length(q, bits=3, axis=0)
    assert r.entropy.shape == r.huffman.shape == r.fixed.shape == r.n.shape == r.symbols.shape == (3,)
    assert np.allclose(r.entropy, code_entropy(q, axis=0))
    assert np.allclose(r.huffman, huffman_average_length(q, axis=0))
    assert list(r.fixed) == [3.0] * 3 and list(r.n) == [50] * 3 and r.symbols[1] == 1
    assert np.all(r.entropy <= r.huffman + 1e-12) and np.all(r.huffman <= r.fixed)


# --------------------------------------------------------------------------- the seed's reference point
def exact_code_entropy(alpha, bits):
    """Entropy of the gemmlowp codes of Laplace(0, 1) from the CDF over the grid's cells (no sampling)."""
    t = grid_cells(alpha, bits=bits, grid="gemmlowp").thresholds
    p = np.diff(np.concatenate([[0.0], stats.laplace.cdf(t), [1.0]]))
    return -(p * np.log2(p)).sum(), p


def test_laplace_codes_at_the_aciq_alpha_match_the_inventory():
    x = np.random.default_rng(2019).laplace(size=10**6)
    for bits, listed in INVENTORY.items():
        alpha = optimal_alpha(prior="laplace", bits=bits).alpha
        qmax = 2**bits - 1
        s, z = 2 * alpha / qmax, np.rint(qmax / 2)
        codes = np.clip(np.rint(x / s) + z, 0, qmax).astype(np.int64)
        # the same codes read back from the reconstruction of aciq.theory.grids.quantize
        x_hat = quantize(x, alpha=alpha, bits=bits, grid="gemmlowp")
        assert np.array_equal(np.rint(x_hat / s) + z, codes)
        r = code_length(codes, bits=bits)
        exact, p = exact_code_entropy(alpha, bits)
        se = np.sqrt((p * np.log2(p) ** 2).sum() - exact**2) / np.sqrt(x.size)
        assert abs(r.entropy - exact) < 4 * se + 1e-4                 # Monte Carlo vs the CDF
        assert abs(r.entropy - listed) < 0.01 and abs(exact - listed) < 0.01
        assert r.entropy <= r.huffman < r.entropy + 1 and r.huffman < bits
        assert r.n == x.size and 2**bits - 3 <= r.symbols <= 2**bits  # at 8 bits the outer cells hold ~2


def test_huffman_of_the_exact_code_probabilities():
    """The module docstring's numbers: Huffman codes for the exact cell probabilities (no sample)."""
    for bits, listed in {2: 1.584, 3: 2.360, 4: 3.078, 8: 6.156}.items():
        _, p = exact_code_entropy(optimal_alpha(prior="laplace", bits=bits).alpha, bits)
        assert (p * huffman_code_lengths(p)).sum() == pytest.approx(listed, abs=5e-4)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("codes", [[0.5, 1.0], [], np.zeros((3, 0)), [1.0, np.nan], ["a", "b"], [[1, 2], [3]]])
def test_bad_codes(codes):
    for fn in (code_entropy, huffman_average_length, code_length):
        with pytest.raises(ValueError, match="codes"):
            fn(codes)


def test_bad_axis_and_bits():
    with pytest.raises(ValueError, match="axis"):
        code_entropy(np.zeros((2, 3), dtype=int), axis=2)
    with pytest.raises(ValueError, match="axis"):
        code_entropy([1, 2], axis=0.5)
    with pytest.raises(ValueError, match="codes"):
        code_entropy(np.zeros((2, 0), dtype=int), axis=0)
    with pytest.raises(ValueError, match="bits"):
        code_length([0, 1], bits=0)
    with pytest.raises(ValueError, match="bits"):
        code_length([0, 1], bits=2.5)
    with pytest.raises(ValueError, match="bits"):
        code_length([0, 1, 2], bits=1)                                # 3 codes do not fit 1 bit


@pytest.mark.parametrize("counts", [[], [[1, 2]], [1, -1], [0, 0], [1, np.inf], "ab"])
def test_bad_counts(counts):
    with pytest.raises(ValueError, match="counts"):
        huffman_code_lengths(counts)

