"""Bin and bit allocation (eq. 10, 11): budgets, optimality against brute force, the paper's rule."""
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aciq.theory.allocation import (
    Allocation,
    allocate,
    allocate_bins_continuous,
    allocate_bits_continuous,
    allocation_mse,
    optimal_integer_bits,
    paper_bits,
    paper_bits_fixed_target,
)

alpha_lists = st.lists(st.floats(0.01, 100.0), min_size=1, max_size=6)


def noise(alphas, bits):
    """Independent statement of the error model: sum alpha^2 / (3 * 4^M) over alpha > 0."""
    return sum(a * a / (3 * 4.0**m) for a, m in zip(alphas, bits) if a > 0)


def brute_force(alphas, *, avg_bits, budget, max_bits):
    """Smallest model error over every integer allocation within the budget (zero-range: 0 bits)."""
    cap = math.floor(len(alphas) * (2.0**avg_bits if budget == "bins" else avg_bits) + 1e-9)
    active = [i for i, a in enumerate(alphas) if a > 0]
    best = math.inf
    for combo in itertools.product(range(max_bits + 1), repeat=len(active)):
        cost = sum(2**m for m in combo) if budget == "bins" else sum(combo)
        if cost <= cap:
            bits = [0] * len(alphas)
            for i, m in zip(active, combo):
                bits[i] = m
            best = min(best, noise(alphas, bits))
    return best


def dp_bins(alphas, *, avg_bits, max_bits):
    """Exact DP over channels x bins used (an independent route for the bins knapsack)."""
    cap = math.floor(len(alphas) * 2.0**avg_bits + 1e-9)
    best = np.full(cap + 1, math.inf)
    best[0] = 0.0
    for a in alphas:
        if a == 0:
            continue
        new = np.full(cap + 1, math.inf)
        for m in range(max_bits + 1):
            w = 2**m
            if w <= cap:
                new[w:] = np.minimum(new[w:], best[:-w] + a * a / (3 * 4.0**m))
        best = new
    return float(best.min())


# --------------------------------------------------------------------------- eq. 10
def test_bins_follow_the_two_thirds_power_law():
    alphas = np.array([0.5, 1.0, 2.0, 7.0, 30.0])
    bins = allocate_bins_continuous(alphas, total_bins=80)
    assert bins.sum() == pytest.approx(80, rel=1e-12)
    ratio = bins / alphas ** (2 / 3)
    assert np.allclose(ratio, ratio[0], rtol=1e-12)
    # scale-free: multiplying every range by a constant changes nothing
    assert np.allclose(allocate_bins_continuous(1e-3 * alphas, total_bins=80), bins, rtol=1e-12)


def test_bins_continuous_agrees_with_a_numerical_minimiser():
    from scipy.optimize import minimize

    alphas = np.array([1.0, 2.0, 4.0, 8.0])
    total = 64.0
    # minimise over the first three shares; the last takes the rest of the budget
    def objective(b3):
        b = np.append(b3, total - b3.sum())
        return np.inf if np.any(b <= 0) else np.sum(alphas**2 / (3 * b**2))

    res = minimize(objective, x0=np.full(3, 16.0), method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-15, "maxiter": 20_000})
    expected = np.append(res.x, total - res.x.sum())
    assert np.allclose(allocate_bins_continuous(alphas, total_bins=total), expected, rtol=1e-4)


def test_bins_cap_water_fills():
    bins = allocate_bins_continuous([1e-3, 1.0, 1.0, 1.0], total_bins=4 * 256, max_bins=256)
    assert np.all(bins <= 256 + 1e-9)
    assert bins.sum() == pytest.approx(1024, rel=1e-12)
    assert bins[1:] == pytest.approx([256.0] * 3) and bins[0] == pytest.approx(256.0)
    bins = allocate_bins_continuous([0.5, 1.0, 1.0, 8.0], total_bins=4 * 16, max_bins=32)
    assert bins[3] == pytest.approx(32.0)
    assert bins[:3] / np.array([0.5, 1.0, 1.0]) ** (2 / 3) == pytest.approx([bins[1]] * 3)  # law below the cap
    assert bins.sum() == pytest.approx(64.0)
    # a budget the cap cannot spend: every channel at the cap
    assert allocate_bins_continuous([1.0, 2.0], total_bins=100, max_bins=8).tolist() == [8.0, 8.0]


