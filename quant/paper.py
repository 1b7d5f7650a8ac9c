"""The published numbers: the paper's Table 1 and the seed README's ResNet-50 runs, and our rows beside them.

**Table 1** of Banner, Nahshan & Soudry, *Post training 4-bit quantization of convolutional networks for
rapid-deployment* (NeurIPS 2019): ImageNet top-1 (%) of six torchvision models after post-training
quantization, for three bit-width blocks (8W4A, 4W8A, 4W4A) and the paper's techniques one at a time.
Transcribed from ``fig/experiments.png`` of the authors' repository, github.com/submission2019/cnn-quantization
(the image of the table its README shows; added in commit 569b132, 2019-05-28; read at cc580c8, 2020-12-08).
The slides in the same repository (``Neurips2019Presentation.pdf``) repeat the 8W4A naive/ACIQ/bit-allocation and
the 4W8A naive/bias-correction/bit-allocation rows with the same values.

**The seed README's runs** (``README.md`` of the same repository at cc580c8, lines 51-61 and 106-127):
ResNet-50, torchvision's weights of 2019 (``pretrained=True``, today's ``IMAGENET1K_V1``), ``-b 512``.

:func:`compare` sets our sweep rows (:func:`aciq.quant.cli.sweep`) beside these numbers, row by row:
model x bit-widths x technique, where the technique of a preset comes from
:data:`aciq.quant.config.PAPER_TABLE_PRESETS`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import PAPER_TABLE_PRESETS, PRESETS

__all__ = ["TABLE1_MODELS", "TABLE1", "TABLE1_FP32", "TECHNIQUES", "SEED_MODEL", "SeedRun", "SEED_README",
           "TABLE1_SOURCE", "SEED_SOURCE", "compare", "COLUMNS"]

TABLE1_SOURCE = ("Banner, Nahshan & Soudry, NeurIPS 2019, Table 1 (fig/experiments.png of "
                 "github.com/submission2019/cnn-quantization)")
SEED_SOURCE = "README.md of github.com/submission2019/cnn-quantization (commit cc580c8)"

TABLE1_MODELS = ("vgg16", "vgg16_bn", "inception_v3", "resnet18", "resnet50", "resnet101")
"""The paper's columns (VGG, VGG-BN, IncepV3, Res18, Res50, Res101) as :data:`aciq.quant.zoo.MODELS` names."""

TECHNIQUES = {
    # technique key (as in PAPER_TABLE_PRESETS) -> the paper's row label
    "naive": "Baseline",
    "aciq": "ACIQ",
    "alloc": "Per-channel bit allocation",
    "aciq+alloc": "ACIQ + Per-channel bit allocation",
    "bias": "Bias-Correction",
    "alloc+bias": "Bias-Corr + Per-channel bit-allocation",
    "all": "All methods combined",
}
"""The techniques the paper published numbers for, with its row labels."""

_ROWS = {
    # (weight bits, act bits), technique: top-1 % of VGG16, VGG16-BN, Inception-v3, ResNet-18, ResNet-50, ResNet-101
    # 8W4A: per-channel quantization of activations + fused ReLU
    ((8, 4), "naive"): (68.8, 70.6, 70.9, 61.5, 68.3, 66.5),
    ((8, 4), "aciq"): (70.1, 72.0, 72.7, 66.6, 71.8, 72.6),
    ((8, 4), "alloc"): (69.7, 72.6, 74.3, 65.0, 71.3, 70.8),
    ((8, 4), "aciq+alloc"): (70.7, 72.8, 75.1, 68.0, 73.6, 75.6),
    # 4W8A: per-channel quantization of weights
    ((4, 8), "naive"): (70.5, 68.5, 38.4, 59.7, 72.5, 74.6),
    ((4, 8), "bias"): (71.0, 71.7, 59.5, 67.4, 74.8, 76.3),
    ((4, 8), "alloc"): (71.0, 71.9, 61.4, 66.7, 75.0, 76.4),
    ((4, 8), "alloc+bias"): (71.2, 72.4, 68.2, 68.3, 75.3, 76.9),
    # 4W4A: per-channel quantization of weights & activations + fused ReLU
    ((4, 4), "naive"): (67.2, 64.5, 30.6, 51.6, 62.0, 62.6),
    ((4, 4), "all"): (70.5, 71.8, 66.4, 67.0, 73.8, 75.0),
}

TABLE1: dict[tuple[str, tuple[int, int], str], float] = {
    (model, bits, technique): value
    for (bits, technique), values in _ROWS.items() for model, value in zip(TABLE1_MODELS, values)
}
"""Top-1 % of ``(model, (weight_bits, act_bits), technique)`` in the paper's Table 1."""

