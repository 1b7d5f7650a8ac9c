"""Figures are library functions returning matplotlib Figures; their data says what the paper says."""
import numpy as np
import pytest
from matplotlib.figure import Figure

from aciq.theory import figures


def test_bit_alloc_minimum_sits_at_the_two_thirds_share():
    fig = figures.bit_alloc_mse(n=20_000, seed=1)
    ax = fig.axes[0]
    simulated = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(simulated) == 3
    for line, expected in zip(simulated, (2 / 3, 1 / 3, 1 / 2)):
        share, mse = line.get_data()
        assert share[np.argmin(mse)] == pytest.approx(expected, abs=0.04)


def test_aciq_mse_simulation_tracks_the_exact_curve():
    fig = figures.aciq_mse(n=50_000)
    ax = fig.axes[0]
    exact = {line.get_label(): line for line in ax.lines}["exact, midtread grid"]
    alphas, mse = exact.get_data()
    points = ax.containers[0]  # the Monte Carlo error bars
    xs, ys = points.lines[0].get_data()
    assert np.allclose(ys, np.interp(xs, alphas, mse), rtol=0.05)
    assert 9.9 < alphas[np.argmin(mse)] < 10.3  # 5.03 b with b = 2 (the simulation quantizer: 10.08)


@pytest.mark.parametrize("name", ["alpha-vs-bits", "mse-vs-bits", "analytic-gap"])
def test_every_figure_builds(name):
    fig = figures.FIGURES[name]()
    assert isinstance(fig, Figure)
    assert all(ax.lines for ax in fig.axes)


def test_save_all_writes_the_files(tmp_path):
    paths = figures.save_all(tmp_path, names=["alpha-vs-bits"], formats=("png", "svg"))
    assert [p.name for p in paths] == ["alpha-vs-bits.png", "alpha-vs-bits.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(ValueError, match="names"):
        figures.save_all(tmp_path, names=["nope"])
