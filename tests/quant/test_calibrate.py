"""aciq.quant.calibrate: every window from aciq.theory, checked against the formulas and a brute-force search."""
import numpy as np
import pytest
import torch

from aciq.quant.calibrate import (SiteSpec, allocate_bits, candidate_errors, site_grid, site_window,
                                  unit_alpha)
from aciq.quant.fake import fake_quantize, grid_params
from aciq.quant.observe import Observer
from aciq.theory import allocate, optimal_alpha, optimal_alpha_exact
from aciq.theory.allocation import paper_bits
from aciq.theory.kl import kl_threshold

MODES = ("minmax", "laplace", "gauss", "kstd", "exact", "mse", "mix")


def stats_of(x: np.ndarray, spec: SiteSpec | None = None, bins=256):
    """Statistics of ``x`` (channels on axis 1), with pass 3 when ``spec`` needs candidate errors."""
    obs = Observer("t", hist_bins=bins)
    t = torch.from_numpy(x)
    for phase in (1, 2):
        obs.phase = phase
        obs(t)
    if spec is not None:
        obs.candidates = candidate_errors(obs.stats, spec)
        if obs.candidates:
            obs.phase = 3
            obs(t)
    return obs.stats


def data(seed=0, shape=(400, 4), loc=0.2):
    rng = np.random.default_rng(seed)
    return rng.laplace(loc=loc, size=shape) * np.array([0.5, 1.0, 2.0, 4.0])[: shape[1]]


def test_unit_alpha_is_theory():
    # published: Laplace 2.83, 3.89, 5.03 b at M = 2, 3, 4 (paper, sec. 3); Gauss 1.71, 2.15, 2.55 sigma
    np.testing.assert_allclose(unit_alpha("laplace", [2, 3, 4], half=False), [2.83068, 3.89723, 5.02864],
                               atol=1e-5)
    np.testing.assert_allclose(unit_alpha("gauss", [2, 3, 4], half=False), [1.71064, 2.15159, 2.55914],
                               atol=1e-5)
    for prior in ("laplace", "gauss"):
        np.testing.assert_allclose(unit_alpha(prior, [1, 4, 8], half=True),
                                   optimal_alpha(prior=prior, bits=np.array([1.0, 4, 8]), half_range=True).alpha)
        # the half-range optimum at M is the symmetric one at M + 1
        np.testing.assert_allclose(unit_alpha(prior, [3], half=True), unit_alpha(prior, [4], half=False))
        assert unit_alpha("exact", [3], half=False, exact_prior=prior)[0] == pytest.approx(
            optimal_alpha_exact(prior=prior, bits=3, grid="gemmlowp").alpha)
    assert unit_alpha("laplace", [0, 4], half=False)[0] == 0.0            # a 0-bit channel clips to nothing
    with pytest.raises(ValueError, match="kl"):
        unit_alpha("kl", [4], half=False)


def test_symmetric_windows_by_formula():
    x = data()
    s = stats_of(x)
    bits = np.full(4, 3)
    spec = SiteSpec(clipping="laplace", bits=3, per_channel=True, half=False)
    lo, hi = site_window(s, "laplace", bits, spec)
    alpha = 3.89723 * np.abs(x - x.mean(0)).mean(0)
    np.testing.assert_allclose(lo, np.maximum(x.mean(0) - alpha, x.min(0)), rtol=1e-5)
    np.testing.assert_allclose(hi, np.minimum(x.mean(0) + alpha, x.max(0)), rtol=1e-5)
    lo, hi = site_window(s, "kstd", bits, SiteSpec(clipping="kstd", bits=3, per_channel=True, half=False, kstd=2.5))
    np.testing.assert_allclose(hi, np.minimum(x.mean(0) + 2.5 * x.std(0, ddof=1), x.max(0)), rtol=1e-12)
    lo, hi = site_window(s, "minmax", bits, spec)
    np.testing.assert_array_equal(lo, np.minimum(x.min(0), 0))
    np.testing.assert_array_equal(hi, x.max(0))


def test_half_range_windows():
    """Input after a ReLU: [0, alpha(b_pos)]; the seed's fused ReLU: [0, max(mean, 0) + alpha(b)]."""
    x = data(1)
    relu = np.maximum(x, 0)
    s = stats_of(relu)
    spec = SiteSpec(clipping="laplace", bits=2, per_channel=True, half=True)
    lo, hi = site_window(s, "laplace", np.full(4, 2), spec)
    b_pos = np.array([c[c > 0].mean() for c in relu.T])
    a = optimal_alpha(prior="laplace", bits=2.0, half_range=True).alpha
    np.testing.assert_array_equal(lo, 0.0)
    np.testing.assert_allclose(hi, np.minimum(a * b_pos, relu.max(0)), rtol=1e-12)
    s = stats_of(x)
    fused = SiteSpec(clipping="laplace", bits=2, per_channel=True, half=True, fused=True)
    lo, hi = site_window(s, "laplace", np.full(4, 2), fused)
    b = np.abs(x - x.mean(0)).mean(0)
    np.testing.assert_allclose(hi, np.minimum(np.maximum(x.mean(0), 0) + a * b, x.max(0)), rtol=1e-12)


