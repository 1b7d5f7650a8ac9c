"""aciq.quant.config: the presets are what the seed README and the paper's table say; bad configs fail clearly."""
import json

import pytest
import torch
from torch import nn

from aciq.quant import PRESETS, PerChannel, PerTensor, QuantConfig, preset, quantize
from aciq.quant.modules import QuantizedLayer, QuantizedOutput

PC_W, PC_A, PT = PerChannel(axis=0), PerChannel(axis=1), PerTensor()
SEED = dict(act_site="output", first_layer_bits=8, last_layer_bits=8, pool_bits=8)
PLAIN = dict(act_site="input", first_layer_bits=8, last_layer_bits=8, pool_bits=None)
NAIVE = dict(weight_clipping="minmax", act_clipping="minmax", act_bit_alloc=None, weight_bit_alloc=None,
             bias_correction="off")

# The seed README (seed inventory, "README experiments -> flags") and the paper's table, field by field.
EXPECTED = {
    # RM:51-55  -pcq_w -pcq_a --qtype int4 -qw int4
    "seed-w4a4-naive": dict(SEED, **NAIVE, weight_bits=4, act_bits=4, weight_granularity=PC_W,
                            act_granularity=PC_A),
    # RM:57-61  + -c laplace -baa -baw -bcw (eq. 11 allocation for both, mean-only bias correction)
    "seed-w4a4-all": dict(SEED, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A,
                          weight_clipping="minmax", act_clipping="laplace", act_bit_alloc="paper",
                          weight_bit_alloc="paper", bias_correction="mean", bias_form="seed"),
    # RM:117-121  -pcq_w -pcq_a --qtype int4 -c 2std  (-qw defaults to int8)
    "seed-w8a4-2std": dict(SEED, weight_bits=8, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A,
                           act_clipping="kstd", kstd=2.0, act_bit_alloc=None, bias_correction="off"),
    # RM:123-127  --qtype int4 -c laplace  (W8 per-tensor, A4 per-tensor)
    "seed-w8a4-aciq-layerwise": dict(SEED, weight_bits=8, act_bits=4, weight_granularity=PT,
                                     act_granularity=PT, act_clipping="laplace", act_bit_alloc=None,
                                     bias_correction="off"),
    # RM:129-140 (VGG16 "VLC")  -pcq_w -pcq_a --qtype int4 -qw int4 -c laplace -baa -baw -bcw -bata 5.3 -batw 5.3
    # -mtq: mid-tread grids on both, eq. 10 bins rounded on std (the seed's rule), 5.3-bit bins budgets
    "seed-vlc-mtq": dict(SEED, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A,
                         weight_clipping="minmax", act_clipping="laplace", act_quantizer="midtread",
                         weight_quantizer="midtread", act_bit_alloc="paper", weight_bit_alloc="paper",
                         act_avg_bits=5.3, weight_avg_bits=5.3, alloc_budget="bins", bias_correction="mean",
                         bias_form="seed", act_bias_correction="off"),
    # seed-w4a4-all + -bca (IQM:180-196): from the calibration set, and the seed's oracle (explicitly allowed)
    "seed-w4a4-bca": dict(SEED, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A,
                          weight_clipping="minmax", act_clipping="laplace", act_bit_alloc="paper",
                          weight_bit_alloc="paper", bias_correction="mean", bias_form="seed",
                          act_quantizer="uniform", weight_quantizer="uniform", act_bias_correction="calibration",
                          allow_oracle=False),
    "seed-w4a4-bca-oracle": dict(SEED, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A,
                                 weight_clipping="minmax", act_clipping="laplace", act_bit_alloc="paper",
                                 weight_bit_alloc="paper", bias_correction="mean", bias_form="seed",
                                 act_bias_correction="oracle", allow_oracle=True),
    # the paper's table: 8W4A (per-channel activations), 4W8A, 4W4A; one technique at a time
    "w8a4-naive": dict(PLAIN, **NAIVE, weight_bits=8, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A),
    "w8a4-aciq": dict(PLAIN, weight_bits=8, act_bits=4, act_granularity=PC_A, act_clipping="laplace",
                      act_bit_alloc=None, bias_correction="off"),
    "w8a4-alloc": dict(PLAIN, weight_bits=8, act_bits=4, act_granularity=PC_A, act_clipping="minmax",
                       act_bit_alloc="optimal", bias_correction="off"),
    "w8a4-aciq-alloc": dict(PLAIN, weight_bits=8, act_bits=4, act_granularity=PC_A, act_clipping="laplace",
                            act_bit_alloc="optimal", bias_correction="off"),
    "w4a8-naive": dict(PLAIN, **NAIVE, weight_bits=4, act_bits=8, weight_granularity=PC_W, act_granularity=PT),
    "w4a8-bias": dict(PLAIN, weight_bits=4, act_bits=8, weight_bit_alloc=None, bias_correction="mean"),
    "w4a8-alloc": dict(PLAIN, weight_bits=4, act_bits=8, weight_bit_alloc="optimal", bias_correction="off"),
    "w4a8-alloc-bias": dict(PLAIN, weight_bits=4, act_bits=8, weight_bit_alloc="optimal", bias_correction="mean"),
    "w4a4-naive": dict(PLAIN, **NAIVE, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A),
    "w4a4-aciq": dict(PLAIN, weight_bits=4, act_bits=4, act_granularity=PC_A, act_clipping="laplace",
                      act_bit_alloc=None, weight_bit_alloc=None, bias_correction="off"),
    "w4a4-all": dict(PLAIN, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A,
                     act_clipping="laplace", act_bit_alloc="optimal", weight_bit_alloc="optimal",
                     bias_correction="mean", bias_form="seed"),
    "w4a4-all-exact": dict(PLAIN, weight_bits=4, act_bits=4, act_granularity=PC_A, act_clipping="exact",
                           exact_prior="laplace", act_bit_alloc="optimal", weight_bit_alloc="optimal",
                           bias_correction="mean"),
    # mid-tread activations with the integer optimum of the bins within 16 per channel on average; mid-tread
    # weights (minmax, no prior) with eq. 10 rounded
    "w4a4-mtq": dict(PLAIN, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PC_A,
                     weight_clipping="minmax", act_clipping="laplace", act_quantizer="midtread",
                     act_bit_alloc="optimal", act_avg_bits=None, weight_quantizer="midtread",
                     weight_bit_alloc="paper", weight_avg_bits=None, alloc_budget="bins", bias_correction="off",
                     act_bias_correction="off"),
    "w4a4-all-ongrid": dict(PLAIN, weight_bits=4, act_bits=4, act_granularity=PC_A, act_clipping="laplace",
                            act_bit_alloc="optimal", weight_bit_alloc="optimal",
                            bias_correction="mean+variance", bias_form="on-grid"),
    # per-tensor calibrators
    **{f"w4a4-pt-{mode}": dict(PLAIN, weight_bits=4, act_bits=4, weight_granularity=PC_W, act_granularity=PT,
                                weight_clipping="minmax", act_clipping=clip, act_bit_alloc=None,
                                weight_bit_alloc=None, bias_correction="off")
       for mode, clip in [("minmax", "minmax"), ("aciq", "laplace"), ("mix", "mix"), ("kl", "kl"),
                          ("mse", "mse"), ("exact", "exact")]},
    # the seed's kmeans_quantization.py (per output channel here), with and without its mean correction
    "w4a8-kmeans": dict(PLAIN, weight_bits=4, act_bits=8, weight_granularity=PC_W, weight_quantizer="kmeans",
                        weight_clipping="minmax", weight_bit_alloc=None, bias_correction="off"),
    "w4a8-kmeans-bias": dict(PLAIN, weight_bits=4, act_bits=8, weight_granularity=PC_W, weight_quantizer="kmeans",
                             weight_clipping="minmax", weight_bit_alloc=None, bias_correction="mean"),
    # the best recipes found without backprop (issue 8): per-tensor activations, and -pc with per-channel ones
    **{f"{name}{suffix}": dict(PLAIN, weight_bits=w, act_bits=a, weight_granularity=PC_W, act_granularity=act_g,
                               mse_candidates=50, **fields)
       for suffix, act_g in [("", PT), ("-pc", PC_A)]
       for name, w, a, fields in [
           ("w4a8-best", 4, 8, dict(weight_clipping="mse", act_clipping="minmax", calibration="sequential",
                                    bias_correction="empirical", act_bit_alloc=None, weight_bit_alloc=None)),
           ("w8a4-best", 8, 4, dict(weight_clipping="minmax", act_clipping="mse", bias_correction="mean",
                                    bias_form="on-grid", act_bit_alloc=None, weight_bit_alloc=None)),
           ("w4a4-best", 4, 4, dict(weight_clipping="mse", act_clipping="mix", calibration="sequential",
                                    bias_correction="empirical", act_bit_alloc=None, weight_bit_alloc=None))]},
}


