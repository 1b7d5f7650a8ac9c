"""The theory figures, each a function that returns a :class:`matplotlib.figure.Figure`.

The notebooks and ``aciq figures`` call the same functions. Figures are built without pyplot (no
global figure state), so they render headless and can be returned, shown or saved by the caller.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ._common import CODED_GRIDS, PRIORS

_GRID_STYLE = {"model": ("k", "-"), "midrise": ("C0", "-"), "gemmlowp": ("C1", "--"),
               "symmetric": ("C2", "-."), "midtread": ("C3", ":")}
_SCALE_NAME = {"laplace": "b", "gauss": r"\sigma"}


def aciq_mse(*, scale: float = 2.0, bits: int = 4, alphas=None, n: int = 100_000, seed: int = 0) -> Figure:
    """The seed's ``aciq-mse`` figure: MSE vs alpha for Laplace(0, b), analytic vs simulated.

    The paper's model (clipping + alpha^2/(3*4^M)), the exact error of the mid-rise grid it models,
    the exact error of the seed's simulation quantizer (``round(x/Q)*Q``, 2^M + 1 levels) and a
    seeded Monte Carlo of that simulation (n samples, common to every alpha) with 2-sigma bars.
    """
    from .clipping import model_mse, optimal_alpha
    from .empirical import monte_carlo_mse
    from .grids import exact_mse

    alphas = np.arange(5.0, 20.0, 0.1) if alphas is None else np.asarray(alphas, dtype=float)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(alphas, model_mse(alphas, prior="laplace", bits=bits, scale=scale), "k-", label="analytic (eq. 5)")
    for grid in ("midrise", "midtread"):
        colour, style = _GRID_STYLE[grid]
        ax.plot(alphas, exact_mse(alphas, prior="laplace", bits=bits, grid=grid, scale=scale),
                color=colour, ls=style, label=f"exact, {grid} grid")
    mc = [monte_carlo_mse(prior="laplace", alpha=a, bits=bits, grid="midtread", scale=scale, n=n, seed=seed)
          for a in alphas[::5]]
    ax.errorbar(alphas[::5], [r.mse for r in mc], yerr=[2 * r.stderr for r in mc], fmt="o", ms=3,
                color=_GRID_STYLE["midtread"][0], label=f"simulation, midtread (n={n:,})")
    best = optimal_alpha(prior="laplace", bits=bits, scale=scale)
    ax.axvline(best.alpha, color="0.5", lw=0.8)
    ax.annotate(rf"$\alpha^*={best.alpha:.2f}$", (best.alpha, ax.get_ylim()[1] * 0.9), ha="left", fontsize=8)
    ax.set(xlabel=r"clipping value $\alpha$", ylabel="mean squared error",
           title=f"Laplace(0, b={scale:g}), {bits}-bit quantization")
    ax.legend(fontsize=8)
    return fig


def bit_alloc_mse(*, total_bins: int = 32, n: int = 10_000, seed: int = 0, shares=None) -> Figure:
    """The seed's ``bit-alloc-mse`` figure: two Gaussian channels share ``total_bins`` bins.

    Each channel is quantized uniformly over its sample range [min, max] with ``p*B`` and
    ``(1-p)*B`` bins. The sum of errors is smallest at ``p = r_1^{2/3}/(r_1^{2/3}+r_2^{2/3})``
    (eq. 10), shown for range ratios whose 2/3 powers are 2:1, 1:2 and 1:1.
    """
    from .allocation import allocate_bins_continuous

    shares = np.linspace(0.15, 0.85, 71) if shares is None else np.asarray(shares, dtype=float)
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, (ratio, label) in enumerate((((2.0, 1.0), "2:1"), ((1.0, 2.0), "1:2"), ((1.0, 1.0), "1:1"))):
        sigmas = np.array(ratio) ** 1.5  # so that range^(2/3) has the stated ratio
        x = rng.standard_normal((2, n)) * sigmas[:, None]
        lo, hi = x.min(axis=1), x.max(axis=1)
        ranges = hi - lo
        simulated, analytic = [], []
        for p in shares:
            bins = np.array([p, 1.0 - p]) * total_bins
            step = ranges / bins
            cells = np.clip(np.floor((x - lo[:, None]) / step[:, None]), 0, np.ceil(bins)[:, None] - 1)
            x_hat = lo[:, None] + (cells + 0.5) * step[:, None]
            simulated.append(np.mean((x - x_hat) ** 2))
            analytic.append(np.mean(step**2 / 12))
        colour = f"C{i}"
        ax.plot(shares, simulated, "o", ms=3, color=colour, label=rf"simulated, $r^{{2/3}}$ ratio {label}")
        ax.plot(shares, analytic, "-", color=colour, lw=1)
        p_star = allocate_bins_continuous(ranges, total_bins=total_bins)[0] / total_bins
        ax.axvline(p_star, color=colour, ls="--", lw=0.8)
    ax.set(xlabel="share of bins given to channel 1", ylabel="mean squared error", yscale="log",
           title=f"Bin allocation between two channels, {total_bins} bins (lines: $\\Delta^2/12$, dashed: eq. 10)")
    ax.legend(fontsize=8)
    return fig


def alpha_vs_bits(*, bits=range(1, 9)) -> Figure:
    """Optimal alpha vs bits: the paper's model vs the exact optimum of each grid that runs."""
    from .clipping import optimal_alpha
    from .grids import optimal_alpha_exact

    bits = np.asarray(list(bits))
    fig = Figure(figsize=(9.6, 4.0), layout="constrained")
    for ax, prior in zip(fig.subplots(1, 2), PRIORS):
        for grid in ("model", *CODED_GRIDS):
            colour, style = _GRID_STYLE[grid]
            for half_range, marker in ((False, "o"), (True, "s")):
                ms = [m for m in bits if not (grid == "symmetric" and m < 2 and not half_range)]
                if grid == "model":
                    alphas = optimal_alpha(prior=prior, bits=ms, half_range=half_range).alpha
                else:
                    alphas = optimal_alpha_exact(prior=prior, bits=ms, grid=grid, half_range=half_range).alpha
                ax.plot(ms, alphas, color=colour, ls=style, marker=marker, ms=3,
                        label=f"{grid}{', half-range' if half_range else ''}")
        ax.set(xlabel="bits M", ylabel=rf"$\alpha^* / {_SCALE_NAME[prior]}$", title=prior)
        ax.legend(fontsize=7)
    return fig