TABLE1_FP32: dict[str, float] = dict(zip(TABLE1_MODELS, (71.6, 73.4, 77.2, 69.7, 76.1, 77.3)))
"""The table's "Reference (FP32)" row: top-1 % of the float models."""

SEED_MODEL = "resnet50"
"""The model of every seed README run."""


@dataclass(frozen=True)
class SeedRun:
    """One run of the seed README: the preset that reproduces its flags, and what the README reports.

    Attributes
    ----------
    preset : str
        The :data:`aciq.quant.config.PRESETS` name.
    top1, top5 : float
        ``Prec@1``, ``Prec@5`` as printed in the README.
    lines : str
        Where, in the README.
    flags : str
        The seed's command line (``inference/inference_sim.py -a resnet50 -b 512 ...``).
    note : str
        How the seed got its statistics, where that differs from ours (always 32 calibration images that are
        never scored).
    """

    preset: str
    top1: float
    top5: float
    lines: str
    flags: str
    note: str


SEED_README: dict[str, SeedRun] = {r.preset: r for r in (
    SeedRun("seed-w4a4-naive", 62.154, 84.252, "README.md:51-55", "-pcq_w -pcq_a -sh --qtype int4 -qw int4",
            "statistics of each scored batch (512 shuffled images)"),
    SeedRun("seed-w4a4-all", 73.330, 91.334, "README.md:57-61",
            "-pcq_w -pcq_a -sh --qtype int4 -qw int4 -c laplace -baa -baw -bcw",
            "statistics of each scored batch; 74.2 / 91.932 with statistics of 32 images (README.md:106-114)"),
    SeedRun("seed-w8a4-2std", 15.440, 34.646, "README.md:117-121", "-pcq_w -pcq_a -sh --qtype int4 -c 2std",
            "statistics of each scored batch; 8-bit weights (no -qw)"),
    SeedRun("seed-w8a4-aciq-layerwise", 71.404, 90.248, "README.md:123-127", "--qtype int4 -c laplace -sm use",
            "statistics of 32 images; per-tensor weights and activations"),
)}
"""The seed README's ResNet-50 runs, by preset."""

COLUMNS = (("model", "model"), ("bits", "bits"), ("technique", "technique"), ("preset", "preset"),
           ("published_top1", "published top-1"), ("published_drop", "published drop"), ("top1", "our top-1"),
           ("drop", "our drop"), ("agreement", "agreement %"), ("n", "n"), ("source", "published by"))
"""Columns of :func:`compare`'s rows for :func:`aciq.quant.evaluate.markdown_table` (``drop``: float top-1
minus quantized top-1, in points, the published one against the published FP32 reference)."""

_NUMBERS = ("top1", "top5", "agreement")


def _bits_label(w, a) -> str:
    return f"W{'f' if w is None else w}A{'f' if a is None else a}"


def _number(value, key, row):
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"rows: {key}={value!r} of {row.get('model')} {row.get('preset')} is not a number") from None


def _bits(value, row):
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"rows: bits {value!r} of {row.get('model')} {row.get('preset')} are not an integer") \
            from None


def _clean(row) -> dict:
    """A sweep row (as :func:`aciq.quant.cli.sweep` returns it, or read back from its CSV) with typed values."""
    if not isinstance(row, dict):
        raise ValueError(f"rows: every row must be a dict (a sweep row), got {type(row).__name__}")
    for key in ("model", "preset"):
        if not row.get(key):
            raise ValueError(f"rows: a row has no {key!r}: {sorted(row)}")
    out = dict(row)
    for key in _NUMBERS:
        out[key] = _number(row.get(key), key, row)
    out["weight_bits"], out["act_bits"] = _bits(row.get("weight_bits"), row), _bits(row.get("act_bits"), row)
    return out


def _drop(float_top1, top1):
    return None if float_top1 is None or top1 is None else float_top1 - top1


def _classify(r, paper_model, table_keys) -> tuple:
    """``(order, bits label, technique, published top-1, source)`` of one of our rows."""
    bits = (r["weight_bits"], r["act_bits"])
    if r["preset"] == "float":
        fp32 = None if paper_model is None else TABLE1_FP32[paper_model]
        return (0, 0), "float", "FP32", fp32, f"Table 1 ({paper_model})"
    for i, key in enumerate(table_keys):
        if PAPER_TABLE_PRESETS[key] == r["preset"] and key[0] == bits:
            published = None if paper_model is None else TABLE1.get((paper_model, *key))
            return (1, i), _bits_label(*bits), key[1], published, f"Table 1 ({paper_model})"
    seed = SEED_README.get(r["preset"])
    if seed is not None and bits == (PRESETS[seed.preset].weight_bits, PRESETS[seed.preset].act_bits):
        published = seed.top1 if paper_model == SEED_MODEL else None
        return (2, list(SEED_README).index(seed.preset)), _bits_label(*bits), f"seed {seed.lines}", published, \
            f"seed README ({SEED_MODEL})"
    return (3, 0), _bits_label(*bits), "", None, ""


