"""Bias and variance correction (eq. 12, 13): what each form restores, the affine form, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aciq.theory.bias import BiasStats, CorrectionTerms, channel_bias, correct_bias, correction_terms

COMBOS = [(mode, form) for mode in ("mean", "mean+variance") for form in ("seed", "paper")]


def fake_quantize(w, bits=3, axis=0):
    """Test data: symmetric per-tensor rounding, clipped at 2 std (shifts means, shrinks spreads)."""
    alpha = 2 * np.std(w)
    step = 2 * alpha / 2**bits
    return np.clip(np.round(w / step) * step, -alpha, alpha)


@pytest.fixture
def conv():
    rng = np.random.default_rng(0)
    w = rng.laplace(size=(16, 8, 3, 3)) * rng.uniform(0.2, 2.0, size=(16, 1, 1, 1))
    w += rng.normal(scale=0.3, size=(16, 1, 1, 1))  # channel means far from zero
    return w, fake_quantize(w)


def per_channel(x, fn):
    return np.array([fn(row) for row in x.reshape(x.shape[0], -1)])


def test_channel_bias_matches_a_direct_computation(conv):
    w, w_q = conv
    stats = channel_bias(w, w_q)
    assert isinstance(stats, BiasStats) and stats.mu.shape == stats.xi.shape == (16,)
    assert np.allclose(stats.mu, per_channel(w, np.mean) - per_channel(w_q, np.mean), atol=1e-15)
    # the seed's std ratio (unbiased std) is the same number as the norm ratio of eq. 12
    seed_xi = per_channel(w, lambda r: np.std(r, ddof=1)) / per_channel(w_q, lambda r: np.std(r, ddof=1))
    assert np.allclose(stats.xi, seed_xi, rtol=1e-12)
    assert np.abs(stats.xi - 1).max() > 0.1  # quantization really changes the spreads


@pytest.mark.parametrize("form", ["seed", "paper"])
def test_mean_correction_restores_every_channel_mean(conv, form):
    w, w_q = conv
    fixed = correct_bias(w, w_q, mode="mean", form=form)
    assert fixed.shape == w.shape
    assert np.allclose(per_channel(fixed, np.mean), per_channel(w, np.mean), atol=1e-14)
    assert np.allclose(fixed - w_q, channel_bias(w, w_q).mu[:, None, None, None])  # a pure shift
    # the point of it: for inputs with a common mean, the expected output error vanishes
    err = (w - fixed).reshape(16, -1) @ np.ones(8 * 9)
    assert np.allclose(err, 0, atol=1e-12)
    assert np.abs((w - w_q).reshape(16, -1) @ np.ones(8 * 9)).max() > 0.1


def test_seed_form_restores_mean_and_norm(conv):
    w, w_q = conv
    fixed = correct_bias(w, w_q, mode="mean+variance", form="seed")
    assert np.allclose(per_channel(fixed, np.mean), per_channel(w, np.mean), atol=1e-14)
    assert np.allclose(per_channel(fixed, np.std), per_channel(w, np.std), rtol=1e-12)


def test_paper_form_mean_error_is_xi_minus_one_times_the_mean(conv):
    w, w_q = conv
    stats = channel_bias(w, w_q)
    fixed = correct_bias(w, w_q, mode="mean+variance", form="paper")
    mean_error = per_channel(fixed, np.mean) - per_channel(w, np.mean)
    assert np.allclose(mean_error, (stats.xi - 1) * per_channel(w, np.mean), atol=1e-13)
    assert np.abs(mean_error).max() > 1e-3  # really off: eq. 13 as printed does not keep the mean
    # ... while its spread is restored like the seed's (scaling after a shift)
    assert np.allclose(per_channel(fixed, np.std), per_channel(w, np.std), rtol=1e-12)
    # and it is eq. 13 literally: xi * (w_q + mu)
    assert np.allclose(fixed, stats.xi[:, None, None, None] * (w_q + stats.mu[:, None, None, None]))


@pytest.mark.parametrize("mode, form", COMBOS)
def test_affine_terms_reproduce_correct_bias(conv, mode, form):
    w, w_q = conv
    terms = correction_terms(w, w_q, mode=mode, form=form)
    assert isinstance(terms, CorrectionTerms) and terms.scale_factor.shape == terms.offset.shape == (16,)
    expected = correct_bias(w, w_q, mode=mode, form=form)
    rebuilt = terms.scale_factor[:, None, None, None] * w_q + terms.offset[:, None, None, None]
    assert np.allclose(rebuilt, expected, atol=1e-14)
    # on-grid: with w_q = step * codes, the corrected weights are (scale_factor * step) * codes + offset
    if mode == "mean":
        assert np.all(terms.scale_factor == 1)


def test_mean_only_forms_agree(conv):
    w, w_q = conv
    assert np.array_equal(correct_bias(w, w_q, form="seed"), correct_bias(w, w_q, form="paper"))


@pytest.mark.parametrize("mode, form", COMBOS)
def test_linear_weights_and_other_axes(mode, form):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(10, 33)) + rng.normal(size=(10, 1))
    w_q = fake_quantize(w)
    fixed = correct_bias(w, w_q, mode=mode, form=form)
    assert fixed.shape == (10, 33)
    # the channel axis can be anywhere: transposing the input transposes the output
    assert np.allclose(correct_bias(w.T, w_q.T, mode=mode, form=form, axis=1), fixed.T)
    assert np.allclose(correct_bias(w.T, w_q.T, mode=mode, form=form, axis=-1), fixed.T)
    w4 = rng.normal(size=(4, 6, 3, 3))
    w4_q = fake_quantize(w4)
    moved = correct_bias(np.moveaxis(w4, 1, 0), np.moveaxis(w4_q, 1, 0), mode=mode, form=form)
    assert np.allclose(correct_bias(w4, w4_q, mode=mode, form=form, axis=1), np.moveaxis(moved, 0, 1))
    # a 1-D tensor: every element is its own channel, already exact after the mean shift
    v = np.array([0.3, -1.2, 2.0])
    assert np.allclose(correct_bias(v, np.round(v), mode=mode, form=form), v)


def test_zero_range_channels():
    w = np.array([[0.2, 0.2, 0.2, 0.2],     # constant, quantized to a constant
                  [0.1, 0.4, -0.3, 0.9],    # quantized to a constant: xi := 1
                  [0.5, 0.5, 0.5, 0.5],     # constant, quantized to something that is not
                  [1.0, -1.0, 2.0, 0.0]])
    w_q = np.array([[0.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0],
                    [0.0, 1.0, 0.0, 1.0],
                    [1.0, -1.0, 2.0, 0.0]])
    stats = channel_bias(w, w_q)
    assert np.all(np.isfinite(stats.mu)) and np.all(np.isfinite(stats.xi))
    assert stats.xi.tolist() == [1.0, 1.0, 0.0, 1.0]
    for mode, form in COMBOS:
        fixed = correct_bias(w, w_q, mode=mode, form=form)
        assert np.all(np.isfinite(fixed))
        assert np.allclose(fixed[0], 0.2) and np.allclose(fixed[1], 0.275)  # mean restored
        assert np.allclose(fixed[3], w[3])  # nothing to correct
    assert np.allclose(correct_bias(w, w_q, mode="mean+variance")[2], 0.5)  # spread removed too
    assert np.allclose(correct_bias(w, w_q, mode="mean")[2], [0.0, 1.0, 0.0, 1.0])


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=6),
                  elements=st.floats(-10, 10, allow_subnormal=False)),
       st.integers(2, 6))
def test_seed_form_invariants(w, bits):
    w_q = fake_quantize(w, bits=bits) if np.std(w) > 0 else np.zeros_like(w)
    fixed = correct_bias(w, w_q, mode="mean+variance")
    assert np.all(np.isfinite(fixed))
    assert np.allclose(per_channel(fixed, np.mean), per_channel(w, np.mean), atol=1e-9)
    stats = channel_bias(w, w_q)
    ok = per_channel(w_q, np.ptp) > 0  # where the quantized channel has a spread, it is restored
    assert np.allclose(per_channel(fixed, np.std)[ok], per_channel(w, np.std)[ok], rtol=1e-9, atol=1e-9)
    assert np.all(stats.xi >= 0)


@pytest.mark.parametrize("call, name", [
    (lambda: channel_bias(np.ones((2, 3)), np.ones((3, 2))), "w_q"),
    (lambda: correct_bias(np.ones((2, 3)), np.ones((2, 3, 1))), "w_q"),
    (lambda: channel_bias([[1.0, np.nan]], [[1.0, 0.0]]), "w"),
    (lambda: channel_bias([[1.0, 2.0]], [[np.inf, 0.0]]), "w_q"),
    (lambda: channel_bias([], []), "w"),
    (lambda: channel_bias(1.0, 1.0), "w"),
    (lambda: channel_bias(np.ones((2, 3)), np.ones((2, 3)), axis=2), "axis"),
    (lambda: channel_bias(np.ones((2, 3)), np.ones((2, 3)), axis=0.5), "axis"),
    (lambda: correct_bias(np.ones((2, 3)), np.ones((2, 3)), mode="variance"), "mode"),
    (lambda: correction_terms(np.ones((2, 3)), np.ones((2, 3)), form="eq13"), "form"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