def test_every_preset_is_specified():
    assert set(PRESETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_matches_its_definition(name):
    cfg = PRESETS[name]
    for field, value in EXPECTED[name].items():
        assert getattr(cfg, field) == value, f"{name}.{field}"
    assert preset(name) is cfg
    json.dumps(cfg.to_dict())                      # JSON-able (goes into the statistics file)
    assert cfg.describe().startswith(f"W{cfg.weight_bits}A{cfg.act_bits}")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.conv2(y) + y)
        return self.fc(self.pool(y).flatten(1))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_preset_runs(name):
    torch.manual_seed(0)
    net = Tiny().eval()
    calib = torch.randn(3, 3, 6, 6)
    cfg = preset(name, mse_candidates=16, kl_bins=256)   # small searches: the path, not the numbers
    q = quantize(net, cfg, calib)
    out = q(torch.randn(5, 3, 6, 6))
    assert out.shape == (5, 4) and torch.isfinite(out).all()
    layers = [m for m in q.modules() if isinstance(m, QuantizedLayer)]
    assert len(layers) == 3
    assert sum(isinstance(m, QuantizedOutput) for m in q.modules()) == (1 if cfg.pool_bits else 0)
    site = "act_out" if cfg.act_site == "output" else "act_in"
    assert all(getattr(m, site) is not None for m in layers)


