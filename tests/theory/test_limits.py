"""Reference limits: Lloyd-Max (published tables, closed forms, optimality conditions, high-rate
asymptotics), rate-distortion (closed form, entropy route, Blahut-Arimoto) and SQNR."""
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from aciq.theory import grids, limits

PRIORS = ("laplace", "gauss")
DIST = {"laplace": stats.laplace, "gauss": stats.norm}


# --------------------------------------------------------------------------- Lloyd-Max
# J. Max, "Quantizing for minimum distortion", IRE Trans. Inform. Theory 6(1), 1960, table I
# (unit-variance Gaussian, N = 2, 4, 8, 16 levels). N = 2 is exactly 1 - 2/pi.
MAX_1960 = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}


@pytest.mark.parametrize("bits, mse", MAX_1960.items())
def test_gauss_lloyd_max_matches_max_1960(bits, mse):
    res = limits.lloyd_max(prior="gauss", bits=bits)
    assert res.converged
    assert res.mse == pytest.approx(mse, rel=5e-4)  # Max's 16-level entry is 0.009497, we get 0.0095010


def test_gauss_lloyd_max_levels_match_max_1960():
    res = limits.lloyd_max(prior="gauss", bits=2)
    np.testing.assert_allclose(res.levels, [-1.510, -0.4528, 0.4528, 1.510], atol=6e-4)
    np.testing.assert_allclose(res.thresholds, [-0.9816, 0.0, 0.9816], atol=6e-4)
    assert limits.lloyd_max(prior="gauss", bits=1).mse == pytest.approx(1 - 2 / np.pi, rel=1e-13)


def test_laplace_lloyd_max_one_bit_is_b_squared():
    """Levels +-b (E[X | X > 0] = b), MSE = E X^2 - b^2 = 2b^2 - b^2 = b^2 (0.5 of the variance)."""
    res = limits.lloyd_max(prior="laplace", bits=1, scale=3.0)
    np.testing.assert_allclose(res.levels, [-3.0, 3.0], rtol=1e-13)
    assert res.mse == pytest.approx(9.0, rel=1e-13)


def test_laplace_lloyd_max_two_bits_by_a_scalar_equation():
    """Second route: thresholds {0, +-t}; the outer centroid is t + b (memoryless), the inner
    y1 = 1 - t e^-t / (1 - e^-t); t = (y1 + y2)/2 is one equation for t."""
    def inner(t):
        return 1 - t * np.exp(-t) / (1 - np.exp(-t))

    t = optimize.brentq(lambda t: t - 0.5 * (inner(t) + t + 1), 0.1, 5, xtol=1e-15)
    y1, y2 = inner(t), t + 1
    f = DIST["laplace"].pdf
    mse = 2 * (integrate.quad(lambda x: (x - y1) ** 2 * f(x), 0, t, epsabs=0, epsrel=1e-13)[0]
               + integrate.quad(lambda x: (x - y2) ** 2 * f(x), t, np.inf, epsabs=0, epsrel=1e-13)[0])
    res = limits.lloyd_max(prior="laplace", bits=2)
    np.testing.assert_allclose(res.levels, [-y2, -y1, y1, y2], rtol=1e-9)
    assert res.mse == pytest.approx(mse, rel=1e-9)
    # Paez & Glisson (1972), IEEE Trans. Commun. 20(2), table I: unit-variance Laplacian, N = 4: 0.1765
    assert res.mse / 2 == pytest.approx(0.1765, rel=2e-3)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("bits", [2, 3, 5])
def test_lloyd_max_satisfies_the_optimality_conditions(prior, bits):
    res = limits.lloyd_max(prior=prior, bits=bits, scale=2.0)
    f = DIST[prior](scale=2.0).pdf
    np.testing.assert_allclose(res.thresholds, 0.5 * (res.levels[1:] + res.levels[:-1]), atol=1e-12)
    lo = np.concatenate([[-np.inf], res.thresholds])
    hi = np.concatenate([res.thresholds, [np.inf]])
    for a, b, level in zip(lo, hi, res.levels):
        m0 = integrate.quad(f, a, b, epsabs=1e-14)[0]
        m1 = integrate.quad(lambda x: x * f(x), a, b, epsabs=1e-14)[0]
        assert level == pytest.approx(m1 / m0, abs=1e-7)


