"""The theory tables: optimal clipping per grid, the analytic-vs-exact gap, and the reference limits.

Each table is a list of plain dicts (one row each) so the CLI prints it, ``--json`` dumps it and
:func:`save_all` writes it as CSV and markdown under ``figures/``. All values are for a unit-scale
prior: ``alpha`` in units of b (Laplace) or sigma (Gauss), ``mse`` in units of that scale squared.

The files carry only digits the solvers guarantee, so that regenerating them on any machine gives
the same bytes (a test does): every optimum is accurate to about 1e-14 relative (the clipping
model's root, the grids' root of d MSE / d alpha, Lloyd-Max's Newton iteration) and the CSVs write
10 significant digits; the gaps (``*_gap_rel``, ``*_gap_db``) are differences of such numbers,
accurate to about 1e-14 absolute and at least 2e-6, and get 6 significant digits; the markdown
tables 6 significant digits throughout.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ._common import CODED_GRIDS, PRIORS, check_prior

CSV_DIGITS = 10
"""Significant digits of the CSV values."""
GAP_DIGITS = 6
"""Significant digits of the gap columns (differences: accurate in absolute, not relative, terms)."""
MD_DIGITS = 6
"""Significant digits of the markdown tables."""


def limits_table(*, prior: str, bits) -> list[dict]:
    """ACIQ (the paper's alpha on its own model and on the exact mid-rise grid) vs the exact optimal
    uniform (mid-rise) quantizer vs Lloyd-Max vs the Shannon lower bound, per bit-width.

    The Shannon lower bound (:func:`aciq.theory.limits.shannon_lower_bound`) is the distortion-rate
    function :math:`D(R)` itself for the Gaussian and a lower bound on it for Laplace, where
    :func:`aciq.theory.limits.blahut_arimoto` computes the true curve (0.37 % above the bound at 1 bit,
    0.023 % at 2 bits).

    Examples
    --------
    >>> row = limits_table(prior="gauss", bits=[2])[0]
    >>> row["shannon_lower_bound_mse"] < row["lloyd_max_mse"] < row["uniform_mse"] <= row["aciq_mse_exact"]
    True
    """
    from .clipping import optimal_alpha
    from .grids import exact_mse, optimal_alpha_exact
    from .limits import lloyd_max, shannon_lower_bound, to_db

    prior = check_prior(prior)
    rows = []
    for m in bits:
        aciq = optimal_alpha(prior=prior, bits=m)
        uniform = optimal_alpha_exact(prior=prior, bits=m, grid="midrise")
        row = {
            "prior": prior,
            "bits": int(m),
            "aciq_alpha": float(aciq.alpha),
            "aciq_mse_model": float(aciq.mse),
            "aciq_mse_exact": float(exact_mse(aciq.alpha, prior=prior, bits=m, grid="midrise")),
            "uniform_alpha": float(uniform.alpha),
            "uniform_mse": float(uniform.mse),
            "lloyd_max_mse": float(lloyd_max(prior=prior, bits=m).mse),
            "shannon_lower_bound_mse": float(shannon_lower_bound(m, prior=prior)),
        }
        for key in ("aciq", "uniform", "lloyd_max", "shannon_lower_bound"):
            mse = row["aciq_mse_exact" if key == "aciq" else f"{key}_mse"]
            row[f"{key}_sqnr_db"] = float(to_db(mse, prior=prior))
        rows.append(row)
    return rows


def gap_table(*, prior: str, bits, half_range: bool = False, grids=CODED_GRIDS) -> list[dict]:
    """How far the analytic alpha (the paper's model) is from each real grid's own optimum.

    Examples
    --------
    >>> rows = gap_table(prior="laplace", bits=[4], grids=["midrise"])
    >>> rows[0]["mse_gap_rel"] >= 0
    True
    """
    from .grids import analytic_gap

    prior = check_prior(prior)
    rows = []
    for grid in grids:
        for m in bits:
            if grid == "symmetric" and m < 2 and not half_range:
                continue  # the restricted signed grid needs two bits
            gap = analytic_gap(prior=prior, bits=m, grid=grid, half_range=half_range)
            rows.append({"prior": prior, "grid": grid, "half_range": half_range, "bits": int(m),
                         "analytic_alpha": float(gap.analytic_alpha),
                         "analytic_mse_exact": float(gap.analytic_mse),
                         "optimal_alpha": float(gap.optimal_alpha),
                         "optimal_mse": float(gap.optimal_mse),
                         "alpha_gap_rel": float(gap.alpha_gap_rel),
                         "mse_gap_rel": float(gap.mse_gap_rel),
                         "mse_gap_db": float(gap.mse_gap_db)})
    return rows


def alpha_table(*, bits=range(1, 9)) -> list[dict]:
    """Optimal alpha and its MSE for every prior, range form and grid: the paper's model
    (:func:`aciq.theory.clipping.optimal_alpha`) and the exact optimum of each grid
    (:func:`aciq.theory.grids.optimal_alpha_exact`)."""
    from .clipping import optimal_alpha
    from .grids import optimal_alpha_exact

    rows = []
    for prior in PRIORS:
        for half_range in (False, True):
            for grid in ("model", *CODED_GRIDS):
                for m in bits:
                    if grid == "symmetric" and m < 2 and not half_range:
                        continue
                    if grid == "model":
                        res = optimal_alpha(prior=prior, bits=m, half_range=half_range)
                    else:
                        res = optimal_alpha_exact(prior=prior, bits=m, half_range=half_range, grid=grid)
                    rows.append({"prior": prior, "half_range": half_range, "grid": grid, "bits": int(m),
                                 "alpha": float(res.alpha), "mse": float(res.mse)})
    return rows


def _cell(value, column: str, digits: int) -> str:
    """A float with ``digits`` significant digits (fewer for the gap columns), anything else as str."""
    if not isinstance(value, float):
        return str(value)
    if column.endswith(("_gap_rel", "_gap_db")):
        digits = min(digits, GAP_DIGITS)
    text = f"{value:.{digits}g}"
    return "0" if text == "-0" else text


def _write(rows: list[dict], path_stem: Path) -> list[Path]:
    csv_path, md_path = path_stem.with_suffix(".csv"), path_stem.with_suffix(".md")
    columns = list(rows[0])
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(r[c], c, CSV_DIGITS) for c in columns] for r in rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c], c, MD_DIGITS) for c in columns) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def save_all(out: Path, *, bits=(1, 2, 3, 4, 5, 6, 7, 8)) -> list[Path]:
    """Write every theory table as CSV and markdown into ``out``; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _write(alpha_table(bits=bits), out / "table-alpha")
    paths += _write([r for p in PRIORS for r in limits_table(prior=p, bits=bits)], out / "table-limits")
    gaps = [r for p in PRIORS for h in (False, True) for r in gap_table(prior=p, bits=bits, half_range=h)]
    paths += _write(gaps, out / "table-gap")
    return paths
