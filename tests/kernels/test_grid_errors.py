"""aciq.kernels.errors: the squared error on many grids in one pass equals quantizing on each grid in turn."""
import numpy as np
import pytest

from aciq.kernels.errors import CHUNK, grid_errors


def _reference(x, scale, zp, qmax, half):
    """Quantize-dequantize with numpy, one grid at a time, in x's dtype (torch's FakeQuant arithmetic)."""
    dt = x.dtype.type
    s, z, m = dt(scale), dt(zp), dt(qmax)
    r = (x / s).astype(x.dtype)
    r = np.floor(r) + dt(0.5) if half else np.rint(r)
    q = np.minimum(np.maximum(r + z, dt(0)), m)
    e = ((q - z) * s - x).astype(x.dtype)
    return float(np.sum((e * e).astype(np.float64)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_tensor_matches_one_grid_at_a_time(dtype):
    rng = np.random.default_rng(0)
    x = (rng.laplace(size=CHUNK * 2 + 123) * 1.7).astype(dtype)     # several chunks and a ragged one
    scale = np.linspace(0.05, 0.9, 9)
    zp = np.array([7, 8, 7.5, 0, 15, 3.5, 8, 8, 1])
    qmax = np.array([15, 15, 15, 15, 15, 7, 255, 3, 1])
    half = zp % 1 != 0
    got = grid_errors(x, scale, zp, qmax, half)
    want = [_reference(x, *g) for g in zip(scale, zp, qmax, half)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_per_channel_rows_are_independent_and_match():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3001)).astype(np.float32) * np.float32([[0.1], [1], [3], [10], [0.01]])
    k = 4
    scale = np.abs(rng.standard_normal((k, 5))) * 0.2 + 0.01
    zp = rng.integers(0, 16, (k, 5)).astype(np.float64)
    zp[1, 2] += 0.5
    qmax = np.full((k, 5), 15)
    got = grid_errors(x, scale, zp, qmax, zp % 1 != 0)
    assert got.shape == (5, k)
    for c in range(5):
        for j in range(k):
            assert got[c, j] == pytest.approx(_reference(x[c], scale[j, c], zp[j, c], qmax[j, c], zp[j, c] % 1 != 0),
                                              rel=1e-12)
    # one row alone gives that row's sums
    np.testing.assert_allclose(grid_errors(x[2:3], scale[:, 2:3], zp[:, 2:3], qmax[:, 2:3], zp[:, 2:3] % 1 != 0),
                               got[2:3], rtol=1e-15)


def test_a_grid_that_fits_every_value_has_no_error():
    x = np.float32([0.0, 0.5, 1.0, 1.5, -2.0])
    assert grid_errors(x, [0.5], [4.0], [15], [False])[0] == 0.0


def test_bad_input_is_named():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="float32 or float64"):
        grid_errors(np.zeros(4, np.int32), [1.0], [0.0], [1], [False])
    with pytest.raises(ValueError, match="one shape"):
        grid_errors(x, [1.0, 2.0], [0.0], [1], [False])
    with pytest.raises(ValueError, match="scale must be > 0"):
        grid_errors(x, [0.0], [0.0], [1], [False])
    with pytest.raises(ValueError, match=r"\(C=2, n\)"):
        grid_errors(x, [[1.0, 1.0]], [[0.0, 0.0]], [[1, 1]], [[False, False]])
