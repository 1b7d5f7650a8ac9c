"""The explorer's numbers and panels: every curve is the library's function, the Monte Carlo and the
measurements agree with the closed forms, the figures draw what allocate and the calibrators say, and
the Explorer caches what it has drawn."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from aciq.theory import allocate, empirical_mse, exact_mse, model_mse, optimal_alpha, optimal_alpha_exact, quantize
from aciq.theory import figures
from aciq.theory.explore import GRID_CHOICES, Explorer, data_curves, measured_mse, prior_curves
from aciq.theory.priors import sample


@pytest.mark.parametrize("prior, bits, grid, half_range", [("laplace", 4, "gemmlowp", False),
                                                           ("gauss", 3, "midrise", True),
                                                           ("laplace", 2, "symmetric", False)])
def test_prior_curves_are_the_library_functions(prior, bits, grid, half_range):
    c = prior_curves(prior=prior, bits=bits, grid=grid, half_range=half_range, n=40_000, seed=3)
    np.testing.assert_array_equal(c.curves["eq. 5"], model_mse(c.alphas, prior=prior, bits=bits,
                                                                half_range=half_range))
    np.testing.assert_array_equal(c.curves[f"exact, {grid}"], exact_mse(c.alphas, prior=prior, bits=bits, grid=grid,
                                                                         half_range=half_range))
    best = optimal_alpha(prior=prior, bits=bits, half_range=half_range)
    ex = optimal_alpha_exact(prior=prior, bits=bits, grid=grid, half_range=half_range)
    assert c.optima["eq. 5"] == (best.alpha, best.mse)
    assert c.optima[f"exact, {grid}"] == (ex.alpha, ex.mse)
    # the Monte Carlo (seeded, an independent route) within 4 standard errors of the exact error
    where, mse, se = c.points
    exact = exact_mse(where, prior=prior, bits=bits, grid=grid, half_range=half_range)
    assert np.all(np.abs(mse - exact) < 4 * se)
    assert c.alphas[0] == pytest.approx(0.25 * best.alpha) and c.alphas[-1] == pytest.approx(2.5 * best.alpha)


def test_values_at_alpha_are_the_library_values():
    c = prior_curves(prior="gauss", bits=4, grid="gemmlowp", n=10_000)
    at = c.at(2.7)
    assert at["eq. 5"] == model_mse(2.7, prior="gauss", bits=4)
    assert at["exact, gemmlowp"] == exact_mse(2.7, prior="gauss", bits=4, grid="gemmlowp")
    x = sample("gauss", 10_000, seed=0)
    ref = empirical_mse(x, lambda v: quantize(v, alpha=2.7, bits=4, grid="gemmlowp"))
    assert at["Monte Carlo"] == pytest.approx(ref.mse, rel=1e-12)
    assert at["Monte Carlo stderr"] == pytest.approx(ref.stderr, rel=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        c.at(-1.0)


@pytest.mark.parametrize("bits, grid, note", [(2.5, "gemmlowp", "integer bits"), (4, "model", "not a quantizer"),
                                              (1, "symmetric", "2 bits")])
def test_only_eq5_where_no_grid_runs(bits, grid, note):
    c = prior_curves(prior="laplace", bits=bits, grid=grid)
    assert list(c.curves) == ["eq. 5"] and list(c.optima) == ["eq. 5"] and c.points is None
    assert note in c.note
    assert set(c.at(3.0)) == {"eq. 5"}


def test_measured_mse_is_empirical_mse_for_every_alpha():
    x = sample("laplace", 3_000, seed=5, scale=2.0) + 0.3
    alphas = np.array([0.5, 2.0, 7.0, 30.0])
    mse, se = measured_mse(x, alphas, bits=3, grid="midrise", centre=0.3)
    for a, m, s in zip(alphas, mse, se):
        ref = empirical_mse(x, lambda v: 0.3 + quantize(v - 0.3, alpha=a, bits=3, grid="midrise"))
        assert m == pytest.approx(ref.mse, rel=1e-12) and s == pytest.approx(ref.stderr, rel=1e-12)


def test_data_curves_of_a_laplace_sample_find_the_laplace_optimum():
    x = sample("laplace", 50_000, scale=0.5, seed=2) + 1.0
    c = data_curves(x, bits=4, grid="midrise", name="sample")
    b = np.mean(np.abs(x - x.mean()))
    assert c.unit == "b (fitted)" and "sample" in c.title and "half range" not in c.title
    # eq. 5 with the fitted b, in units of b: the unit optimum 5.029
    assert c.optima["eq. 5, Laplace fit"][0] == pytest.approx(optimal_alpha(prior="laplace", bits=4).alpha, rel=1e-12)
    fit = model_mse(c.alphas * b, prior="laplace", bits=4, scale=b)
    np.testing.assert_allclose(c.curves["eq. 5, Laplace fit"], fit, rtol=1e-12)
    # the measured minimum sits near the exact optimum of the grid for Laplace(b) (5.216 b), within the
    # resolution of the alpha axis and the flatness of the minimum
    assert c.optima["measured, midrise"][0] == pytest.approx(5.216, rel=0.06)


def test_data_curves_of_a_relu_output_use_the_positive_part():
    x = np.maximum(sample("gauss", 40_000, seed=4), 0.0)
    c = data_curves(x, bits=3, grid="gemmlowp")
    assert "half range" in c.title
    pos = x[x > 0]
    b, p = pos.mean(), pos.size / x.size
    # the half-range model weighted by the positive fraction: 2p times eq. 5 (which assumes p = 1/2)
    fit = 2 * p * model_mse(c.alphas * b, prior="laplace", bits=3, scale=b, half_range=True)
    np.testing.assert_allclose(c.curves["eq. 5, Laplace fit"], fit, rtol=1e-12)
    # the Gauss fit of a half-normal tail is the right model: near the measured error at its optimum
    a_g, m_g = c.optima["eq. 5, Gauss fit"]
    measured = c.at(a_g)["measured, gemmlowp"]
    assert m_g == pytest.approx(measured, rel=0.25)


def test_bad_data_is_refused():
    with pytest.raises(ValueError, match="zeros"):
        data_curves(np.zeros(10), bits=4)
    with pytest.raises(ValueError, match="spread"):
        data_curves(np.full(10, -1.0), bits=4)
    with pytest.raises(ValueError, match="x"):
        data_curves([np.nan, 1.0], bits=4)
    with pytest.raises(ValueError, match="bits"):
        prior_curves(prior="laplace", bits=[2, 3])
    with pytest.raises(ValueError, match="grid"):
        prior_curves(prior="laplace", bits=2, grid="lattice")


# --------------------------------------------------------------------------- figures
def test_mse_figure_without_widgets_marks_every_optimum():
    fig = figures.mse_curves(prior="laplace", bits=4, grid="midrise", alpha=5.0)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    markers = {line.get_label(): line.get_xdata()[0] for line in ax.lines if line.get_marker() == "v"}
    assert markers["min eq. 5: α=5.03"] == pytest.approx(5.0286, abs=1e-4)
    assert markers["min exact, midrise: α=5.22"] == pytest.approx(5.2156, abs=1e-4)
    assert "at α = 5" in ax.get_title() and len(ax.containers) == 1  # the Monte Carlo error bars
    data = figures.mse_curves(data=sample("gauss", 5_000, seed=1), bits=3, grid="gemmlowp")
    assert any("measured" in line.get_label() for line in data.axes[0].lines)


@pytest.mark.parametrize("budget", ["bins", "bits"])
def test_allocation_bars_are_allocate(budget):
    alphas = [0.5, 1.0, 2.0, 8.0]
    fig = figures.allocation_bars(alphas, avg_bits=3.5, budget=budget, max_bits=6)
    res = allocate(alphas, avg_bits=3.5, budget=budget, max_bits=6)
    groups = [[p.get_height() for p in c.patches] for c in fig.axes[0].containers]
    assert len(groups) == 3
    cont = np.log2(res.bins_continuous) if budget == "bins" else res.bits_continuous
    np.testing.assert_allclose(groups[0], cont, rtol=1e-12)
    assert groups[1] == res.bits_paper.tolist() and groups[2] == res.bits.tolist()
    labels = [c.get_label() for c in fig.axes[0].containers]
    assert f"MSE {res.mse['bits']:.3g}" in labels[2]


def test_site_histogram_draws_the_windows_and_the_fits():
    x = np.abs(sample("laplace", 20_000, seed=0))
    hist, edges = np.histogram(x, bins=1024, range=(0, x.max()))
    fig = figures.site_histogram(hist, edges, half_range=False, scales={"laplace": 1.0, "gauss": 1.4},
                                 windows={"laplace": (-5.0, 5.0), "kl": (-3.0, 6.0)})
    ax = fig.axes[0]
    vertical = [line.get_xdata()[0] for line in ax.lines if len(line.get_xdata()) == 2]
    assert vertical == [5.0, 6.0, 3.0]  # hi of each window, and |lo| where it differs
    assert len(ax.patches[0].get_path().vertices) < 2 * 1024  # merged to at most 256 bars
    fits = [line for line in ax.lines if "fit" in line.get_label()]
    u, f = fits[0].get_data()
    assert f[0] == pytest.approx(1.0, rel=1e-12)  # density of |X| at 0 for Laplace(0, 1): 2 * 1/2


# --------------------------------------------------------------------------- the Explorer
def test_explorer_caches_curves_and_samples():
    ex = Explorer(tensors={"t": sample("laplace", 5_000, seed=9)}, n=5_000)
    assert ex.sources == ["laplace", "gauss", "t"] and GRID_CHOICES == ("model", "midrise", "gemmlowp", "symmetric")
    a = ex.curves(prior="laplace", bits=3, grid="gemmlowp")
    assert ex.curves(prior="laplace", bits=3.0, grid="gemmlowp") is a   # the alpha slider redraws from here
    ex.curves(prior="laplace", bits=5, grid="midrise")
    assert len(ex._samples) == 1                                     # one Monte Carlo sample per prior
    assert ex.curves(prior="t", bits=3, grid="gemmlowp", half_range=True) is \
        ex.curves(prior="t", bits=3, grid="gemmlowp", half_range=False)  # a tensor's range is its own
    with pytest.raises(ValueError, match="prior"):
        ex.curves(prior="cauchy", bits=3, grid="gemmlowp")


def test_explorer_shows_png_or_the_reason(capsys, monkeypatch):
    pytest.importorskip("IPython.display")
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    ex = Explorer(n=2_000)
    ex.show_mse(prior="gauss", bits=2, grid="symmetric", half_range=False, alpha=1.5)
    ex.show_allocation(avg_bits=9, budget="bits", max_bits=8, alpha_0=1.0, alpha_1=2.0)
    assert len(shown) == 1 and shown[0].data[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not drawn: avg_bits" in capsys.readouterr().out
