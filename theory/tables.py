"""The theory tables: optimal clipping per grid, the analytic-vs-exact gap, and the reference limits.

Each table is a list of plain dicts (one row each) so the CLI prints it, ``--json`` dumps it and
:func:`save_all` writes it as CSV and markdown under ``figures/``. All values are for a unit-scale
prior: ``alpha`` in units of b (Laplace) or sigma (Gauss), ``mse`` in units of that scale squared.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ._common import PRIORS, check_prior

EXACT_GRIDS = ("midrise", "gemmlowp", "symmetric")


def limits_table(*, prior: str, bits) -> list[dict]:
    """ACIQ (the paper's alpha on its own model and on the exact mid-rise grid) vs the exact optimal
    uniform (mid-rise) quantizer vs Lloyd-Max vs the rate-distortion function, per bit-width.

    Examples
    --------
    >>> row = limits_table(prior="gauss", bits=[2])[0]
    >>> row["rate_distortion_mse"] < row["lloyd_max_mse"] < row["uniform_mse"] <= row["aciq_mse_exact"]
    True
    """
    from .clipping import optimal_alpha
    from .grids import exact_mse, optimal_alpha_exact
    from .limits import lloyd_max, rate_distortion, to_db

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
            "rate_distortion_mse": float(rate_distortion(m, prior=prior)),
        }
        for key in ("aciq", "uniform", "lloyd_max", "rate_distortion"):
            mse = row["aciq_mse_exact" if key == "aciq" else f"{key}_mse"]
            row[f"{key}_sqnr_db"] = float(to_db(mse, prior=prior))
        rows.append(row)
    return rows


def gap_table(*, prior: str, bits, half_range: bool = False, grids=EXACT_GRIDS) -> list[dict]:
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
    """Optimal alpha and its MSE for every prior, range form and grid (model and exact)."""
    from .clipping import optimal_alpha

    rows = []
    for prior in PRIORS:
        for half_range in (False, True):
            for grid in ("model", *EXACT_GRIDS):
                for m in bits:
                    if grid == "symmetric" and m < 2 and not half_range:
                        continue
                    res = optimal_alpha(prior=prior, bits=m, half_range=half_range, grid=grid)
                    rows.append({"prior": prior, "half_range": half_range, "grid": grid, "bits": int(m),
                                 "alpha": float(res.alpha), "mse": float(res.mse)})
    return rows


def _write(rows: list[dict], path_stem: Path) -> list[Path]:
    csv_path, md_path = path_stem.with_suffix(".csv"), path_stem.with_suffix(".md")
    columns = list(rows[0])
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
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