@settings(max_examples=40, deadline=None)
@given(alpha_lists, st.floats(0.0, 6.0), st.integers(0, 2**32 - 1))
def test_eq10_beats_any_perturbation_that_keeps_the_budget(alphas, avg_bits, seed):
    alphas = np.array(alphas)
    total = alphas.size * 2.0**avg_bits
    bins = allocate_bins_continuous(alphas, total_bins=total)
    best = allocation_mse(alphas, bins=bins)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        d = rng.standard_normal(alphas.size)
        d -= d.mean()
        other = bins + 0.5 * rng.random() * bins.min() * d / max(np.abs(d).max(), 1e-300)
        assert other.sum() == pytest.approx(total, rel=1e-9)
        assert allocation_mse(alphas, bins=other) >= best * (1 - 1e-12)


# --------------------------------------------------------------------------- bits budget, continuous
def test_bits_continuous_is_the_log_rule_when_no_bound_binds():
    alphas = np.array([1.0, 2.0, 3.0, 5.0])
    bits = allocate_bits_continuous(alphas, avg_bits=4, max_bits=8)
    geometric_mean = np.exp(np.log(alphas).mean())
    assert np.allclose(bits, 4 + np.log2(alphas / geometric_mean), atol=1e-12)
    assert bits.sum() == pytest.approx(16, abs=1e-12)
    # every channel ends with the same noise alpha^2 / 4^M (the Lagrange condition)
    per_channel = alphas**2 / 4.0**bits
    assert np.allclose(per_channel, per_channel[0], rtol=1e-10)


def test_bits_continuous_water_fills_instead_of_going_negative():
    alphas = np.array([1e-3, 1.0, 2.0])
    log_rule = 1 + np.log2(alphas / np.exp(np.log(alphas).mean()))
    assert log_rule[0] < 0  # the unconstrained rule is infeasible here
    bits = allocate_bits_continuous(alphas, avg_bits=1)
    assert bits[0] == 0.0 and np.all(bits >= 0)
    assert bits.sum() == pytest.approx(3, abs=1e-12)
    # KKT: the two channels above the water level share one noise level; the third stays below
    assert alphas[1] ** 2 / 4.0 ** bits[1] == pytest.approx(alphas[2] ** 2 / 4.0 ** bits[2])
    assert alphas[0] ** 2 <= alphas[1] ** 2 / 4.0 ** bits[1]


def test_bits_continuous_upper_bound():
    bits = allocate_bits_continuous([1e-6, 1.0, 1.0], avg_bits=6, max_bits=8)
    assert np.all(bits <= 8 + 1e-12) and bits.sum() == pytest.approx(18, abs=1e-9)
    assert bits[1:].tolist() == pytest.approx([8.0, 8.0]) and bits[0] == pytest.approx(2.0)


@settings(max_examples=40, deadline=None)
@given(alpha_lists, st.floats(0.0, 7.0), st.integers(0, 2**32 - 1))
def test_bits_continuous_beats_feasible_perturbations(alphas, avg_bits, seed):
    alphas = np.array(alphas)
    bits = allocate_bits_continuous(alphas, avg_bits=avg_bits, max_bits=8)
    assert np.all(bits >= 0) and np.all(bits <= 8 + 1e-12)
    assert bits.sum() == pytest.approx(alphas.size * avg_bits, abs=1e-9)
    best = noise(alphas, bits)
    rng = np.random.default_rng(seed)
    for _ in range(5):  # move bits between two channels, staying in [0, 8]
        i, j = rng.choice(alphas.size, size=2, replace=alphas.size < 2)
        step = rng.random() * min(bits[i], 8 - bits[j])
        other = bits.copy()
        other[i] -= step
        other[j] += step
        assert noise(alphas, other) >= best * (1 - 1e-12)


