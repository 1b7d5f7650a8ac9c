"""Empirical error: the estimator itself, and seeded Monte Carlo of every grid against the exact MSE."""
import numpy as np
import pytest

from aciq.theory import empirical, grids

PRIORS = ("laplace", "gauss")
# a clipping value near each grid's optimum, in units of the scale (Laplace b, Gauss sigma), per bits
ALPHA = {"laplace": [1.5, 3.0, 3.9, 5.0, 6.2, 7.4, 8.6, 9.9], "gauss": [1.0, 1.7, 2.15, 2.55, 2.95, 3.3, 3.6, 3.9]}
CASES = [(p, g, m, h) for p in PRIORS for g in grids.QUANTIZER_GRIDS for m in range(1, 9) for h in (False, True)
         if not (g == "symmetric" and m == 1 and not h)]


@pytest.mark.parametrize("prior, grid, bits, half_range", CASES)
def test_monte_carlo_agrees_with_the_exact_mse(prior, grid, bits, half_range):
    """Near the optimum at many bits the squared error is heavy-tailed (rare clipped values carry
    much of the mean), so the mean of a small sample is skewed low: take 10^6 draws there."""
    alpha = 1.3 * ALPHA[prior][bits - 1]
    n = 200_000 if bits <= 5 else 1_000_000
    mc = empirical.monte_carlo_mse(prior=prior, alpha=alpha, bits=bits, grid=grid, scale=1.3, n=n,
                                   seed=bits, half_range=half_range)
    exact = grids.exact_mse(alpha, prior=prior, bits=bits, grid=grid, scale=1.3, half_range=half_range)
    assert mc.n == n
    assert abs(mc.mse - exact) < 4 * mc.stderr


def test_empirical_mse_by_hand():
    x = np.array([[0.1, 0.4], [-0.3, 2.0]])
    res = empirical.empirical_mse(x, np.round)
    err = np.array([0.01, 0.16, 0.09, 0.0])
    assert res.n == 4
    assert res.mse == pytest.approx(err.mean(), rel=1e-14)
    assert res.stderr == pytest.approx(err.std(ddof=1) / 2, rel=1e-14)


def test_empirical_mse_of_one_value_has_no_standard_error():
    res = empirical.empirical_mse([0.3], lambda v: v * 0)
    assert res.mse == pytest.approx(0.09) and np.isnan(res.stderr) and res.n == 1


def test_empirical_mse_with_grid_quantizer_on_a_real_array():
    x = np.random.default_rng(0).standard_t(4, size=50_000)
    res = empirical.empirical_mse(x, lambda v: grids.quantize(v, alpha=4.0, bits=4, grid="symmetric"))
    direct = np.mean((x - grids.quantize(x, alpha=4.0, bits=4, grid="symmetric")) ** 2)
    assert res.mse == pytest.approx(direct, rel=1e-14)
    assert 0 < res.stderr < res.mse


def test_monte_carlo_is_seeded():
    kw = dict(prior="laplace", alpha=3.0, bits=3, grid="gemmlowp", n=20_000)
    assert empirical.monte_carlo_mse(**kw, seed=1) == empirical.monte_carlo_mse(**kw, seed=1)
    assert empirical.monte_carlo_mse(**kw, seed=1).mse != empirical.monte_carlo_mse(**kw, seed=2).mse


def test_standard_error_shrinks_like_one_over_root_n():
    kw = dict(prior="gauss", alpha=4.0, bits=3, grid="midrise")  # hardly any clipping: light tails
    small = empirical.monte_carlo_mse(**kw, n=10_000)
    big = empirical.monte_carlo_mse(**kw, n=160_000)
    assert small.stderr / big.stderr == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("call, name", [
    (lambda: empirical.empirical_mse([], np.round), "x"),
    (lambda: empirical.empirical_mse([1.0, np.nan], np.round), "x"),
    (lambda: empirical.empirical_mse([1.0, np.inf], np.round), "x"),
    (lambda: empirical.empirical_mse([1.0, 2.0], "round"), "quantizer"),
    (lambda: empirical.empirical_mse([1.0, 2.0], lambda v: v[:1]), "quantizer"),
    (lambda: empirical.monte_carlo_mse(prior="gauss", alpha=1.0, bits=2, grid="model"), "model_mse"),
    (lambda: empirical.monte_carlo_mse(prior="gauss", alpha=1.0, bits=1, grid="symmetric"), "bits"),
    (lambda: empirical.monte_carlo_mse(prior="gauss", alpha=0.0, bits=2, grid="midrise"), "alpha"),
    (lambda: empirical.monte_carlo_mse(prior="gauss", alpha=1.0, bits=2, grid="midrise", n=0), "n"),
    (lambda: empirical.monte_carlo_mse(prior="gamma", alpha=1.0, bits=2, grid="midrise"), "prior"),
    (lambda: empirical.monte_carlo_mse(prior="gauss", alpha=1.0, bits=2, grid="midrise", scale=0), "scale"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