def brute_force_error(x, lo, hi, bits, half=False):
    g = grid_params(lo, hi, bits)
    xt = torch.from_numpy(np.maximum(x, 0) if half else x)
    return float(((xt - fake_quantize(xt, g)) ** 2).sum())


@pytest.mark.parametrize("per_channel", [True, False])
def test_mse_picks_the_best_candidate(per_channel):
    x = data(2, shape=(300, 3))
    spec = SiteSpec(clipping="mse", bits=3, per_channel=per_channel, half=False, mse_candidates=20)
    s = stats_of(x, spec)
    view = s if per_channel else s.tensor()
    lo, hi = site_window(view, "mse", np.full(view.channels, 3), spec)
    cols = [x[:, c] for c in range(3)] if per_channel else [x.ravel()]
    for c, xc in enumerate(cols):
        base_lo, base_hi = min(xc.min(), 0.0), max(xc.max(), 0.0)
        errs = [brute_force_error(xc, base_lo * k / 20, base_hi * k / 20, 3) for k in range(1, 21)]
        k = int(np.argmin(errs)) + 1
        assert lo[c] == pytest.approx(base_lo * k / 20) and hi[c] == pytest.approx(base_hi * k / 20)
        assert brute_force_error(xc, lo[c], hi[c], 3) == pytest.approx(min(errs))


def test_mix_picks_the_lower_measured_error():
    rng = np.random.default_rng(3)
    x = np.stack([rng.laplace(size=2000), rng.normal(size=2000), rng.uniform(-1, 1, 2000)], axis=1)
    spec = SiteSpec(clipping="mix", bits=3, per_channel=True, half=False)
    s = stats_of(x, spec)
    lo, hi = site_window(s, "mix", np.full(3, 3), spec)
    for c in range(3):
        errs = [brute_force_error(x[:, c], *(w[c] for w in site_window(s, m, np.full(3, 3), spec)), 3)
                for m in ("laplace", "gauss", "minmax")]
        assert brute_force_error(x[:, c], lo[c], hi[c], 3) == pytest.approx(min(errs), rel=1e-9)
    assert hi[2] == pytest.approx(x[:, 2].max())          # uniform data: no clipping wins


@pytest.mark.parametrize("half", [False, True])
def test_kl_window_is_theory_kl(half):
    x = data(4, shape=(3000, 2))
    if half:
        x = np.maximum(x, 0)
    s = stats_of(x, bins=512).tensor()
    spec = SiteSpec(clipping="kl", bits=4, per_channel=False, half=half)
    lo, hi = site_window(s, "kl", np.array([4]), spec)
    top = x.max() if half else np.abs(x).max()
    hist = np.histogram(x[x > 0] if half else np.abs(x), bins=512, range=(0, top))[0]
    alpha = kl_threshold(hist, np.linspace(0, top, 513), bits=4, half_range=half).alpha
    assert hi[0] == pytest.approx(min(alpha, x.max()), rel=1e-6)
    assert lo[0] == (0.0 if half else pytest.approx(max(-alpha, x.min()), rel=1e-6))


@pytest.mark.parametrize("rule", ["paper", "optimal"])
def test_allocation_is_theory(rule):
    alphas = np.array([0.1, 0.5, 1.0, 2.0, 7.0, 0.0])
    spec = SiteSpec(clipping="laplace", bits=4, per_channel=True, half=False, alloc=rule, avg_bits=3.5)
    bits = allocate_bits(alphas, spec)
    want = paper_bits(alphas, avg_bits=3.5) if rule == "paper" else allocate(alphas, avg_bits=3.5).bits
    np.testing.assert_array_equal(bits, want)
    assert bits[-1] == 0


def test_site_grid_with_allocation_and_per_tensor():
    x = data(5, shape=(500, 4), loc=0.0)
    s = stats_of(x)
    spec = SiteSpec(clipping="laplace", bits=4, per_channel=True, half=False, alloc="optimal")
    grid, info = site_grid(s, spec, axis=1)
    assert grid.bits.shape == (4,) and grid.axis == 1
    assert (2.0 ** grid.bits).sum() <= 4 * 2 ** 4 and info["bits_mean"] == grid.bits.mean()
    assert grid.bits[3] > grid.bits[0]                     # the widest channel gets the most bits
    grid, info = site_grid(s, SiteSpec(clipping="laplace", bits=4, per_channel=False, half=False), axis=1)
    assert np.ndim(grid.scale) == 0 and grid.axis is None and info["per_channel"] is False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("half", [False, True])
def test_constant_channels_give_finite_grids(mode, half):
    """Zero variance (a constant channel, an all-zero channel): finite grids, no NaN anywhere."""
    x = data(6, shape=(64, 4))
    x[:, 1] = 0.7
    x[:, 2] = 0.0
    if half:
        x = np.maximum(x, 0)
    spec = SiteSpec(clipping=mode, bits=3, per_channel=True, half=half, mse_candidates=10)
    with np.errstate(all="raise"):
        s = stats_of(x, spec)
        grid, _ = site_grid(s, spec, axis=1)
    assert np.isfinite(grid.scale).all() and (grid.scale > 0).all()
    out = fake_quantize(torch.from_numpy(x), grid)
    assert torch.isfinite(out).all()
    assert (out[:, 2] == 0).all()
    assert torch.allclose(out[:, 1], torch.tensor(0.7, dtype=torch.float64), atol=0.7 / 7 / 2 + 1e-12)
