"""Redraw time of the explorer's panels (notebooks/00-explore.ipynb) per control change.

Each step changes one control the way a user does (a new prior, grid, bit-width, half range, or only the
clipping value, which redraws from the cache) and times what the widget's callback does: compute (or
fetch) the curves, build the figure, render the PNG. Both wall-clock and CPU time of this process are
printed, with the machine load: on a shared machine the wall time includes waiting for a core.
The target is a redraw under 0.3 s on 2 cores. Not a test (timings never gate CI).

    python benchmarks/bench_explore.py [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from aciq.theory.explore import Explorer
from aciq.theory.figures import site_histogram
from aciq.theory.priors import sample

STEPS = [  # (what moved, controls)
    ("first draw", dict(prior="laplace", bits=4.0, grid="gemmlowp", half_range=False, alpha=5.0)),
    ("alpha", dict(prior="laplace", bits=4.0, grid="gemmlowp", half_range=False, alpha=6.0)),
    ("alpha", dict(prior="laplace", bits=4.0, grid="gemmlowp", half_range=False, alpha=4.5)),
    ("bits", dict(prior="laplace", bits=4.25, grid="gemmlowp", half_range=False, alpha=4.5)),
    ("bits", dict(prior="laplace", bits=5.0, grid="gemmlowp", half_range=False, alpha=4.5)),
    ("bits", dict(prior="laplace", bits=8.0, grid="gemmlowp", half_range=False, alpha=4.5)),
    ("grid", dict(prior="laplace", bits=8.0, grid="symmetric", half_range=False, alpha=4.5)),
    ("grid", dict(prior="laplace", bits=8.0, grid="midrise", half_range=False, alpha=4.5)),
    ("half range", dict(prior="laplace", bits=8.0, grid="midrise", half_range=True, alpha=4.5)),
    ("prior", dict(prior="gauss", bits=8.0, grid="midrise", half_range=True, alpha=4.5)),
    ("prior", dict(prior="tensor", bits=8.0, grid="midrise", half_range=True, alpha=4.5)),
    ("bits", dict(prior="tensor", bits=3.0, grid="midrise", half_range=True, alpha=4.5)),
    ("alpha", dict(prior="tensor", bits=3.0, grid="midrise", half_range=True, alpha=5.5)),
]


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="fresh explorers (cold caches) to time")
    args = parser.parse_args(argv)
    tensor = np.maximum(sample("laplace", 20_000, seed=1), 0.0)  # a 20 000-value post-ReLU tensor, as the notebook's
    # a layer's panel as the notebook draws it: a 2048-bin histogram, two fits, seven windows
    hist, edges = np.histogram(tensor[tensor > 0], bins=2048)
    windows = {name: (0.0, hi) for name, hi in zip(("minmax", "laplace", "gauss", "kstd", "exact", "kl", "mse"),
                                                   (9.0, 6.2, 4.1, 2.0, 6.0, 7.5, 5.8))}
    rows = []
    for _ in range(args.repeat):
        ex = Explorer(tensors={"tensor": tensor})
        for what, controls in STEPS:
            rows.append(("mse: " + what, *_timed(lambda: ex.png(ex.mse_figure(**controls)))))
        for avg in (2.0, 3.25, 4.0):
            rows.append(("allocation: avg bits", *_timed(lambda: ex.png(ex.allocation_figure(
                avg_bits=avg, budget="bins", alpha_0=0.5, alpha_1=1.0, alpha_2=2.0, alpha_3=8.0)))))
        for _ in range(3):
            rows.append(("layer: site", *_timed(lambda: ex.png(site_histogram(
                hist, edges, half_range=True, scales={"laplace": 1.0, "gauss": 1.4}, windows=windows)))))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.repeat} cold runs")
    print(f"{'control moved':24} {'n':>3} {'wall mean':>10} {'wall max':>9} {'cpu mean':>9} {'cpu max':>8}")
    for what in dict.fromkeys(r[0] for r in rows):
        sel = np.array([r[1:] for r in rows if r[0] == what])
        print(f"{what:24} {len(sel):3d} {sel[:, 0].mean():10.3f} {sel[:, 0].max():9.3f} "
              f"{sel[:, 1].mean():9.3f} {sel[:, 1].max():8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
