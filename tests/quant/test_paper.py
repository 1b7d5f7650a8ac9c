"""The published numbers (aciq.quant.paper) and the side-by-side table of our sweep rows."""
from __future__ import annotations

import csv

import pytest

from aciq.quant import config
from aciq.quant.config import PAPER_TABLE_PRESETS, PRESETS
from aciq.quant.evaluate import append_csv, markdown_table
from aciq.quant.paper import (COLUMNS, SEED_MODEL, SEED_README, TABLE1, TABLE1_FP32, TABLE1_MODELS, TECHNIQUES,
                              compare)

BLOCKS = ((8, 4), (4, 8), (4, 4))
PAPER_ROWS = {(8, 4): ("naive", "aciq", "alloc", "aciq+alloc"), (4, 8): ("naive", "bias", "alloc", "alloc+bias"),
              (4, 4): ("naive", "all")}


# --------------------------------------------------------------------------- the data
def test_every_paper_row_has_a_preset_with_its_bits():
    for bits, techniques in PAPER_ROWS.items():
        for t in techniques:
            name = PAPER_TABLE_PRESETS[(bits, t)]
            assert (PRESETS[name].weight_bits, PRESETS[name].act_bits) == bits, name
    for (bits, technique), name in PAPER_TABLE_PRESETS.items():   # rows added later: real presets, right bits
        assert name in PRESETS and (PRESETS[name].weight_bits, PRESETS[name].act_bits) == bits


def test_a_number_for_every_model_bits_and_technique():
    keys = {(m, bits, t) for m in TABLE1_MODELS for bits, ts in PAPER_ROWS.items() for t in ts}
    assert set(TABLE1) == keys and len(TABLE1) == 6 * 10
    assert set(TABLE1_FP32) == set(TABLE1_MODELS)
    assert {t for ts in PAPER_ROWS.values() for t in ts} == set(TECHNIQUES)
    for (bits, technique) in PAPER_TABLE_PRESETS:
        if technique in TECHNIQUES:
            assert all((m, bits, technique) in TABLE1 for m in TABLE1_MODELS)


def test_transcription_spot_values():
    # read off fig/experiments.png (submission2019/cnn-quantization) again, column by column
    assert [TABLE1[(m, (4, 4), "all")] for m in TABLE1_MODELS] == [70.5, 71.8, 66.4, 67.0, 73.8, 75.0]
    assert [TABLE1[(m, (4, 4), "naive")] for m in TABLE1_MODELS] == [67.2, 64.5, 30.6, 51.6, 62.0, 62.6]
    assert [TABLE1_FP32[m] for m in TABLE1_MODELS] == [71.6, 73.4, 77.2, 69.7, 76.1, 77.3]
    assert TABLE1[("inception_v3", (4, 8), "naive")] == 38.4 and TABLE1[("resnet101", (8, 4), "aciq+alloc")] == 75.6
    assert TABLE1[("vgg16_bn", (8, 4), "alloc")] == 72.6 and TABLE1[("resnet18", (4, 8), "bias")] == 67.4


def test_the_table_is_plausible():
    """Every quantized number lies below its float reference, and in every block the combination of the
    techniques beats the baseline (true of the published table; a slipped digit would likely break it)."""
    for (m, bits, t), v in TABLE1.items():
        assert 0 < v < TABLE1_FP32[m], (m, bits, t)
    for m in TABLE1_MODELS:
        for bits, best in (((8, 4), "aciq+alloc"), ((4, 8), "alloc+bias"), ((4, 4), "all")):
            assert TABLE1[(m, bits, best)] > TABLE1[(m, bits, "naive")]


def test_seed_readme_runs():
    assert SEED_MODEL == "resnet50" and set(SEED_README) <= set(PRESETS)
    assert SEED_README["seed-w4a4-naive"].top1 == 62.154 and SEED_README["seed-w4a4-all"].top1 == 73.330
    assert SEED_README["seed-w8a4-2std"].top5 == 34.646
    for run in SEED_README.values():
        assert run.lines.startswith("README.md:") and run.flags and 0 < run.top1 < run.top5 <= 100


# --------------------------------------------------------------------------- the side-by-side table
def _rows(model, presets, top1=None):
    """Sweep-like rows: preset i scores 70 - i (float 76)."""
    rows = []
    for i, name in enumerate(presets):
        cfg = PRESETS.get(name)
        rows.append({"model": model, "preset": name, "weight_bits": cfg and cfg.weight_bits,
                     "act_bits": cfg and cfg.act_bits, "top1": 76.0 if cfg is None else 70.0 - i,
                     "top5": 90.0, "agreement": 95.0, "n": 100})
    return rows


ALL = ["float", *dict.fromkeys(PAPER_TABLE_PRESETS.values()), *SEED_README]


