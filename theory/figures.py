"""The theory figures, each a function that returns a :class:`matplotlib.figure.Figure`.

The notebooks and ``aciq figures`` call the same functions. Figures are built without pyplot (no
global figure state), so they render headless and can be returned, shown or saved by the caller.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

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


# --------------------------------------------------------------------------- the explorer's panels
_CURVE_STYLE = {"eq. 5": ("k", "-"), "exact": ("C0", "-"), "measured": ("C0", "-"), "Laplace fit": ("k", "-"),
                "Gauss fit": ("C2", "--"), "Monte Carlo": ("C3", ":")}


def _style(label):
    return next((v for k, v in _CURVE_STYLE.items() if k in label and k != "eq. 5"), _CURVE_STYLE["eq. 5"])


def _plain_log_labels(ax):
    """Plain tick labels at 1, 2, 5 times powers of 10 on a log axis: mathtext's 10^k labels are most
    of the time of a redraw."""
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def mse_curves(*, prior="laplace", bits=4, grid="midrise", half_range=False, alpha=None, data=None,
               curves=None) -> Figure:
    """MSE against the clipping value: eq. 5, the exact error of ``grid``, Monte Carlo with two-standard-
    error bars, each optimum marked, and the values at ``alpha`` (a dashed line) in the title.

    The numbers come from :func:`aciq.theory.explore.prior_curves` (a unit-scale ``prior``) or, with
    ``data`` (the values of a tensor), :func:`aciq.theory.explore.data_curves`; ``curves`` draws
    precomputed ones (what :class:`aciq.theory.explore.Explorer` caches). ``alpha`` is in the units
    of the x axis (the prior's scale, or the fitted b of ``data``). Fractional ``bits`` draw eq. 5 only.
    """
    from .explore import data_curves, prior_curves

    if curves is None:
        curves = (data_curves(data, bits=bits, grid=grid) if data is not None else
                  prior_curves(prior=prior, bits=bits, grid=grid, half_range=half_range))
    fig = Figure(figsize=(6.4, 3.9))  # fixed margins: a layout engine would triple the time of a redraw
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.12, top=0.84)
    ax = fig.add_subplot()
    for label, mse in curves.curves.items():
        colour, style = _style(label)
        ax.plot(curves.alphas, mse, color=colour, ls=style, lw=1.2, label=label)
    if curves.points is not None:
        where, mse, se = curves.points
        colour = _CURVE_STYLE["Monte Carlo"][0]
        ax.errorbar(where, mse, yerr=2 * se, fmt="o", ms=3, color=colour, label=f"{curves.points_label} (±2 se)")
    for label, (a, mse) in curves.optima.items():
        colour = _CURVE_STYLE["Monte Carlo"][0] if label == "Monte Carlo" else _style(label)[0]
        ax.plot([a], [mse], marker="v", ms=7, color=colour, ls="none", label=f"min {label}: α={a:.3g}")
    title = curves.title
    if alpha is not None:
        ax.axvline(alpha, color="0.5", ls="--", lw=0.8)
        values = curves.at(alpha)
        shown = [f"{k} {v:.4g}" for k, v in values.items() if not k.endswith("stderr")]
        title += f"\nat α = {alpha:.3g}: " + ", ".join(shown)
    if curves.note:
        title += f"\n({curves.note})"
    ax.set(xlabel=f"clipping value α (units of {curves.unit})", ylabel=f"MSE ({curves.mse_unit})", yscale="log")
    _plain_log_labels(ax)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return fig


def allocation_bars(alphas, *, avg_bits, budget="bins", max_bits=8) -> Figure:
    """Bits per channel by each rule of :func:`aciq.theory.allocation.allocate`, with their model errors.

    For the ``bins`` budget the continuous optimum is eq. 10's bins as :math:`\\log_2 B_i`; for ``bits``
    the water-filled log rule. Then eq. 11 (the paper's rounding) and the integer optimum within the
    budget; the legend gives each rule's model error :math:`\\sum_i \\alpha_i^2/(3B_i^2)` and what it
    spends of the budget.
    """
    from .allocation import allocate

    res = allocate(alphas, avg_bits=avg_bits, budget=budget, max_bits=max_bits)
    n = res.alphas.size
    if budget == "bins":
        active = res.alphas > 0
        cont = np.zeros(n)
        cont[active] = np.log2(res.bins_continuous[active])
        rules = (("bins_continuous", cont, "continuous, eq. 10 (log2 bins)"),)
    else:
        rules = (("bits_continuous", res.bits_continuous, "continuous (log rule)"),)
    rules += (("bits_paper", res.bits_paper, "eq. 11 (paper)"), ("bits", res.bits, "integer optimum"))
    used = "bins_used" if budget == "bins" else "bits_used"
    total = res.total_bins if budget == "bins" else res.total_bits
    fig = Figure(figsize=(6.4, 3.6))
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.9)
    ax = fig.add_subplot()
    width = 0.8 / len(rules)
    x = np.arange(n)
    for k, (key, bits, label) in enumerate(rules):
        spent = getattr(res, used)[key]
        ax.bar(x + (k - (len(rules) - 1) / 2) * width, bits, width, color=f"C{k}",
               label=f"{label}: MSE {res.mse[key]:.3g}, {budget} used {spent:.4g}/{total:.4g}")
    ax.set_xticks(x, [f"α={a:.3g}" for a in res.alphas])
    ax.axhline(res.avg_bits, color="0.5", lw=0.8, ls="--")
    ax.set(ylabel="bits per channel", ylim=(min(0.0, ax.get_ylim()[0]), max_bits + 0.5),
           title=f"{n} channels, {res.avg_bits:g} bits on average, {budget} budget (dashed: the average)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def site_histogram(hist, edges, *, half_range, mean=0.0, scales=None, windows=None, title="",
                   max_bars=256) -> Figure:
    """A measured histogram with the fitted priors and each calibrator's clipping window.

    ``hist`` counts :math:`|x|` (or :math:`x > 0` for ``half_range``) in the bins ``edges``; it is drawn as
    a density. ``scales`` maps a prior to its fitted scale: the density of :math:`|X|`,
    :math:`X \\sim` prior(``mean``, scale), is overlaid, or for ``half_range`` that of the positive
    part (an exponential of mean b, a half-normal of :math:`E[x^2]^{1/2} = \\sigma`). ``windows`` maps
    a calibrator to its ``(lo, hi)``: a solid line at ``hi`` and, if different, a dotted one at
    :math:`|lo|`. Adjacent bins are merged in groups so that at most ``max_bars`` are drawn (where the
    group size divides the number of bins).
    """
    from .priors import pdf

    hist = np.asarray(hist, dtype=float)
    edges = np.asarray(edges, dtype=float)
    group = -(-hist.size // max_bars)
    if group > 1 and hist.size % group == 0:
        hist, edges = hist.reshape(-1, group).sum(axis=1), edges[::group]
    width = np.diff(edges)
    density = hist / max(hist.sum(), 1.0) / width
    fig = Figure(figsize=(6.4, 3.6))
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.13, top=0.9)
    ax = fig.add_subplot()
    ax.stairs(density, edges, fill=True, color="0.8", label="measured")
    u = np.linspace(edges[0], edges[-1], 400)
    for k, (prior, scale) in enumerate((scales or {}).items()):
        if not scale > 0:
            continue
        if half_range:
            f = 2.0 * pdf(u, prior=prior, scale=scale)
        else:
            f = pdf(u - mean, prior=prior, scale=scale) + pdf(-u - mean, prior=prior, scale=scale)
        ax.plot(u, f, color="k" if prior == "laplace" else "C2", ls="-" if prior == "laplace" else "--",
                lw=1, label=f"{prior} fit ({scale:.3g})")
    for k, (name, (lo, hi)) in enumerate((windows or {}).items()):
        colour = f"C{k % 10}"
        ax.axvline(hi, color=colour, lw=1.2, label=f"{name}: {hi:.3g}")
        if not half_range and not np.isclose(abs(lo), hi):
            ax.axvline(abs(lo), color=colour, lw=1.0, ls=":")
    positive = density[density > 0]
    if positive.size:
        ax.set_ylim(positive.min() / 2, positive.max() * 2)
    ax.set(xlabel="x > 0" if half_range else "|x|", ylabel="density", yscale="log")
    _plain_log_labels(ax)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncols=2)
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
