"""Scale estimates, calibration statistics, generalized-Gaussian fit and the choice of prior."""
import statistics
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from aciq.theory.stats import (
    ChannelStats,
    GeneralizedGaussianFit,
    PriorChoice,
    channel_stats,
    choose_prior,
    estimate_scale,
    fit_generalized_gaussian,
    gauss_scale,
    laplace_scale,
)


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- scales
def test_scales_on_hand_computed_values():
    x = [1.0, 2.0, 3.0, 6.0]  # mean 3
    assert laplace_scale(x) == pytest.approx((2 + 1 + 0 + 3) / 4)
    assert gauss_scale(x) == pytest.approx(statistics.stdev(x))  # ddof = 1, like torch.std
    assert estimate_scale(x, prior="laplace") == laplace_scale(x)
    assert estimate_scale(x, prior="Gauss") == gauss_scale(x)
    assert isinstance(laplace_scale(x), float) and isinstance(gauss_scale(x), float)


def test_laplace_b_is_about_the_mean_not_the_median():
    x = np.array([0.0, 0.0, 0.0, 10.0])  # mean 2.5, median 0
    assert laplace_scale(x) == pytest.approx((3 * 2.5 + 7.5) / 4)
    assert laplace_scale(x) != pytest.approx(np.mean(np.abs(x - np.median(x))))


@pytest.mark.parametrize("b, mu", [(1.0, 0.0), (0.3, 2.0), (5.0, -1.0)])
def test_laplace_scale_converges_to_b(b, mu):
    n = 200_000
    x = np.random.default_rng(7).laplace(loc=mu, scale=b, size=n)
    # |X - mu| ~ Exponential(b): standard deviation b, so the estimate's standard error is b / sqrt(n)
    assert abs(laplace_scale(x) - b) < 4 * b / np.sqrt(n)


def test_gauss_scale_converges_to_sigma():
    n = 200_000
    x = np.random.default_rng(8).normal(loc=3.0, scale=2.0, size=n)
    assert abs(gauss_scale(x) - 2.0) < 4 * 2.0 / np.sqrt(2 * n)


def test_per_channel_axis_semantics():
    rng = np.random.default_rng(0)
    act = rng.laplace(size=(4, 3, 5, 6)) * np.array([0.5, 1.0, 2.0])[None, :, None, None]  # NCHW
    b = laplace_scale(act, axis=1)
    sigma = gauss_scale(act, axis=1)
    assert b.shape == sigma.shape == (3,)
    for c in range(3):
        ch = act[:, c].ravel()  # over N, H, W
        assert b[c] == pytest.approx(np.mean(np.abs(ch - ch.mean())), rel=1e-12)
        assert sigma[c] == pytest.approx(statistics.stdev(ch), rel=1e-12)
    assert np.array_equal(laplace_scale(act, axis=-3), b)
    weights = rng.normal(size=(8, 3, 3, 3))  # OIHW, per output channel
    assert np.allclose(gauss_scale(weights, axis=0), weights.reshape(8, -1).std(axis=1, ddof=1))


def test_zero_variance_channels_give_zero_not_nan():
    x = np.stack([np.full(10, 0.1), np.arange(10.0), np.full(10, -7.3)])  # 0.1 * 10 / 10 != 0.1 in floats
    for fn in (laplace_scale, gauss_scale):
        s = fn(x, axis=0)
        assert s[0] == 0.0 and s[2] == 0.0 and s[1] > 0
    assert laplace_scale(np.full(1000, 0.1)) == 0.0
    assert gauss_scale([4.2]) == 0.0 and laplace_scale([4.2]) == 0.0  # one value: no spread seen
    assert gauss_scale(np.arange(4.0), axis=0).tolist() == [0.0] * 4  # one value per channel