# --------------------------------------------------------------------------- eq. 11
def test_paper_rule_on_hand_computed_cases():
    # B = 32; alpha^(2/3) = 1, 4 -> bins 6.4, 25.6 -> log2 2.678, 4.678
    assert paper_bits([1.0, 8.0], avg_bits=4).tolist() == [3, 5]
    assert paper_bits([1.0, 8.0], avg_bits=4, mode="ceil").tolist() == [3, 5]
    # B = 48; 1, 9^(1/3)... : alpha^(2/3) = 1, 2.080, 4.327 -> bins 6.46, 13.44, 28.0 -> 2.69, 3.75, 4.81
    assert paper_bits([1.0, 3.0, 9.0], avg_bits=4).tolist() == [3, 4, 5]
    # B = 24, equal ranges: 8 bins each = 3 bits whatever the rounding
    assert paper_bits([2.0, 2.0, 2.0], avg_bits=3).tolist() == [3, 3, 3]
    assert paper_bits([2.0, 2.0, 2.0], avg_bits=3, mode="ceil").tolist() == [3, 3, 3]
    # ceil vs round differ: B = 2 * 2^2.2 = 9.19 bins, equal ranges: 4.59 each -> log2 2.2
    assert paper_bits([1.0, 1.0], avg_bits=2.2).tolist() == [2, 2]
    assert paper_bits([1.0, 1.0], avg_bits=2.2, mode="ceil").tolist() == [3, 3]
    # clamping to [0, 8]: log2 bins = -10.3 and 9.0
    assert paper_bits([1e-6, 1.0], avg_bits=8).tolist() == [0, 8]
    assert paper_bits([1e-6, 1.0], avg_bits=8, max_bits=4).tolist() == [0, 4]
    # zero range: 0 bits, and the others share the whole budget (B = 3 * 4 = 12, 6 each)
    assert paper_bits([0.0, 1.0, 1.0], avg_bits=2).tolist() == [0, 3, 3]
    assert paper_bits([0.0, 0.0], avg_bits=2).tolist() == [0, 0]


def test_paper_rule_equals_its_closed_form():
    rng = np.random.default_rng(0)
    alphas = rng.lognormal(size=64)
    p = alphas ** (2 / 3)
    expected = np.clip(np.round(3.5 + np.log2(p / p.mean())), 0, 8)
    assert paper_bits(alphas, avg_bits=3.5).tolist() == expected.astype(int).tolist()


def test_paper_overshoot_is_reported():
    res = allocate([1.0, 3.0, 9.0], avg_bits=4)
    assert res.bits_paper.tolist() == [3, 4, 5]
    assert res.total_bins == 48.0
    assert res.bins_used["bits_paper"] == 8 + 16 + 32
    assert res.paper_overshoot_bins == pytest.approx(56 - 48)
    assert res.paper_overshoot_bits == pytest.approx(0.0)
    res = allocate([1.0, 2.0, 3.0, 4.0], avg_bits=3)  # rounds down: [2, 3, 3, 3]
    assert res.bits_paper.tolist() == [2, 3, 3, 3]
    assert res.paper_overshoot_bits == pytest.approx(-0.25)
    assert res.paper_overshoot_bins == pytest.approx(4 + 8 + 8 + 8 - 32)


def _seed_fixed_target(alphas, goal):
    """The seed's loop, restated from its description, on top of an independent eq. 11."""
    def alloc(t):
        p = np.asarray(alphas) ** (2 / 3)
        with np.errstate(divide="ignore"):
            m = np.round(np.log2(p / p.sum() * len(alphas) * 2.0**t))
        return np.clip(m, 0, 8)

    t, delta, eps, it = goal, 1.0, 0.01, 0
    while abs(2 * delta) > eps and it < 10:
        bits = alloc(t)
        delta = (goal - bits.mean()) / 2
        t += delta
        it += 1
    return bits