def test_preset_with_changes_and_unknown_name():
    cfg = preset("w4a4-all", act_bits=3)
    assert cfg.act_bits == 3 and cfg.act_bit_alloc == "optimal" and PRESETS["w4a4-all"].act_bits == 4
    with pytest.raises(ValueError, match="preset must be one of"):
        preset("w4a4-everything")


@pytest.mark.parametrize("field", ["weight_bits", "act_bits", "first_layer_bits", "last_layer_bits", "pool_bits"])
@pytest.mark.parametrize("value", [0, 9, -1, 4.0, True, "4"])
def test_bits_outside_1_to_8(field, value):
    with pytest.raises(ValueError, match=field):
        QuantConfig(**{field: value})


@pytest.mark.parametrize("kwargs, match", [
    (dict(act_clipping="percentile"), "act_clipping"),
    (dict(weight_clipping="aciq"), "weight_clipping"),
    (dict(weight_clipping="kl"), "weight_clipping"),
    (dict(act_clipping="kl", act_granularity=PerChannel(axis=1)), "kl"),
    (dict(act_bit_alloc="optimal"), "act_bit_alloc.*per-channel"),        # act granularity is per tensor
    (dict(weight_bit_alloc="paper", weight_granularity=PerTensor()), "weight_bit_alloc.*per-channel"),
    (dict(act_bit_alloc="greedy", act_granularity=PerChannel(axis=1)), "act_bit_alloc"),
    (dict(act_bit_alloc="optimal", act_granularity=PerChannel(axis=1), act_bits=None), "act_bit_alloc"),
    (dict(act_clipping="mse", act_bit_alloc="optimal", act_granularity=PerChannel(axis=1)), "act_clipping"),
    (dict(weight_clipping="mse", weight_bit_alloc="optimal"), "weight_clipping"),
    (dict(act_avg_bits=9.0), "act_avg_bits"),
    (dict(weight_avg_bits=0), "weight_avg_bits"),
    (dict(weight_granularity=PerChannel(axis=1)), "weight_granularity"),
    (dict(act_granularity=PerChannel(axis=0)), "act_granularity"),
    (dict(act_granularity="per-tensor"), "act_granularity"),
    (dict(bias_correction="variance"), "bias_correction"),
    (dict(bias_form="paper"), "bias_form"),
    (dict(half_range="yes"), "half_range"),
    (dict(act_site="weights"), "act_site"),
    (dict(kstd=0.0), "kstd"),
    (dict(kstd=float("inf")), "kstd"),
    (dict(exact_prior="cauchy"), "exact_prior"),
    (dict(alloc_budget="bytes"), "alloc_budget"),
    (dict(mse_candidates=4), "mse_candidates"),
    (dict(kl_bins=2.5), "kl_bins"),
    (dict(act_clipping="kl", kl_bins=128), "kl_bins"),                  # the 8-bit first layer needs 256
    (dict(skip=["fc"]), "skip"),
    # the mid-tread quantizer (-mtq)
    (dict(act_quantizer="midrise"), "act_quantizer"),
    (dict(weight_quantizer="midrise"), "weight_quantizer"),
    (dict(act_quantizer="midtread", act_bit_alloc="paper"), "act_bit_alloc.*per-channel"),
    (dict(act_quantizer="midtread"), "act_quantizer='midtread' allocates bins per channel"),
    (dict(act_quantizer="midtread", act_granularity=PC_A), "act_bit_alloc to 'paper'"),
    (dict(weight_quantizer="midtread"), "weight_bit_alloc to 'paper'"),
    (dict(weight_quantizer="midtread", weight_bit_alloc="paper", weight_granularity=PT),
     "weight_bit_alloc needs per-channel"),
    (dict(weight_quantizer="midtread", weight_bit_alloc="paper", weight_bits=None),
     "weight_bit_alloc needs weight_bits"),
    (dict(act_quantizer="midtread", act_granularity=PC_A, act_bit_alloc="paper", act_clipping="kstd"),
     "act_clipping"),
    (dict(act_quantizer="midtread", act_granularity=PC_A, act_bit_alloc="optimal"), "act_clipping 'laplace'"),
    (dict(weight_quantizer="midtread", weight_bit_alloc="optimal"), "weight_clipping 'laplace'"),
    (dict(weight_quantizer="midtread", weight_bit_alloc="paper", weight_bits=8), "weight_avg_bits <= log2"),
    (dict(act_quantizer="midtread", act_granularity=PC_A, act_bit_alloc="paper", act_avg_bits=7.995),
     "act_avg_bits <= log2"),
    (dict(weight_quantizer="midtread", weight_bit_alloc="paper", alloc_budget="bits"), "alloc_budget='bins'"),
    (dict(act_quantizer="midtread", act_granularity=PC_A, act_bit_alloc="paper", act_cap="auto"), "act_cap"),
    (dict(weight_quantizer="midtread", weight_bit_alloc="paper", weight_rounding="gptq"), "weight_rounding"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantConfig(**kwargs)


def test_replace_validates_and_config_is_frozen():
    cfg = QuantConfig()
    with pytest.raises(ValueError, match="act_bits"):
        cfg.replace(act_bits=12)
    with pytest.raises(AttributeError):
        cfg.act_bits = 2
    assert cfg.replace(skip=("fc",)).skip == ("fc",)