@pytest.mark.parametrize("prior", PRIORS)
def test_lloyd_max_beats_every_uniform_grid_and_falls_with_bits(prior):
    mses = []
    for bits in range(1, 9):
        res = limits.lloyd_max(prior=prior, bits=bits)
        assert res.converged and res.iterations < 50
        for grid in ("midrise", "gemmlowp"):  # 2^M levels, like Lloyd-Max
            assert res.mse <= grids.optimal_alpha_exact(prior=prior, bits=bits, grid=grid).mse * (1 + 1e-12)
        assert res.mse > limits.rate_distortion(bits, prior=prior)
        mses.append(res.mse)
    assert np.all(np.diff(mses) < 0)


@pytest.mark.parametrize("prior, constant", [("gauss", np.sqrt(3) * np.pi / 2), ("laplace", 9.0)])
def test_lloyd_max_reaches_the_panter_dite_constant(prior, constant):
    """High rate: MSE 4^M -> (1/12) (integral f^(1/3))^3 (Panter & Dite 1951): sqrt(3) pi/2 for the
    unit Gaussian, 9 b^2 for Laplace (4.5 of its variance)."""
    got = [limits.lloyd_max(prior=prior, bits=m).mse * 4.0**m for m in (6, 10, 14)]
    errors = [abs(g / constant - 1) for g in got]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 2e-3


def test_lloyd_max_scale_law():
    one = limits.lloyd_max(prior="gauss", bits=3)
    res = limits.lloyd_max(prior="gauss", bits=3, scale=0.25)
    np.testing.assert_allclose(res.levels, 0.25 * one.levels, rtol=1e-12)
    assert res.mse == pytest.approx(one.mse / 16, rel=1e-12)


def test_lloyd_max_reports_non_convergence():
    res = limits.lloyd_max(prior="laplace", bits=6, max_iter=1, tol=1e-14)
    assert not res.converged and res.iterations == 1


# --------------------------------------------------------------------------- rate distortion
def test_gauss_rate_distortion_is_exact():
    rates = np.array([0.0, 0.5, 1.0, 4.0])
    np.testing.assert_allclose(limits.rate_distortion(rates, prior="gauss", scale=3.0), 9.0 * 4.0**-rates,
                               rtol=1e-15)
    assert limits.RATE_DISTORTION_KIND == {"gauss": "exact", "laplace": "shannon lower bound"}


@pytest.mark.parametrize("prior", PRIORS)
def test_shannon_lower_bound_from_the_differential_entropy(prior):
    """2^(2h)/(2 pi e) 4^-R with h in bits from scipy.stats (nats / ln 2)."""
    h = DIST[prior](scale=1.7).entropy() / np.log(2)
    for rate in (0.5, 2.0, 3.0):
        want = 2 ** (2 * h) / (2 * np.pi * np.e) * 4.0**-rate
        assert limits.shannon_lower_bound(rate, prior=prior, scale=1.7) == pytest.approx(want, rel=1e-12)
        assert limits.rate_distortion(rate, prior=prior, scale=1.7) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_blahut_arimoto_recovers_the_gaussian_curve(rate):
    res = limits.blahut_arimoto(rate, prior="gauss", n_points=301, scale=2.0)
    assert res.converged and res.bound <= 1e-4 * res.distortion
    # above the curve by the discretisation, dx^2/12 relative (dx = 14/301), and Blahut's bound
    dx2 = (14 / 301) ** 2 / 12
    assert 0 < res.distortion / (4.0 * 4.0**-rate) - 1 < dx2 * 1.05 + 1e-4