def compare(rows, *, reference=None) -> list[dict]:
    """Our sweep rows beside the published numbers, one row per model x bit-widths x technique.

    Parameters
    ----------
    rows : list of dict
        Sweep rows (:func:`aciq.quant.cli.sweep`, or the ``--results`` CSV read back with ``csv.DictReader``):
        at least ``model``, ``preset``, ``weight_bits``, ``act_bits``, ``top1``.
    reference : dict, optional
        Our model -> the paper's model whose numbers stand beside it (default: the same name where it is one of
        :data:`TABLE1_MODELS`; other models get empty published columns). Comparing different models, read the
        drops, not the top-1 values.

    Returns
    -------
    list of dict
        Per model (in the order the rows first name it): the float row (published: the FP32 reference), the
        rows of :data:`aciq.quant.config.PAPER_TABLE_PRESETS` in its order (bit-width blocks in the order they
        first appear), the seed README's runs (published only where the paper model is :data:`SEED_MODEL`), then
        any other row in the order given. Keys: ``model``, ``paper_model``, ``bits`` (``"W4A4"``; ``"float"``),
        ``technique``, ``preset``, ``published_top1``, ``published_drop``, ``top1``, ``drop``, ``agreement``,
        ``n``, ``source``. The drops are float top-1 minus quantized top-1 (points; the published one against
        the published FP32 reference, ours against our float row), None where a number is missing. A preset
        run with ``--bits`` other than its own is not the paper's row: it comes last, without a technique.

    Raises
    ------
    ValueError
        A row that is not a dict, lacks ``model`` or ``preset``, holds a non-number, or repeats a model,
        preset and bit-widths; a ``reference`` naming a model outside :data:`TABLE1_MODELS`.

    Examples
    --------
    >>> rows = [{"model": "resnet50", "preset": "float", "top1": 76.0},
    ...         {"model": "resnet50", "preset": "w4a4-all", "weight_bits": 4, "act_bits": 4, "top1": 72.0}]
    >>> [(r["technique"], r["published_top1"], round(r["published_drop"], 1), r["drop"]) for r in compare(rows)]
    [('FP32', 76.1, 0.0, 0.0), ('all', 73.8, 2.3, 4.0)]
    """
    reference = {} if reference is None else dict(reference)
    for ours, theirs in reference.items():
        if theirs not in TABLE1_MODELS:
            raise ValueError(f"reference: {ours!r} -> {theirs!r}; the paper's models are {list(TABLE1_MODELS)}")
    rows = [_clean(r) for r in rows]
    seen = set()
    for r in rows:
        key = (r["model"], r["preset"], r["weight_bits"], r["act_bits"])
        if key in seen:
            raise ValueError(f"rows: two rows for {r['model']} {r['preset']} "
                             f"{_bits_label(r['weight_bits'], r['act_bits'])}")
        seen.add(key)
    blocks = list(dict.fromkeys(bits for bits, _ in PAPER_TABLE_PRESETS))
    table_keys = sorted(PAPER_TABLE_PRESETS, key=lambda k: blocks.index(k[0]))   # stable within a block
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        paper_model = reference.get(model, model if model in TABLE1_MODELS else None)
        mine = [r for r in rows if r["model"] == model]
        float_top1 = next((r["top1"] for r in mine if r["preset"] == "float"), None)
        ranked = []
        for i, r in enumerate(mine):
            order, bits, technique, published, source = _classify(r, paper_model, table_keys)
            fp32 = None if published is None else TABLE1_FP32[paper_model]
            ranked.append((order, i, {
                "model": model, "paper_model": paper_model, "bits": bits, "technique": technique,
                "preset": r["preset"], "published_top1": published,
                "published_drop": None if published is None else fp32 - published, "top1": r["top1"],
                "drop": _drop(float_top1, r["top1"]), "agreement": r["agreement"], "n": r.get("n"),
                "source": source if published is not None else ""}))
        out += [entry for _, _, entry in sorted(ranked, key=lambda t: (t[0], t[1]))]
    return out