@pytest.mark.parametrize("goal", [2.0, 3.0, 4.0, 5.3])
def test_fixed_target_iteration_reproduces_the_seed(goal):
    rng = np.random.default_rng(int(goal * 10))
    for c in (4, 16, 64):
        alphas = rng.lognormal(sigma=0.8, size=c)
        assert paper_bits_fixed_target(alphas, avg_bits=goal).tolist() == _seed_fixed_target(alphas, goal).tolist()
    # hand trace: t = 4 -> [3, 3, 4, 5] (mean 3.75), t = 4.125 -> [3, 4, 4, 5] (mean 4), stop
    assert paper_bits_fixed_target([1.0, 2.0, 4.0, 8.0], avg_bits=4).tolist() == [3, 4, 4, 5]


# --------------------------------------------------------------------------- integer optimum
@pytest.mark.parametrize("budget", ["bins", "bits"])
def test_integer_optimum_matches_brute_force(budget):
    rng = np.random.default_rng(1 if budget == "bins" else 2)
    for _ in range(60):
        c = int(rng.integers(1, 5))
        alphas = rng.lognormal(sigma=1.5, size=c) * (rng.random(c) > 0.15)
        avg = float(rng.choice([0.0, 0.5, 1.0, 1.7, 2.0, 3.0, 4.5]))
        max_bits = int(rng.integers(3, 7))
        bits = optimal_integer_bits(alphas, avg_bits=min(avg, max_bits), budget=budget, max_bits=max_bits)
        assert bits.dtype.kind == "i" and np.all((bits >= 0) & (bits <= max_bits))
        assert np.all(bits[alphas == 0] == 0)
        used = np.sum(2.0 ** bits[alphas > 0]) if budget == "bins" else bits.sum()
        limit = c * (2.0 ** min(avg, max_bits) if budget == "bins" else min(avg, max_bits))
        assert used <= limit + 1e-9
        expected = brute_force(list(alphas), avg_bits=min(avg, max_bits), budget=budget, max_bits=max_bits)
        assert noise(alphas, bits) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_bins_knapsack_matches_dp_on_larger_problems():
    rng = np.random.default_rng(3)
    for _ in range(12):
        c = int(rng.integers(5, 13))
        alphas = rng.lognormal(sigma=1.2, size=c)
        avg = float(rng.choice([1.0, 2.3, 3.0, 4.0]))
        bits = optimal_integer_bits(alphas, avg_bits=avg, budget="bins", max_bits=8)
        assert np.sum(2.0**bits) <= c * 2.0**avg + 1e-9
        assert noise(alphas, bits) == pytest.approx(dp_bins(list(alphas), avg_bits=avg, max_bits=8), rel=1e-12)


def test_greedy_by_gain_per_bin_is_not_exact_but_we_are():
    # gain per extra bin of channel a from m to m+1 bits: a^2 4^-(m+1) / 2^m. Budget 11 bins: the
    # ratio greedy reaches [2, 2] (8 bins) and cannot afford 4 more; [1, 3] (10 bins) is 1.48x better.
    alphas = [1.0, 2.8]
    cap = 11

    def greedy(alphas, cap):
        bits = [0, 0]
        used = len(alphas)
        while True:
            options = [(a * a * 4.0 ** -(m + 1) / 2**m, i) for i, (a, m) in enumerate(zip(alphas, bits))
                       if used + 2**m <= cap and m < 8]
            if not options:
                return bits
            _, i = max(options)
            used += 2 ** bits[i]
            bits[i] += 1

    g = greedy(alphas, cap)
    ours = optimal_integer_bits(alphas, avg_bits=math.log2(cap / 2), budget="bins")
    best = brute_force(alphas, avg_bits=math.log2(cap / 2), budget="bins", max_bits=8)
    assert g == [2, 2] and ours.tolist() == [1, 3]
    assert noise(alphas, ours) == pytest.approx(best)
    assert noise(alphas, g) / best == pytest.approx(1.4832, abs=1e-4)


