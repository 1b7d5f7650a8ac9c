"""aciq.quant.observe: exact statistics, batch-split invariance, and the JSON + npz statistics file."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from aciq.quant import Statistics, collect_statistics, preset, quantize
from aciq.quant.observe import FORMAT_VERSION, Observer


def observe(batches, bins=64):
    obs = Observer("site", hist_bins=bins)
    for phase in (1, 2):
        obs.phase = phase
        for x in batches:
            assert obs(x) is x                      # returns its input unchanged
    return obs.stats


def test_moments_equal_numpy():
    rng = np.random.default_rng(0)
    x = rng.laplace(size=(6, 5, 4, 3)) * np.array([0.5, 1, 2, 3, 4])[None, :, None, None] + 0.3
    s = observe([torch.from_numpy(x)])
    rows = np.moveaxis(x, 1, 0).reshape(5, -1)
    np.testing.assert_allclose(s.mean, rows.mean(1), rtol=1e-12)
    np.testing.assert_allclose(s.std, rows.std(1, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(s.b, np.abs(rows - rows.mean(1, keepdims=True)).mean(1), rtol=1e-12)
    np.testing.assert_array_equal(s.min, rows.min(1))
    np.testing.assert_array_equal(s.max, rows.max(1))
    pos = [r[r > 0] for r in rows]
    np.testing.assert_allclose(s.b_pos, [p.mean() for p in pos], rtol=1e-12)
    np.testing.assert_allclose(s.sigma_pos, [np.sqrt((p ** 2).mean()) for p in pos], rtol=1e-12)
    assert s.hist_abs.sum() == x.size and s.hist_pos.sum() == (x > 0).sum()
    t = s.tensor()
    assert t.channels == 1
    np.testing.assert_allclose(t.mean, [x.mean()], rtol=1e-12)
    np.testing.assert_allclose(t.std, [x.std(ddof=1)], rtol=1e-10)
    np.testing.assert_allclose(t.b, [np.abs(x - x.mean()).mean()], rtol=1e-12)


def test_batch_split_gives_the_same_statistics():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(32, 4, 3, 3)) * 2 + 1).float()
    whole = observe([x])
    for size in (1, 5, 8):
        split = observe(list(torch.split(x, size)))
        for k in ("n", "min", "max", "n_pos", "hist_abs", "hist_pos"):
            np.testing.assert_array_equal(getattr(split, k), getattr(whole, k), err_msg=k)
        for k in ("sum", "sumsq", "sum_pos", "sumsq_pos", "absdev"):
            np.testing.assert_allclose(getattr(split, k), getattr(whole, k), rtol=1e-12, err_msg=k)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_is_named_by_site(bad):
    x = torch.zeros(2, 3, 4)
    x[1, 2, 3] = bad
    with pytest.raises(ValueError, match="site: .*NaN or Inf"):
        Observer("site")(x)


class Net(nn.Module):
    def __init__(self, width=6):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.conv2(y) + y)
        return self.fc(self.pool(y).flatten(1))


def arrays_of(stats: Statistics) -> dict:
    out = {}
    for i, (name, s) in enumerate(stats.sites.items()):
        out.update({k.replace(f"s{i}/", f"{name}/"): v for k, v in s.to_arrays(f"s{i}").items()})
    return out


@pytest.mark.parametrize("cfg", [preset("w4a4-pt-mse", mse_candidates=12),
                                 preset("w4a4-pt-mix", act_granularity=preset("w4a4-all").act_granularity),
                                 preset("seed-w4a4-all")],
                         ids=["mse", "mix-per-channel", "seed-output-site"])
def test_save_load_roundtrip(tmp_path, cfg):
    torch.manual_seed(0)
    net = Net().eval()
    calib = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    stats = collect_statistics(net, cfg, calib)
    if cfg.act_clipping in ("mse", "mix"):
        assert any(s.errors for s in stats.sites.values())
    json_path, npz_path = stats.save(tmp_path / "net-stats")
    assert json_path.name == "net-stats.json" and npz_path.name == "net-stats.npz"
    loaded = Statistics.load(tmp_path / "net-stats.json")
    assert loaded.layers == stats.layers and loaded.images == 8 and loaded.extra == json.loads(
        json.dumps(stats.extra))
    a, b = arrays_of(stats), arrays_of(loaded)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    x = torch.randn(5, 3, 6, 6)
    direct = quantize(net, cfg, calib, statistics=stats)(x)
    from_file = quantize(net, cfg, statistics=tmp_path / "net-stats", example=calib[0])(x)
    fresh = quantize(net, cfg, calib)(x)
    assert torch.equal(from_file, direct) and torch.equal(fresh, direct)


def test_statistics_of_another_model(tmp_path):
    torch.manual_seed(0)
    cfg = preset("w4a4-naive")
    calib = torch.randn(2, 3, 6, 6)
    Statistics.save(collect_statistics(Net(), cfg, calib), tmp_path / "a")
    with pytest.raises(ValueError, match=r"another model: layer conv1 has weight shape \[8, 3, 3, 3\], "
                                         r"the file says \[6, 3, 3, 3\]"):
        quantize(Net(width=8).eval(), cfg, calib, statistics=tmp_path / "a")
    other = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 16, 4)).eval()
    with pytest.raises(ValueError, match=r"statistics .*a\.json were collected on another model"):
        quantize(other, cfg, calib, statistics=tmp_path / "a")


def test_statistics_for_another_config():
    torch.manual_seed(0)
    net, calib = Net().eval(), torch.randn(2, 3, 6, 6)
    stats = collect_statistics(net, preset("w4a4-pt-mse", mse_candidates=12), calib)
    with pytest.raises(ValueError, match=r"site conv1:input: mse clipping needs the candidate errors .mse:b8:pt:full:n20. of pass 3; the statistics hold \[.mse:b8:pt:full:n12.\]"):
        quantize(net, preset("w4a4-pt-mse", mse_candidates=20), calib, statistics=stats)
    with pytest.raises(ValueError, match="statistics lack sites"):
        quantize(net, preset("seed-w4a4-naive"), calib, statistics=stats)
    with pytest.raises(ValueError, match="example="):
        quantize(net, preset("w4a4-pt-mse", mse_candidates=12), statistics=stats)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match=r"nothing\.json does not exist"):
        Statistics.load(tmp_path / "nothing")
    torch.manual_seed(0)
    stats = collect_statistics(Net(), preset("w4a4-naive"), torch.randn(2, 3, 6, 6))
    json_path, npz_path = stats.save(tmp_path / "s")
    npz_path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"s\.npz cannot be read"):
        Statistics.load(json_path)
    npz_path.unlink()
    with pytest.raises(ValueError, match=r"s\.npz does not exist"):
        Statistics.load(json_path)
    stats.save(tmp_path / "s")
    json_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"s\.json is not valid JSON"):
        Statistics.load(json_path)
    json_path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match=r"s\.json is not an aciq statistics file"):
        Statistics.load(json_path)
    json_path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"s\.json is not an aciq statistics file"):
        Statistics.load(json_path)
    json_path.write_text(json.dumps({"format": "aciq-statistics", "version": FORMAT_VERSION, "sites": {}}))
    with pytest.raises(ValueError, match=r"s\.json is malformed"):
        Statistics.load(json_path)
    stats.save(tmp_path / "s")
    meta = json.loads(json_path.read_text())
    meta["sites"]["conv2:input"]["key"] = "s99"
    json_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"s\.npz lacks array .* of site conv2:input"):
        Statistics.load(json_path)


@pytest.mark.parametrize("clipping, per_channel", [("mse", True), ("mse", False), ("mix", True), ("mix", False)])
def test_blocks_of_rows_give_the_same_statistics(monkeypatch, clipping, per_channel):
    """The observer works by blocks of channels (bounded temporaries); blocks of 1 row change nothing."""
    import aciq.quant.observe as observe_module
    from aciq.quant.calibrate import SiteSpec, candidate_errors, error_key

    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.laplace(size=(16, 6, 5, 5)) * rng.uniform(0.5, 3, size=(1, 6, 1, 1)))
    spec = SiteSpec(clipping=clipping, bits=3, per_channel=per_channel, half=False, mse_candidates=10)

    def run():
        obs = Observer("site", hist_bins=64)
        for phase in (1, 2):
            obs.phase = phase
            obs(x)
        obs.candidates = candidate_errors(obs.stats, spec)
        obs.phase = 3
        obs(x)
        return obs.stats

    whole = run()
    monkeypatch.setattr(observe_module, "_CHUNK", 1)        # one channel per block
    assert len(observe_module._chunks(torch.zeros(6, 400))) == 6
    blocks = run()
    for k in ("n", "min", "max", "n_pos", "hist_abs", "hist_pos"):
        np.testing.assert_array_equal(getattr(blocks, k), getattr(whole, k), err_msg=k)
    for k in ("sum", "sumsq", "sum_pos", "sumsq_pos", "absdev", "absdev_tensor"):
        np.testing.assert_allclose(getattr(blocks, k), getattr(whole, k), rtol=1e-12, err_msg=k)
    key = error_key(spec)
    assert whole.errors[key].shape == ((6, spec.mse_candidates if clipping == "mse" else 3) if per_channel
                                       else (spec.mse_candidates if clipping == "mse" else 3,))
    np.testing.assert_allclose(blocks.errors[key], whole.errors[key], rtol=1e-12)