def mse_vs_bits(*, bits=range(1, 9)) -> Figure:
    """SQNR vs bits: ACIQ (model alpha on the exact mid-rise grid), the exact optimal uniform
    quantizer, Lloyd-Max and the Shannon lower bound (the rate-distortion function for Gauss)."""
    from .tables import limits_table

    fig = Figure(figsize=(9.6, 4.0), layout="constrained")
    for ax, prior in zip(fig.subplots(1, 2), PRIORS):
        rows = limits_table(prior=prior, bits=list(bits))
        ms = [r["bits"] for r in rows]
        for key, label, style in (("aciq_sqnr_db", "ACIQ alpha, exact mid-rise", "C3o-"),
                                  ("uniform_sqnr_db", "optimal uniform (mid-rise)", "C0s-"),
                                  ("lloyd_max_sqnr_db", "Lloyd-Max", "C2^-"),
                                  ("shannon_lower_bound_sqnr_db",
                                   "D(R) = Shannon lower bound" if prior == "gauss"
                                   else "Shannon lower bound (< D(R))", "k--")):
            ax.plot(ms, [r[key] for r in rows], style, ms=3, label=label)
        ax.set(xlabel="bits M (rate R)", ylabel="SQNR (dB)", title=prior)
        ax.legend(fontsize=8)
    return fig


def analytic_gap(*, bits=range(1, 9)) -> Figure:
    """Excess MSE of the analytic alpha on each real grid over that grid's own optimum (percent)."""
    from .tables import gap_table

    fig = Figure(figsize=(9.6, 4.0), layout="constrained")
    for ax, prior in zip(fig.subplots(1, 2), PRIORS):
        for half_range, marker in ((False, "o"), (True, "s")):
            rows = gap_table(prior=prior, bits=list(bits), half_range=half_range)
            for grid in CODED_GRIDS:
                sel = [r for r in rows if r["grid"] == grid]
                colour, style = _GRID_STYLE[grid]
                ax.plot([r["bits"] for r in sel], [100 * r["mse_gap_rel"] for r in sel], color=colour, ls=style,
                        marker=marker, ms=3, label=f"{grid}{', half-range' if half_range else ''}")
        ax.set(xlabel="bits M", ylabel="excess MSE of analytic alpha (%)", yscale="symlog", title=prior)
        ax.legend(fontsize=7)
    return fig


FIGURES = {
    "aciq-mse": aciq_mse,
    "bit-alloc-mse": bit_alloc_mse,
    "alpha-vs-bits": alpha_vs_bits,
    "mse-vs-bits": mse_vs_bits,
    "analytic-gap": analytic_gap,
}


def save_all(out: Path, *, formats=("png",), names=None) -> list[Path]:
    """Render every figure (or those in ``names``) into ``out``; return the written paths."""
    unknown = set(names or ()) - set(FIGURES)
    if unknown:
        raise ValueError(f"names: unknown figure(s) {sorted(unknown)}; known: {sorted(FIGURES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or FIGURES:
        fig = FIGURES[name]()
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            fig.savefig(path, dpi=150, metadata={"Software": None} if fmt == "png" else None)
            paths.append(path)
    return paths