def test_compare_sets_every_published_number_beside_ours():
    rows = _rows("resnet50", list(reversed(ALL)))      # order of the rows must not matter
    table = compare(rows)
    assert [r["preset"] for r in table] == ALL
    by = {r["preset"]: r for r in table}
    assert by["float"]["technique"] == "FP32" and by["float"]["published_top1"] == 76.1
    for (bits, t), name in PAPER_TABLE_PRESETS.items():
        r = by[name]
        assert r["bits"] == f"W{bits[0]}A{bits[1]}" and r["technique"] == t
        assert r["published_top1"] == TABLE1[("resnet50", bits, t)]
        assert r["published_drop"] == pytest.approx(76.1 - r["published_top1"])
        assert r["drop"] == pytest.approx(76.0 - r["top1"]) and r["source"] == "Table 1 (resnet50)"
    for name, run in SEED_README.items():
        assert by[name]["published_top1"] == run.top1 and by[name]["source"] == "seed README (resnet50)"
        assert run.lines in by[name]["technique"]
    text = markdown_table(table, COLUMNS)
    assert "73.80" in text and "62.15" in text and text.count("\n") == len(table) + 2


def test_compare_per_model_and_seed_runs_only_for_resnet50():
    table = compare(_rows("resnet18", ["float", "w4a4-naive", "seed-w4a4-naive"]) + _rows("vgg16", ["float"]))
    assert [(r["model"], r["preset"]) for r in table] == [("resnet18", "float"), ("resnet18", "w4a4-naive"),
                                                          ("resnet18", "seed-w4a4-naive"), ("vgg16", "float")]
    assert table[1]["published_top1"] == 51.6 and table[3]["published_top1"] == 71.6
    assert table[2]["published_top1"] is None and table[2]["source"] == ""   # the README ran ResNet-50 only


def test_compare_reference_for_models_outside_the_paper():
    rows = _rows("resnet20_fmnist", ["float", "w4a4-all"])
    alone = compare(rows)
    assert all(r["published_top1"] is None and r["paper_model"] is None for r in alone)
    assert alone[1]["technique"] == "all" and alone[1]["drop"] == pytest.approx(76.0 - 69.0)
    beside = compare(rows, reference={"resnet20_fmnist": "resnet50"})
    assert beside[1]["published_top1"] == 73.8 and beside[1]["paper_model"] == "resnet50"
    with pytest.raises(ValueError, match="reference.*paper's models"):
        compare(rows, reference={"resnet20_fmnist": "resnet20_fmnist"})


def test_a_row_added_to_the_constant_joins_its_block(monkeypatch):
    """The lead's future ``w4a4-best`` style presets: an extra row of the W4A4 block, no published number."""
    rows = _rows("resnet50", ["float", "w4a4-all-exact", "w4a4-naive", "w4a8-naive", "w4a4-all"])
    before = compare(rows)
    assert [r["preset"] for r in before][-1] == "w4a4-all-exact" and before[-1]["technique"] == ""
    extended = dict(PAPER_TABLE_PRESETS)
    extended[((4, 4), "aciq best")] = "w4a4-all-exact"
    monkeypatch.setattr("aciq.quant.paper.PAPER_TABLE_PRESETS", extended)
    monkeypatch.setattr(config, "PAPER_TABLE_PRESETS", extended)
    after = compare(rows)
    assert [(r["bits"], r["technique"]) for r in after] == [("float", "FP32"), ("W4A8", "naive"), ("W4A4", "naive"),
                                                            ("W4A4", "all"), ("W4A4", "aciq best")]
    assert after[-1]["published_top1"] is None and after[-1]["source"] == ""


def test_a_preset_at_other_bits_is_not_the_papers_row():
    row = {**_rows("resnet50", ["w4a4-all"])[0], "act_bits": 8}      # aciq sweep --bits 4/8
    table = compare(_rows("resnet50", ["float"]) + [row])
    assert table[-1]["bits"] == "W4A8" and table[-1]["technique"] == "" and table[-1]["published_top1"] is None


def test_compare_reads_the_results_csv_back(tmp_path):
    rows = _rows("resnet50", ["float", "w8a4-aciq", "w4a8-bias", "seed-w4a4-all"])
    rows[1]["top1"] = None                                  # a row without labels
    for r in rows:
        append_csv(tmp_path / "r.csv", r)
    back = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert isinstance(back[0]["top1"], str)
    assert compare(back) == [{**r, "n": str(r["n"])} for r in compare(rows)]
    assert compare(rows)[1]["drop"] is None


def test_no_float_row_leaves_our_drop_empty():
    table = compare(_rows("resnet50", ["w4a4-naive"]))
    assert table[0]["drop"] is None and table[0]["published_drop"] == pytest.approx(76.1 - 62.0)


@pytest.mark.parametrize("rows, message", [
    ([["resnet50", "float"]], "must be a dict"),
    ([{"preset": "float"}], "no 'model'"),
    ([{"model": "resnet50", "preset": "float", "top1": "n/a"}], "top1='n/a'.*not a number"),
    ([{"model": "resnet50", "preset": "w4a4-all", "weight_bits": "four"}], "bits 'four'"),
    ([{"model": "resnet50", "preset": "float"}, {"model": "resnet50", "preset": "float"}], "two rows for resnet50"),
])
def test_compare_rejects_bad_rows(rows, message):
    with pytest.raises(ValueError, match=message):
        compare(rows)


def test_docstring_examples():
    import doctest

    from aciq.quant import paper, table1

    for module in (paper, table1):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted >= 1, module.__name__