@pytest.mark.parametrize("call, name", [
    (lambda: laplace_scale([]), "x"),
    (lambda: gauss_scale([1.0, np.nan]), "x"),
    (lambda: laplace_scale([1.0, np.inf]), "x"),
    (lambda: channel_stats([[np.nan]], axis=0), "x"),
    (lambda: laplace_scale(np.ones((2, 3)), axis=2), "axis"),
    (lambda: gauss_scale(np.ones((2, 3)), axis=1.0), "axis"),
    (lambda: laplace_scale(1.0, axis=0), "x"),
    (lambda: estimate_scale([1.0, 2.0], prior="cauchy"), "prior"),
    (lambda: fit_generalized_gaussian([]), "x"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --------------------------------------------------------------------------- channel_stats
def test_channel_stats_against_numpy_and_scipy():
    rng = np.random.default_rng(1)
    x = rng.laplace(size=(64, 5, 7)) + np.arange(5)[None, :, None]
    s = channel_stats(x, axis=1)
    assert isinstance(s, ChannelStats)
    rows = np.moveaxis(x, 1, 0).reshape(5, -1)
    assert np.allclose(s.mean, rows.mean(axis=1)) and np.array_equal(s.min, rows.min(axis=1))
    assert np.array_equal(s.max, rows.max(axis=1))
    assert np.allclose(s.std, rows.std(axis=1, ddof=1)) and np.allclose(s.b, laplace_scale(x, axis=1))
    assert s.count == 64 * 7
    assert np.allclose(s.kurtosis, sps.kurtosis(rows, axis=1, fisher=True, bias=True), rtol=1e-10)
    whole = channel_stats(x)
    assert isinstance(whole.mean, float) and whole.count == x.size


def test_kurtosis_tells_laplace_from_gauss():
    rng = np.random.default_rng(2)
    n = 400_000
    assert channel_stats(rng.laplace(size=n)).kurtosis == pytest.approx(3.0, abs=0.4)  # sd ~ sqrt(2520/n)
    assert channel_stats(rng.normal(size=n)).kurtosis == pytest.approx(0.0, abs=0.05)  # sd ~ sqrt(24/n)
    const = channel_stats(np.full((3, 4), 2.5), axis=0)
    assert const.kurtosis.tolist() == [0.0] * 3 and const.std.tolist() == [0.0] * 3


# --------------------------------------------------------------------------- generalized Gaussian
@pytest.mark.parametrize("beta", [0.7, 1.0, 1.5, 2.0, 3.0])
def test_generalized_gaussian_fit_recovers_shape_and_scale(beta):
    x = sps.gennorm.rvs(beta, loc=0.5, scale=1.7, size=60_000, random_state=int(10 * beta))
    fit = fit_generalized_gaussian(x)
    assert isinstance(fit, GeneralizedGaussianFit) and fit.converged
    assert fit.beta == pytest.approx(beta, rel=0.06)  # Monte Carlo sd about 1 % at 1.5 (40 seeds)
    assert fit.scale == pytest.approx(1.7, rel=0.06)
    assert fit.mean == pytest.approx(0.5, abs=0.05)


def test_generalized_gaussian_moment_ratio():
    from aciq.theory.stats import _log_ratio

    # the closed form at the named shapes: 1/sqrt(2) (Laplace), sqrt(2/pi) (Gauss), sqrt(3)/2 (uniform limit)
    assert np.exp(_log_ratio(1.0)) == pytest.approx(1 / np.sqrt(2), rel=1e-14)
    assert np.exp(_log_ratio(2.0)) == pytest.approx(np.sqrt(2 / np.pi), rel=1e-14)
    assert np.exp(_log_ratio(1e4)) == pytest.approx(np.sqrt(3) / 2, rel=1e-3)
    # against quadrature of the density at other shapes
    for beta in (0.6, 1.5, 3.5):
        m1 = sps.gennorm.expect(np.abs, args=(beta,))
        m2 = sps.gennorm.expect(np.square, args=(beta,))
        assert np.exp(_log_ratio(beta)) == pytest.approx(m1 / np.sqrt(m2), rel=1e-8)
    betas = np.linspace(0.1, 20, 200)
    assert np.all(np.diff(_log_ratio(betas)) > 0)  # increasing: one root


def test_generalized_gaussian_per_channel_and_degenerate_channels():
    rng = np.random.default_rng(3)
    x = np.stack([rng.laplace(size=30_000), rng.normal(size=30_000), np.full(30_000, 1.25),
                  np.tile([-1.0, 1.0], 15_000)], axis=1)  # channels on axis 1
    fit = fit_generalized_gaussian(x, axis=1)
    assert fit.beta[0] == pytest.approx(1.0, rel=0.06) and fit.beta[1] == pytest.approx(2.0, rel=0.06)
    assert fit.converged.tolist() == [True, True, False, False]
    assert fit.scale[2] == 0.0 and fit.beta[2] == 2.0  # constant channel
    assert fit.beta[3] == 50.0  # two points: flatter than the uniform, at the bracket end
    assert np.all(np.isfinite(fit.scale))


# --------------------------------------------------------------------------- choose_prior
def test_choose_prior_per_tensor():
    rng = np.random.default_rng(4)
    lap = choose_prior(rng.laplace(size=50_000), bits=4)
    gau = choose_prior(rng.normal(size=50_000), bits=4)
    assert isinstance(lap, PriorChoice) and lap.method == "empirical"
    assert lap.prior == "laplace" and gau.prior == "gauss"
    assert lap.mse == min(lap.errors.values()) and gau.alpha == gau.alphas["gauss"]
    # the alphas are ACIQ's constants times the estimated scales
    assert lap.alphas["laplace"] == pytest.approx(5.02864 * lap.scales["laplace"], rel=1e-5)
    assert gau.alphas["gauss"] == pytest.approx(2.55914 * gau.scales["gauss"], rel=1e-5)


def test_choose_prior_errors_are_the_measured_mse():
    from aciq.theory.grids import quantize

    rng = np.random.default_rng(5)
    x = rng.laplace(loc=1.5, size=20_000)
    res = choose_prior(x, bits=3, grid="gemmlowp")
    m = x.mean()
    for prior in ("laplace", "gauss"):
        x_hat = m + quantize(x - m, alpha=res.alphas[prior], bits=3, grid="gemmlowp")
        assert res.errors[prior] == pytest.approx(np.mean((x - x_hat) ** 2), rel=1e-12)


def test_choose_prior_per_channel_picks_each_channel():
    rng = np.random.default_rng(6)
    n, c = 4_000, 6
    x = np.empty((n, c))  # [N, C]: channel axis 1
    for j in range(c):
        x[:, j] = (rng.laplace if j % 2 == 0 else rng.normal)(size=n) * (j + 1)
    x[:, 5] = 3.0  # a constant channel
    res = choose_prior(x, bits=4, axis=1)
    assert res.prior.tolist() == ["laplace", "gauss", "laplace", "gauss", "laplace", "laplace"]
    assert res.alpha[5] == 0.0 and res.mse[5] == 0.0 and res.scales["gauss"][5] == 0.0
    assert np.all(np.isfinite(res.mse)) and np.allclose(res.mse, np.minimum(*res.errors.values()))
    # each channel's choice equals the choice on that channel alone
    for j in range(5):
        assert choose_prior(x[:, j], bits=4).errors == pytest.approx({k: v[j] for k, v in res.errors.items()})


def test_choose_prior_half_range():
    rng = np.random.default_rng(9)
    x = np.maximum(rng.laplace(size=40_000), 0.0)  # post-ReLU
    res = choose_prior(x, bits=4, half_range=True)
    assert res.half_range and all(np.isfinite(v) and v > 0 for v in res.errors.values())
    assert res.mse < np.var(x)  # better than a single level
    # a fused ReLU: pre-ReLU data, window [0, max(mean, 0) + alpha], error against max(x, 0)
    from aciq.theory.grids import quantize

    z = rng.laplace(loc=0.5, size=20_000)
    fused = choose_prior(z, bits=4, half_range=True, grid="gemmlowp")
    a = fused.alphas["laplace"] + z.mean()
    x_hat = quantize(z, alpha=a, bits=4, grid="gemmlowp", half_range=True)
    assert fused.errors["laplace"] == pytest.approx(np.mean((np.maximum(z, 0) - x_hat) ** 2), rel=1e-12)


def test_choose_prior_predicted_method():
    from aciq.theory import grids

    if not hasattr(grids, "exact_mse"):
        pytest.skip("grids.exact_mse is not available")
    rng = np.random.default_rng(10)
    x = rng.laplace(scale=2.0, size=10_000)
    res = choose_prior(x, bits=4, method="predicted")
    assert res.method == "predicted"
    for prior in ("laplace", "gauss"):
        expected = grids.exact_mse(res.alphas[prior], prior=prior, bits=4, grid="midrise",
                                   scale=res.scales[prior])
        assert res.errors[prior] == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("prior, sampler", [("laplace", "laplace"), ("gauss", "normal")])
def test_measured_error_agrees_with_the_exact_error_when_the_prior_is_right(prior, sampler):
    n = 200_000
    x = getattr(np.random.default_rng(11), sampler)(size=n)
    emp = choose_prior(x, bits=3, grid="midrise")
    pred = choose_prior(x, bits=3, grid="midrise", method="predicted")
    assert emp.prior == prior  # (pred.prior need not be: each prior grades itself, see the docstring)
    # same alphas; the measured error is a Monte Carlo estimate of the exact one (a few % at n = 2e5)
    assert emp.alphas == pred.alphas
    assert emp.errors[prior] == pytest.approx(pred.errors[prior], rel=0.03)


@pytest.mark.parametrize("kwargs, name", [
    (dict(bits=0), "bits"),
    (dict(bits=2.5), "bits"),
    (dict(bits=float("nan")), "bits"),
    (dict(bits=4, grid="model"), "grid"),
    (dict(bits=4, method="oracle"), "method"),
    (dict(bits=4, axis=3), "axis"),
])
def test_choose_prior_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        choose_prior(np.arange(10.0), **kwargs)