def test_blahut_arimoto_laplace_sits_just_above_the_shannon_lower_bound():
    """Measured (tol 1e-5, Richardson extrapolation of 301, 601 and 1201 points): D(R)/SLB - 1 =
    0.37 % at 1 bit, 0.023 % at 2 bits, below 0.002 % from 3 bits on."""
    slb = limits.shannon_lower_bound(3.0, prior="laplace")
    res = limits.blahut_arimoto(3.0, prior="laplace", n_points=301)
    assert res.converged and res.bound <= 1e-4 * res.distortion
    assert slb < res.distortion < slb * (1 + 2e-3)
    assert res.distortion < limits.lloyd_max(prior="laplace", bits=3).mse


def test_blahut_arimoto_converged_means_the_bound_is_met():
    """The stopping rule is Blahut's bound, not a small change: the answer of a converged run moves by
    less than its bound when the iteration goes on, and a run cut short says it did not converge."""
    loose = limits.blahut_arimoto(2.0, prior="laplace", n_points=151, tol=1e-3)
    tight = limits.blahut_arimoto(2.0, prior="laplace", n_points=151, tol=1e-5, max_inner=10**6)
    assert loose.converged and tight.converged
    assert loose.bound <= 1e-3 * loose.distortion and tight.bound <= 1e-5 * tight.distortion
    assert tight.distortion <= loose.distortion + 1e-12  # both approach the curve from above (up to
    assert loose.distortion - tight.distortion <= loose.bound + 1e-6 * tight.distortion  # the tangent step)
    cut = limits.blahut_arimoto(2.0, prior="laplace", n_points=151, tol=1e-5, max_inner=50)
    assert not cut.converged and cut.bound > 1e-5 * cut.distortion


# --------------------------------------------------------------------------- SQNR
def test_to_db():
    assert limits.to_db(0.01, prior="gauss") == pytest.approx(20.0, rel=1e-14)
    assert limits.to_db(0.02, prior="laplace") == pytest.approx(20.0, rel=1e-14)  # variance 2 b^2
    assert limits.to_db(8.0, prior="laplace", scale=2.0) == pytest.approx(0.0, abs=1e-14)
    per_bit = np.diff(limits.to_db(limits.rate_distortion(np.arange(1, 5), prior="gauss"), prior="gauss"))
    np.testing.assert_allclose(per_bit, 20 * np.log10(2), rtol=1e-12)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, name", [
    (lambda: limits.lloyd_max(prior="cauchy", bits=2), "prior"),
    (lambda: limits.lloyd_max(prior="gauss", bits=0), "bits"),
    (lambda: limits.lloyd_max(prior="gauss", bits=2.5), "bits"),
    (lambda: limits.lloyd_max(prior="gauss", bits=17), "bits"),
    (lambda: limits.lloyd_max(prior="gauss", bits=2, scale=0), "scale"),
    (lambda: limits.lloyd_max(prior="gauss", bits=2, tol=-1), "tol"),
    (lambda: limits.lloyd_max(prior="gauss", bits=2, max_iter=0), "max_iter"),
    (lambda: limits.rate_distortion(-1.0, prior="gauss"), "rate"),
    (lambda: limits.rate_distortion(np.nan, prior="laplace"), "rate"),
    (lambda: limits.rate_distortion(1.0, prior="laplace", scale=-2), "scale"),
    (lambda: limits.blahut_arimoto(0.0, prior="gauss"), "rate"),
    (lambda: limits.blahut_arimoto(1.0, prior="gauss", n_points=2), "n_points"),
    (lambda: limits.blahut_arimoto(1.0, prior="gauss", tol=0.0), "tol"),
    (lambda: limits.blahut_arimoto(1.0, prior="gauss", max_inner=0), "max_inner"),
    (lambda: limits.to_db(0.0, prior="gauss"), "mse"),
    (lambda: limits.to_db(0.1, prior="uniform"), "prior"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
