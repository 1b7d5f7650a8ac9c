"""GPTQ rounding time (:func:`aciq.theory.rounding.gptq_round`) for the two shapes a CNN has most of.

* a dense layer with a 1152x1152 Hessian (a 3x3 conv with 128 input channels, 128 or 256 outputs): the
  lazy block update (``block=128``) vs one column at a time (``block=1``, every update applied at once);
* a depthwise 3x3 conv with 2000 channels: 2000 groups of one output row and a 9x9 Hessian, solved
  batched in one call vs a Python loop of one call per group.

Each line prints the best of ``--repeat`` runs and the ratio measured in the same run; the codes of the
two variants are compared too (they agree up to ties broken by rounding). Timings never gate CI.

Usage: ``python benchmarks/bench_rounding.py [--repeat 3] [--outputs 128 256] [--channels 2000]``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from aciq.theory.rounding import gptq_round


def _best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def _grid(w, bits):
    qmax = 2**bits - 1
    lo, hi = np.minimum(w.min(-1), 0), np.maximum(w.max(-1), 0)
    s = (hi - lo) / qmax
    return s, np.clip(np.rint(-lo / s), 0, qmax)


def dense(outputs, repeat, rng):
    k = 1152
    x = rng.standard_normal((2 * k, k)) @ (np.eye(k) + rng.standard_normal((k, k)) / np.sqrt(k))
    h = x.T @ x
    w = 0.05 * rng.standard_normal((outputs, k))
    s, z = _grid(w, 4)
    t_lazy, lazy = _best(lambda: gptq_round(w, h, scale=s, zero_point=z, bits=4, block=128), repeat)
    t_one, one = _best(lambda: gptq_round(w, h, scale=s, zero_point=z, bits=4, block=1), repeat)
    same = np.mean(lazy.codes == one.codes)
    gain = 1 - lazy.objective.sum() / lazy.nearest_objective.sum()
    print(f"dense {outputs}x{k}, H {k}x{k}: block=128 {t_lazy:.3f} s, block=1 {t_one:.3f} s "
          f"(x{t_one / t_lazy:.2f}); codes equal {100 * same:.3f}%; objective {100 * gain:.1f}% below nearest")


def depthwise(channels, repeat, rng):
    x = rng.standard_normal((channels, 64, 9)) @ (np.eye(9) + 0.4 * rng.standard_normal((channels, 9, 9)))
    h = x.swapaxes(1, 2) @ x
    w = 0.2 * rng.standard_normal((channels, 1, 9))
    s, z = _grid(w.reshape(channels, 9), 4)
    t_batch, batch = _best(lambda: gptq_round(w, h, scale=s, zero_point=z, bits=4), repeat)

    def loop():
        return [gptq_round(w[g], h[g], scale=s[g], zero_point=z[g], bits=4) for g in range(channels)]

    t_loop, each = _best(loop, repeat)
    same = np.mean(np.stack([r.codes for r in each]) == batch.codes)
    print(f"depthwise {channels} groups, H 9x9: batched {t_batch:.3f} s, loop {t_loop:.3f} s "
          f"(x{t_loop / t_batch:.1f}); codes equal {100 * same:.3f}%")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--outputs", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--channels", type=int, default=2000)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    for outputs in args.outputs:
        dense(outputs, args.repeat, rng)
    depthwise(args.channels, args.repeat, rng)


if __name__ == "__main__":
    main()