def test_integer_error_is_bounded_by_the_relaxation_and_beats_the_paper_when_in_budget():
    rng = np.random.default_rng(4)
    for _ in range(30):
        alphas = rng.lognormal(sigma=1.0, size=int(rng.integers(2, 40)))
        avg = float(rng.uniform(0.5, 6.0))
        for budget, relaxation in (("bins", "bins_continuous"), ("bits", "bits_continuous")):
            res = allocate(alphas, avg_bits=avg, budget=budget)
            assert res.mse["bits"] >= res.mse[relaxation] * (1 - 1e-12)
            in_budget = (res.bins_used["bits_paper"] <= res.total_bins + 1e-9 if budget == "bins"
                         else res.bits_used["bits_paper"] <= res.total_bits + 1e-9)
            if in_budget:
                assert res.mse["bits"] <= res.mse["bits_paper"] * (1 + 1e-12)


def test_large_problem_is_fast_and_within_budget():
    alphas = np.random.default_rng(5).lognormal(size=2048)
    bits = optimal_integer_bits(alphas, avg_bits=8, budget="bins")
    assert np.sum(2.0**bits) <= 2048 * 256
    bits = optimal_integer_bits(alphas, avg_bits=5.3, budget="bits")
    assert bits.sum() == math.floor(2048 * 5.3)


# --------------------------------------------------------------------------- allocate()
def test_allocate_budgets_are_met():
    alphas = np.array([0.3, 1.0, 2.5, 4.0, 11.0])
    res = allocate(alphas, avg_bits=3.4, budget="bins")
    assert isinstance(res, Allocation)
    assert res.bins_used["bins_continuous"] == pytest.approx(5 * 2**3.4, rel=1e-12)
    assert res.bits_used["bits_continuous"] == pytest.approx(5 * 3.4, rel=1e-12)
    assert res.bins_used["bits"] <= res.total_bins
    res = allocate(alphas, avg_bits=3.4, budget="bits")
    assert res.bits_used["bits"] <= res.total_bits and res.bits.sum() == 17
    for name in ("bins_continuous", "bits_continuous", "bits_paper", "bits"):
        bins = res.bins_continuous if name == "bins_continuous" else 2.0 ** getattr(res, name)
        assert res.mse[name] == pytest.approx(np.sum(alphas**2 / (3 * bins**2)), rel=1e-12)


def test_zero_range_channels():
    res = allocate([0.0, 1.0, 2.0], avg_bits=2, budget="bins")
    assert res.bins_continuous[0] == 0 and res.bits_continuous[0] == 0
    assert res.bits_paper[0] == 0 and res.bits[0] == 0
    assert res.bins_used["bins_continuous"] == pytest.approx(12.0)  # the others share the budget
    assert all(math.isfinite(v) for v in res.mse.values())
    assert res.mse["bins_continuous"] == pytest.approx(noise([1.0, 2.0], np.log2(res.bins_continuous[1:])))
    res = allocate([0.0, 0.0], avg_bits=4, budget="bits")
    assert res.bits.tolist() == [0, 0] and all(v == 0 for v in res.mse.values())
    assert np.all(np.isfinite(res.bins_continuous)) and res.bins_used["bits"] == 0


def test_to_dict_is_json():
    res = allocate([1, 2, 4, 8], avg_bits=4, budget="bins")
    out = json.loads(json.dumps(res.to_dict()))
    assert {"bins_continuous", "bits_continuous", "bits_paper", "bits", "mse"} <= set(out)
    assert out["bits"] == res.bits.tolist() and all(isinstance(b, int) for b in out["bits"])
    assert out["mse"]["bits"] == pytest.approx(res.mse["bits"])
    with pytest.raises(AttributeError):
        res.bits = None  # frozen


