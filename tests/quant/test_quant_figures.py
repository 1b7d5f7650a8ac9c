"""aciq.quant.figures: the seed's bias-error figure for any model, its numbers checked by an independent
quantizer, and ``aciq model-figures`` with its errors."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from aciq.quant import fold_batchnorm
from aciq.quant.figures import bias_error_data, bias_error_figure
from aciq.theory.cli import main


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1),
                        nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.3, 3)
    return net.eval()


def reference_grid(rows: np.ndarray, bits: int):
    """The gemmlowp min/max grid written out (window [min(lo,0), max(hi,0)], rounded zero point, clamped)."""
    lo, hi = np.minimum(rows.min(1), 0), np.maximum(rows.max(1), 0)
    qmax = 2 ** bits - 1
    step = (hi - lo) / qmax
    z = np.clip(np.rint(-lo / step), 0, qmax)
    q = np.clip(np.rint(rows / step[:, None]) + z[:, None], 0, qmax)
    return step, (q - z[:, None]) * step[:, None]


def test_numbers_match_an_independent_quantizer():
    net = small_net()
    x = torch.randn(1, 3, 6, 6)
    data = bias_error_data(net, x, weight_bits=4)
    assert data.layers == ("0", "3") and data.step.shape == (13,)
    ref = copy.deepcopy(net)
    fold_batchnorm(ref, x)                                         # the figure shows the folded weights
    rows = [ref[0].weight.detach().double().flatten(1).numpy(), ref[3].weight.detach().double().flatten(1).numpy()]
    step = np.concatenate([reference_grid(r, 4)[0] for r in rows])
    err = np.concatenate([(r - reference_grid(r, 4)[1]).mean(1) for r in rows])
    mean = np.concatenate([np.abs(r.mean(1)) for r in rows])
    np.testing.assert_allclose(data.step, step, rtol=1e-12)
    # the quantized weights are stored in float32, as the quantized model runs them: ~1e-7 bins of rounding
    np.testing.assert_allclose(data.error_before, err / step, atol=1e-6)
    np.testing.assert_allclose(data.mean_bins, mean / step, rtol=1e-9)
    assert np.abs(data.error_before).max() <= 0.5 + 1e-6          # mean rounding error: at most half a bin
    assert np.abs(data.error_before).max() > 0.01
    assert np.abs(data.error_after).max() < 1e-6                   # mean correction removes it (float32 left)
    assert isinstance(net[1], nn.BatchNorm2d)                      # the model itself is left untouched


def test_linear_layers_on_request_and_the_figure_shows_the_data():
    net = small_net()
    data = bias_error_data(net, torch.randn(1, 3, 6, 6), weight_bits=3, include_linear=True, title="tiny")
    assert data.layers == ("0", "3", "5") and np.array_equal(np.bincount(data.layer_index), [8, 5, 3])
    fig = bias_error_figure(data)
    top, bottom = fig.axes
    np.testing.assert_array_equal(top.lines[0].get_ydata(), data.mean_bins)
    np.testing.assert_array_equal(bottom.lines[0].get_ydata(), np.abs(data.error_before))
    np.testing.assert_array_equal(bottom.lines[1].get_ydata(), np.abs(data.error_after))
    assert "tiny" in top.get_title() and "3-bit" in top.get_title()


def test_mean_and_variance_correction_also_zeroes_the_mean_error():
    data = bias_error_data(small_net(), torch.randn(1, 3, 6, 6), correction="mean+variance")
    assert np.abs(data.error_after).max() < 1e-6
    with pytest.raises(ValueError, match="correction must be"):
        bias_error_data(small_net(), torch.randn(1, 3, 6, 6), correction="median")


def test_model_without_conv_is_an_error():
    with pytest.raises(ValueError, match="no Conv2d layer"):
        bias_error_data(nn.Sequential(nn.Linear(4, 2)).eval(), torch.randn(1, 4))


def test_cli_writes_the_embedded_model_figure(tmp_path, capsys):
    assert main(["model-figures", "--model", "resnet20_fmnist", "--out", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "bias-error-resnet20-fmnist.png"
    assert path.is_file() and path.stat().st_size > 10_000 and str(path) in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet9000"], "--model: 'resnet9000' is not one of"),
    (["--model", "resnet20_fmnist", "--weights", "/no/such/file.pt"], "weights /no/such/file.pt do not exist"),
    (["--model", "resnet20_fmnist", "efficientnet_lite0", "--weights", "w.pt"], "--weights needs exactly one"),
    (["--model", "resnet20_fmnist", "--weight-bits", "9"], "--weight-bits must be in 1..8"),
])
def test_cli_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["model-figures", *argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_weights_that_do_not_fit_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit):
        main(["model-figures", "--model", "resnet20_fmnist", "--weights", str(bad), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert str(bad) in err and "unexpected keys ['conv.weight']" in err
