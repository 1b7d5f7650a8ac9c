"""Optimal clipping for 10^6 (scale, bits) pairs: the vectorised solver vs a loop of scipy solvers.

The vectorised :func:`aciq.theory.clipping.optimal_alpha` solves all pairs at once (Laplace: Lambert W
in closed form; Gauss: Halley iteration). The seed builds its alpha table the usual way, one
``scipy.optimize.minimize_scalar(method="bounded")`` per value; a loop over 10^6 pairs would take
minutes, so it runs on a seeded random subset and the comparison is per pair. Since the MSE is flat at
its minimum, minimize_scalar can only locate alpha to about sqrt(eps); the accuracy figure is therefore
the difference from ``scipy.optimize.brentq`` on the derivative (xtol=1e-15 times the scale), timed
on the same subset.

Usage: ``python benchmarks/bench_alpha.py [--n 1000000] [--subset 2000] [--seed 0] [--json]``.
Timings are the best of ``--repeat`` runs; they never gate CI.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from scipy.optimize import brentq, minimize_scalar
from scipy.special import erfc

from aciq.theory.clipping import optimal_alpha

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# Scalar objectives, written as the seed writes them (one float at a time), and their derivatives.
def _mse(alpha, scale, bits, prior):
    noise = alpha * alpha / (3.0 * 4.0**bits)
    if prior == "laplace":
        return 2.0 * scale * scale * math.exp(-alpha / scale) + noise
    return ((alpha * alpha + scale * scale) * erfc(alpha / (_SQRT2 * scale))
            - _SQRT_2_OVER_PI * alpha * scale * math.exp(-0.5 * (alpha / scale) ** 2) + noise)


def _dmse(alpha, scale, bits, prior):
    noise = 2.0 * alpha / (3.0 * 4.0**bits)
    if prior == "laplace":
        return noise - 2.0 * scale * math.exp(-alpha / scale)
    return (2.0 * alpha * erfc(alpha / (_SQRT2 * scale))
            - 2.0 * _SQRT_2_OVER_PI * scale * math.exp(-0.5 * (alpha / scale) ** 2) + noise)


def _best_of(fn, repeat):
    best, out = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _loop(solve, scale, bits):
    start = time.perf_counter()
    alpha = np.array([solve(s, m) for s, m in zip(scale, bits)])
    return time.perf_counter() - start, alpha


def run(*, n=1_000_000, subset=2000, seed=0, repeat=3) -> dict:
    rng = np.random.default_rng(seed)
    bits = rng.uniform(1.0, 8.0, n)
    scale = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), n))
    pick = rng.choice(n, size=subset, replace=False)
    sub_scale, sub_bits = scale[pick], bits[pick]
    out = {"n": n, "subset": subset, "seed": seed, "bits_range": [1.0, 8.0], "scale_range": [1e-2, 1e2],
           "priors": {}}
    for prior in ("laplace", "gauss"):
        t_vec, res = _best_of(lambda: optimal_alpha(prior=prior, bits=bits, scale=scale), repeat)
        alpha, mse = res.alpha[pick], res.mse[pick]

        def by_minimize(s, m):
            r = minimize_scalar(_mse, bounds=(0.0, 20.0 * s), args=(s, m, prior), method="bounded",
                                options={"xatol": 1e-12 * s})
            return r.x

        def by_brentq(s, m):
            return brentq(_dmse, 0.0, 20.0 * s, args=(s, m, prior), xtol=1e-15 * s)

        t_min, a_min = _loop(by_minimize, sub_scale, sub_bits)
        t_brq, a_brq = _loop(by_brentq, sub_scale, sub_bits)
        m_min = np.array([_mse(a, s, m, prior) for a, s, m in zip(a_min, sub_scale, sub_bits)])
        m_brq = np.array([_mse(a, s, m, prior) for a, s, m in zip(a_brq, sub_scale, sub_bits)])

        def rel(a, b):
            return float(np.max(np.abs(a - b) / np.abs(b)))

        per_vec, per_min, per_brq = t_vec / n, t_min / subset, t_brq / subset
        out["priors"][prior] = {
            "converged": bool(res.converged),
            "vectorised_total_s": t_vec,
            "vectorised_per_pair_s": per_vec,
            "minimize_scalar_per_pair_s": per_min,
            "brentq_per_pair_s": per_brq,
            "speedup_vs_minimize_scalar": per_min / per_vec,
            "speedup_vs_brentq": per_brq / per_vec,
            "max_rel_diff_alpha_vs_minimize_scalar": rel(alpha, a_min),
            "max_rel_diff_mse_vs_minimize_scalar": rel(mse, m_min),
            "max_rel_diff_alpha_vs_brentq": rel(alpha, a_brq),
            "max_rel_diff_mse_vs_brentq": rel(mse, m_brq),
        }
    return out


def _print(report: dict) -> None:
    print(f"optimal alpha for {report['n']:,} (scale, bits) pairs, bits uniform in [1, 8] (fractional), "
          f"scale log-uniform in [0.01, 100], seed {report['seed']}")
    print(f"scipy loops timed on a seeded random subset of {report['subset']:,} pairs; per-pair times compared")
    for prior, r in report["priors"].items():
        print(f"\n{prior}:  converged={r['converged']}")
        print(f"  vectorised optimal_alpha  {r['vectorised_per_pair_s'] * 1e9:10.1f} ns/pair "
              f"({r['vectorised_total_s']:.3f} s for all {report['n']:,})")
        print(f"  minimize_scalar (bounded) {r['minimize_scalar_per_pair_s'] * 1e9:10.1f} ns/pair   "
              f"speed ratio {r['speedup_vs_minimize_scalar']:,.0f}x")
        print(f"  brentq on dMSE/dalpha     {r['brentq_per_pair_s'] * 1e9:10.1f} ns/pair   "
              f"speed ratio {r['speedup_vs_brentq']:,.0f}x")
        print(f"  max rel. diff vs minimize_scalar: alpha {r['max_rel_diff_alpha_vs_minimize_scalar']:.1e}, "
              f"MSE {r['max_rel_diff_mse_vs_minimize_scalar']:.1e}  (its alpha is only good to ~sqrt(eps))")
        print(f"  max rel. diff vs brentq (accuracy): alpha {r['max_rel_diff_alpha_vs_brentq']:.1e}, "
              f"MSE {r['max_rel_diff_mse_vs_brentq']:.1e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pairs solved by the vectorised solver")
    parser.add_argument("--subset", type=int, default=2000, help="pairs solved by the scipy loops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="best of this many vectorised runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 0 < args.subset <= args.n:
        parser.error("--subset must be in [1, --n]")
    report = run(n=args.n, subset=args.subset, seed=args.seed, repeat=args.repeat)
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