def test_allocation_mse():
    assert allocation_mse([1.0, 2.0], bins=[2, 4]) == pytest.approx(1 / 12 + 4 / 48)
    assert allocation_mse([0.0, 3.0], bins=[0, 3]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="bins"):
        allocation_mse([1.0], bins=[0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(alphas=[1.0, -2.0], avg_bits=4), "alphas"),
    (dict(alphas=[1.0, float("nan")], avg_bits=4), "alphas"),
    (dict(alphas=[], avg_bits=4), "alphas"),
    (dict(alphas=[[1.0, 2.0]], avg_bits=4), "alphas"),
    (dict(alphas=[1.0], avg_bits=-0.5), "avg_bits"),
    (dict(alphas=[1.0], avg_bits=8.5), "avg_bits"),
    (dict(alphas=[1.0], avg_bits=5, max_bits=4), "avg_bits"),
    (dict(alphas=[1.0], avg_bits=float("nan")), "avg_bits"),
    (dict(alphas=[1.0], avg_bits=4, budget="joules"), "budget"),
    (dict(alphas=[1.0], avg_bits=4, max_bits=2.5), "max_bits"),
    (dict(alphas=[1.0], avg_bits=0, max_bits=0), "max_bits"),
])
def test_bad_input_names_the_argument(kwargs, name):
    alphas = kwargs.pop("alphas")
    with pytest.raises(ValueError, match=name):
        allocate(alphas, **kwargs)


def test_bad_input_of_the_rule_functions():
    with pytest.raises(ValueError, match="mode"):
        paper_bits([1.0], avg_bits=4, mode="floor")
    with pytest.raises(ValueError, match="total_bins"):
        allocate_bins_continuous([1.0], total_bins=0)
    with pytest.raises(ValueError, match="avg_bits"):
        allocate_bits_continuous([1.0], avg_bits=-1)
    with pytest.raises(ValueError, match="budget"):
        optimal_integer_bits([1.0], avg_bits=4, budget=None)
    with pytest.raises(ValueError, match="alphas"):
        paper_bits_fixed_target([-1.0], avg_bits=4)


# --------------------------------------------------------------------------- extreme ranges
@pytest.mark.parametrize("budget", ["bins", "bits"])
def test_ranges_a_float_ratio_apart_get_a_correct_answer(budget):
    """alpha = 1e-300 next to 1 (a ratio that underflows as alpha_i / max alpha, and an alpha_i^2
    that underflows outright): no warning (they are errors in the tests), finite errors, eq. 10 and
    11 from logs, and an integer allocation whose error is the brute-force minimum."""
    alphas = np.array([1e-300, 1.0, 0.3])
    res = allocate(alphas, avg_bits=4, budget=budget)
    assert res.bits_paper.tolist() == paper_bits([1e-6, 1.0, 0.3], avg_bits=4).tolist()
    assert res.bins_continuous[0] / res.bins_continuous[1] == pytest.approx(1e-200, rel=1e-10)
    assert all(np.isfinite(v) and v > 0 for v in res.mse.values())
    best = np.inf
    for bits in itertools.product(range(9), repeat=3):
        bits = np.array(bits)
        within = (np.exp2(bits).sum() <= 48) if budget == "bins" else (bits.sum() <= 12)
        if within:
            best = min(best, allocation_mse(alphas, bins=np.exp2(bits)))
    assert res.mse["bits"] == pytest.approx(best, rel=1e-12)


def test_ranges_too_far_apart_or_too_large_are_refused_clearly():
    with pytest.raises(ValueError, match="alphas.*ratio"):
        allocate([1e-300, 1e300], avg_bits=4)            # eq. 10's bins of the narrow channel underflow
    with pytest.raises(ValueError, match="alphas.*overflows"):
        allocate([1e-200, 1e200], avg_bits=4)            # alpha^2 / (3 B^2) beyond float64
    with pytest.raises(ValueError, match="alphas.*ratio"):
        allocate_bins_continuous([1e-300, 1e300], total_bins=32)
    tiny = allocate([0.0, 1e-300, 3e-300], avg_bits=2)  # tiny but alike: the answer of [0, 1, 3]
    assert tiny.bits.tolist() == allocate([0.0, 1.0, 3.0], avg_bits=2).bits.tolist()


def test_cli_answers_extreme_ranges_with_one_line(capsys):
    from aciq.theory.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["allocate", "--alphas", "1e-300", "1e300", "--avg-bits", "4"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "alphas" in err and "Warning" not in err and len(err.strip().splitlines()) == 1
