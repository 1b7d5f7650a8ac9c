"""What to quantize and how: granularity values, the frozen :class:`QuantConfig`, and the named presets.

A config says *what* is wanted; every number (clipping values, bit allocations, corrections) is computed by
:mod:`aciq.theory` from the calibration statistics in :mod:`aciq.quant.calibrate`.

Presets (``PRESETS``) reproduce the seed's README experiments (cnn-quantization, ResNet-50) and the rows of
the paper's table. The seed quantizes activations at the *outputs* of conv/linear layers (after folded BN,
half range where a ReLU follows: its "fused ReLU"); presets named ``seed-*`` follow that convention
(``act_site="output"``). The other presets quantize the *inputs* of every conv/linear (``act_site="input"``),
which is what an integer GEMM consumes (:mod:`aciq.kernels`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from aciq.theory import PRIORS
from aciq.theory.allocation import BUDGETS

__all__ = ["PerTensor", "PerChannel", "QuantConfig", "PRESETS", "PAPER_TABLE_PRESETS", "preset", "CLIPPING_MODES",
           "BIAS_CORRECTION", "BIAS_FORMS", "ALLOCATION_RULES", "ALLOC_BUDGETS", "EXACT_PRIORS", "HALF_RANGE",
           "ACT_SITES", "WEIGHT_QUANTIZERS", "ACT_QUANTIZERS", "CALIBRATION_MODES", "WEIGHT_ROUNDING", "GPTQ_ORDERS",
           "EQUALIZE_RULES", "ACT_CAPS", "ACT_BIAS_CORRECTION", "MIDTREAD_CLIPPING", "MIDTREAD_MAX_BINS"]

# Every list of choices lives here once (the CLI reads them too).
CLIPPING_MODES = ("minmax", "laplace", "gauss", "mix", "kstd", "kl", "mse", "exact")
BIAS_CORRECTION = ("off", "mean", "mean+variance", "empirical")
BIAS_FORMS = ("seed", "on-grid")
ALLOCATION_RULES = (None, "paper", "optimal")
CALIBRATION_MODES = ("float", "sequential")
WEIGHT_ROUNDING = ("nearest", "gptq")
GPTQ_ORDERS = ("descending", "natural")
EQUALIZE_RULES = (None, "weights", "activations")
ACT_CAPS = ("auto", "off")
ALLOC_BUDGETS = BUDGETS
EXACT_PRIORS = PRIORS
HALF_RANGE = ("auto", True, False)
ACT_SITES = ("input", "output")
WEIGHT_QUANTIZERS = ("uniform", "kmeans", "midtread")
ACT_QUANTIZERS = ("uniform", "midtread")
ACT_BIAS_CORRECTION = ("off", "calibration", "oracle")
MIDTREAD_CLIPPING = ("minmax", "laplace", "gauss", "exact")   # the others search windows for one bit-width
MIDTREAD_MAX_BINS = 255                # bins of one mid-tread channel: codes 0..255, one byte
_MIDTREAD_MAX_AVG = math.log2(MIDTREAD_MAX_BINS)


@dataclass(frozen=True)
class PerTensor:
    """One quantization grid for the whole tensor."""

    def __str__(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerChannel:
    """One grid per slice along ``axis`` (0 = output channels of a weight, 1 = channels of an activation)."""

    axis: int = 1

    def __str__(self) -> str:
        return f"per-channel(axis={self.axis})"


Granularity = PerTensor | PerChannel


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _bits(name, value, *, allow_none=True):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise ValueError(f"{name} must be an integer in 1..8{' or None' if allow_none else ''}, got {value!r}")


@dataclass(frozen=True)
class QuantConfig:
    """A post-training quantization recipe (frozen; derive variants with :meth:`replace`).

    Attributes
    ----------
    weight_bits, act_bits : int or None
        1..8, or None to leave weights / activations in float.
    weight_granularity : PerTensor or PerChannel
        Default per output channel (``PerChannel(axis=0)``).
    act_granularity : PerTensor or PerChannel
        Default per tensor; ``PerChannel(axis=1)`` gives one grid per channel (the seed's ``-pcq_a``).
    weight_clipping, act_clipping : str
        ``minmax`` (no clipping), ``laplace`` / ``gauss`` (ACIQ, eq. 6, from b or sigma), ``mix`` (the prior
        whose ACIQ window gives the lower measured error on the calibration data, per tensor or channel),
        ``kstd`` (``kstd`` times sigma), ``kl`` (TensorRT entropy calibration, per tensor), ``mse`` (search
        ``mse_candidates`` windows for the lowest measured error: the baseline peers use), ``exact`` (the
        optimum of the gemmlowp grid that runs, under ``exact_prior``, :func:`aciq.theory.optimal_alpha_exact`).
    kstd : float
        k for ``kstd`` clipping (the seed's ``-c 2std``).
    exact_prior : {"laplace", "gauss"}
    act_bit_alloc, weight_bit_alloc : {None, "paper", "optimal"}
        Per-channel bit allocation (needs per-channel granularity): ``paper`` is eq. 11 (round, clamp to
        0..8, may exceed the budget), ``optimal`` the integer optimum within the budget
        (:func:`aciq.theory.allocate`). Bins go by :math:`\\alpha_i^{2/3}` (eq. 10).
    act_avg_bits, weight_avg_bits : float or None
        Average bits per channel under allocation (default: ``act_bits`` / ``weight_bits``).
    alloc_budget : {"bins", "bits"}
    bias_correction : {"off", "mean", "mean+variance", "empirical"}
        Weight bias correction per output channel: ``mean`` and ``mean+variance`` are the paper's analytic
        eq. 12, 13 (from the weights alone); ``empirical`` moves into the bias the mean output error measured on
        the calibration data with the layer and all its predecessors quantized (weights and activations: DFQ's
        empirical form), so it corrects the mean shift of activation clipping too; it needs
        ``calibration="sequential"``.
    bias_form : {"seed", "on-grid"}
        ``seed``: the corrected weights ``xi (w_q - m_q) + m`` (off the integer grid, reproduces the seed);
        ``on-grid``: the integer codes stay, ``xi`` multiplies the channel's scale and the offset
        ``m - xi m_q`` times the expected input (calibration means) moves into the bias.
    first_layer_bits, last_layer_bits : int or None
        Bits (weights and input activations) of the first conv and the last linear layer (8 like the seed);
        None treats them like every other layer.
    half_range : {"auto", True, False}
        Unsigned grid ``[0, hi]`` for tensors known to be non-negative: ``auto`` decides from the calibration
        minimum (input site) or from a ReLU consuming the output (output site).
    act_site : {"input", "output"}
        Where activations are quantized (see the module docstring).
    pool_bits : int or None
        If set, the outputs of pooling modules are quantized (min/max, per tensor) at this width (seed: 8).
    mse_candidates : int
        Windows tried by ``mse`` (fractions k/n of the min/max window, k = 1..n).
    kl_bins : int
        Histogram bins of ``kl``.
    weight_quantizer : {"uniform", "kmeans", "midtread"}
        ``uniform``: the gemmlowp grid above. ``kmeans``: a non-uniform codebook of :math:`2^{bits}` levels
        per output channel (``PerChannel``) or per tensor (``PerTensor``, the seed's
        ``kmeans_quantization.py``), fitted by 1-D k-means (:func:`aciq.theory.kmeans.kmeans_1d`);
        ``weight_clipping`` and ``weight_bit_alloc`` do not apply, bias correction keeps the ``seed`` form,
        and only the fake backend runs it. ``midtread``: the seed's ``-mtq`` (:mod:`aciq.quant.midtread`), a
        mid-tread grid of :math:`\\omega_i` bins (:math:`\\omega_i + 1` levels, any integer up to 255) per
        output channel, allocated within the bins budget :math:`C\\,2^{\\bar M}` by ``weight_bit_alloc``:
        ``paper`` (eq. 10 on the channels' std, rounded: the seed's) or ``optimal`` (the integer optimum of the
        prior's error within the budget; needs ``weight_clipping`` ``laplace``, ``gauss`` or ``exact``). Needs
        per-channel granularity, an allocation rule, ``alloc_budget="bins"``, nearest rounding and
        :math:`\\bar M \\le \\log_2 255`; the first and last layers keep their 8-bit gemmlowp grids; fake backend
        only.
    act_quantizer : {"uniform", "midtread"}
        The same choice for activations (``midtread``: per-channel activations, ``act_bit_alloc`` ``paper``
        or ``optimal``, ``act_clipping`` ``minmax``, ``laplace``, ``gauss`` or ``exact``, ``act_cap="off"``).
    act_bias_correction : {"off", "calibration", "oracle"}
        The seed's activation bias correction (``-bca``, ``IQM:180-196``) at the quantized output of every
        conv (``act_site="output"``, Conv2d only, as the seed): with :math:`y` the conv's output before the
        output quantizer (after the ReLU that consumes it, if any) and :math:`\\hat y` the quantized one, each
        channel gets :math:`\\hat y_c \\mathrel{+}= q_c\\,[\\hat y_c > 0]`,
        :math:`q_c = (\\sum y_c - \\sum \\hat y_c)/(\\#\\{y_c > 0\\} + 10^{-8})`. ``oracle`` (the seed's)
        computes :math:`q_c` from every batch it scores, i.e. **from the data being evaluated: not deployable,
        for reproducing the seed only**; it is refused unless ``allow_oracle=True``, and its outputs depend on
        the batch. ``calibration`` computes :math:`q_c` once, the same way, over the calibration set as one
        batch (layer after layer, each on its corrected predecessors) and keeps them fixed. It is not
        ``bias_correction="empirical"``: that one moves into each layer's bias the mean error of its output
        against the float model (weights, input and predecessors quantized) and keeps the integer path; this
        one corrects only the output quantizer's own mean error, after it, on the positive values only, and
        moves them off the grid. At the input site the mean error of activation quantization passes linearly
        through the layer into its output mean, which ``empirical`` already corrects, so the input site has
        no ``act_bias_correction``.
    allow_oracle : bool
        Must be True to use ``act_bias_correction="oracle"`` (and only then).
    skip : tuple of str
        Module names (``named_modules``) left in float.
    calibration : {"float", "sequential"}
        Where the statistics come from. ``float`` (the paper's): every site is observed on the float model, in
        1-3 passes over the calibration batches. ``sequential``: the layers are quantized one at a time in
        execution order, with the whole calibration set as one batch, and each layer's input statistics,
        Hessian and empirical bias correction come from the model whose predecessors are already quantized,
        i.e. from what the layer will see (:mod:`aciq.quant.sequential`). Needs ``act_site="input"``.
    weight_rounding : {"nearest", "gptq"}
        ``gptq``: second-order rounding of each layer's weights on its grid (:func:`aciq.theory.gptq_round`),
        compensating the rounding error of each column in the columns not yet rounded through the inverse of
        the layer-input Hessian :math:`H = X^T X` (one per group for grouped and depthwise convs): the float
        model's inputs with ``calibration="float"`` (a calibration statistic, saved with the others), the
        quantized predecessors' with ``calibration="sequential"``.
    gptq_damp : float
        Damping added to the Hessian's diagonal, as a fraction of its mean diagonal (GPTQ's lambda).
    gptq_order : {"descending", "natural"}
        Column order: descending Hessian diagonal (GPTQ's act-order) or the weight's own order.
    act_cap : {"auto", "off"}
        Bounded activations: ``auto`` knows that the output of a ReLU6, a Hardtanh or an equalization clamp is
        capped, never places a clipping value above the cap and models the mass saturated at the cap
        (:func:`aciq.theory.optimal_alpha_capped`); ``off`` treats every site as unbounded (the paper).
    equalize : {None, "weights", "activations"}
        Cross-layer equalization before calibration (:mod:`aciq.quant.equalize`): rescale paired output/input
        channels of consecutive layers through ReLU, ReLU6 (which becomes a per-channel clamp) and identity.
        ``weights`` balances the two layers' per-channel weight ranges (Nagel et al., DFQ);
        ``activations`` moves the per-channel ranges of the activation between them into the second layer's
        weights, so that one per-tensor grid fits every channel (what integer hardware runs).
    absorb_bias : bool
        With ``equalize``: move the part of each equalized channel's bias that the activation never goes below
        into the next layer's bias (DFQ's bias absorption), where that is exact.
    """

    weight_bits: int | None = 4
    act_bits: int | None = 4
    weight_granularity: Granularity = field(default_factory=lambda: PerChannel(axis=0))
    act_granularity: Granularity = field(default_factory=PerTensor)
    weight_clipping: str = "minmax"
    act_clipping: str = "minmax"
    kstd: float = 2.0
    exact_prior: str = "laplace"
    act_bit_alloc: str | None = None
    weight_bit_alloc: str | None = None
    act_avg_bits: float | None = None
    weight_avg_bits: float | None = None
    alloc_budget: str = "bins"
    bias_correction: str = "off"
    bias_form: str = "seed"
    first_layer_bits: int | None = 8
    last_layer_bits: int | None = 8
    half_range: str | bool = "auto"
    act_site: str = "input"
    pool_bits: int | None = None
    mse_candidates: int = 100
    kl_bins: int = 2048
    weight_quantizer: str = "uniform"
    act_quantizer: str = "uniform"
    act_bias_correction: str = "off"
    allow_oracle: bool = False
    skip: tuple = ()
    calibration: str = "float"
    weight_rounding: str = "nearest"
    gptq_damp: float = 0.01
    gptq_order: str = "descending"
    act_cap: str = "off"
    equalize: str | None = None
    absorb_bias: bool = False

    def __post_init__(self):
        for name in ("weight_bits", "act_bits", "first_layer_bits", "last_layer_bits", "pool_bits"):
            _bits(name, getattr(self, name))
        for name in ("weight_granularity", "act_granularity"):
            g = getattr(self, name)
            if not isinstance(g, (PerTensor, PerChannel)):
                raise ValueError(f"{name} must be PerTensor() or PerChannel(axis), got {g!r}")
        if isinstance(self.weight_granularity, PerChannel) and self.weight_granularity.axis != 0:
            raise ValueError("weight_granularity: per-channel weights are per output channel, PerChannel(axis=0)")
        if isinstance(self.act_granularity, PerChannel) and self.act_granularity.axis != 1:
            raise ValueError("act_granularity: per-channel activations are along the channel axis, "
                             "PerChannel(axis=1)")
        _choice("weight_clipping", self.weight_clipping, CLIPPING_MODES)
        _choice("act_clipping", self.act_clipping, CLIPPING_MODES)
        _choice("exact_prior", self.exact_prior, EXACT_PRIORS)
        _choice("act_bit_alloc", self.act_bit_alloc, ALLOCATION_RULES)
        _choice("weight_bit_alloc", self.weight_bit_alloc, ALLOCATION_RULES)
        _choice("alloc_budget", self.alloc_budget, ALLOC_BUDGETS)
        _choice("bias_correction", self.bias_correction, BIAS_CORRECTION)
        _choice("bias_form", self.bias_form, BIAS_FORMS)
        _choice("half_range", self.half_range, HALF_RANGE)
        _choice("act_site", self.act_site, ACT_SITES)
        _choice("calibration", self.calibration, CALIBRATION_MODES)
        _choice("weight_rounding", self.weight_rounding, WEIGHT_ROUNDING)
        _choice("gptq_order", self.gptq_order, GPTQ_ORDERS)
        _choice("act_cap", self.act_cap, ACT_CAPS)
        _choice("equalize", self.equalize, EQUALIZE_RULES)
        if not isinstance(self.absorb_bias, bool):
            raise ValueError(f"absorb_bias must be True or False, got {self.absorb_bias!r}")
        if isinstance(self.gptq_damp, bool) or not (isinstance(self.gptq_damp, (int, float))
                                                     and 0 <= self.gptq_damp < float("inf")):
            raise ValueError(f"gptq_damp must be a non-negative number, got {self.gptq_damp!r}")
        if self.calibration == "sequential" and self.act_site != "input":
            raise ValueError("calibration='sequential' quantizes each layer's input as it arrives: it needs "
                             "act_site='input'")
        if self.bias_correction == "empirical" and self.calibration != "sequential":
            raise ValueError("bias_correction='empirical' measures the output error with the predecessors "
                             "quantized: it needs calibration='sequential'")
        if self.weight_rounding == "gptq" and self.weight_bits is None:
            raise ValueError("weight_rounding='gptq' needs weight_bits")
        if self.absorb_bias and self.equalize is None:
            raise ValueError("absorb_bias needs equalize ('weights' or 'activations')")
        if isinstance(self.kstd, bool) or not (isinstance(self.kstd, (int, float)) and 0 < self.kstd < float("inf")):
            raise ValueError(f"kstd must be a positive number, got {self.kstd!r}")
        for name in ("mse_candidates", "kl_bins"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 8:
                raise ValueError(f"{name} must be an integer >= 8, got {v!r}")
        for name, rule, gran, bits, avg in (
                ("act_bit_alloc", self.act_bit_alloc, self.act_granularity, self.act_bits, self.act_avg_bits),
                ("weight_bit_alloc", self.weight_bit_alloc, self.weight_granularity, self.weight_bits,
                 self.weight_avg_bits)):
            if rule is not None and not isinstance(gran, PerChannel):
                raise ValueError(f"{name} needs per-channel granularity")
            if rule is not None and bits is None:
                raise ValueError(f"{name} needs {name.split('_')[0]}_bits")
            if avg is not None and not (isinstance(avg, (int, float)) and 0 < avg <= 8):
                raise ValueError(f"{name.replace('bit_alloc', 'avg_bits')} must lie in (0, 8], got {avg!r}")
        if self.act_clipping == "kl" and isinstance(self.act_granularity, PerChannel):
            raise ValueError("act_clipping='kl' is a per-tensor calibration; use act_granularity=PerTensor()")
        if self.act_clipping == "kl":
            top = max(b for b in (self.act_bits, self.first_layer_bits, self.last_layer_bits, 1) if b is not None)
            if self.kl_bins < 1 << top:
                raise ValueError(f"kl_bins must be >= 2**{top} = {1 << top} (the quantized bins of a {top}-bit "
                                 f"half-range grid), got {self.kl_bins}")
        if self.weight_clipping == "kl":
            raise ValueError("weight_clipping='kl' is not supported (KL calibration is for activations)")
        if self.act_clipping == "mse" and self.act_bit_alloc is not None:
            raise ValueError("act_clipping='mse' searches windows for one bit-width; it cannot be combined "
                             "with act_bit_alloc")
        if self.weight_clipping == "mse" and self.weight_bit_alloc is not None:
            raise ValueError("weight_clipping='mse' searches windows for one bit-width; it cannot be combined "
                             "with weight_bit_alloc")
        _choice("weight_quantizer", self.weight_quantizer, WEIGHT_QUANTIZERS)
        if self.weight_quantizer == "kmeans":
            if self.weight_bits is None:
                raise ValueError("weight_quantizer='kmeans' needs weight_bits (the codebook has 2**weight_bits "
                                 "levels)")
            if self.weight_clipping != "minmax" or self.weight_bit_alloc is not None:
                raise ValueError("weight_quantizer='kmeans' chooses its own levels: leave weight_clipping='minmax' "
                                 "and weight_bit_alloc=None")
            if self.bias_correction != "off" and self.bias_form != "seed":
                raise ValueError("weight_quantizer='kmeans' has no integer grid to keep: use bias_form='seed'")
        _choice("act_quantizer", self.act_quantizer, ACT_QUANTIZERS)
        self._check_midtread()
        self._check_act_bias()
        if not isinstance(self.skip, tuple) or not all(isinstance(s, str) for s in self.skip):
            raise ValueError(f"skip must be a tuple of module names, got {self.skip!r}")

    def _check_midtread(self) -> None:
        for kind, quantizer, gran, bits, avg, rule, clipping in (
                ("act", self.act_quantizer, self.act_granularity, self.act_bits, self.act_avg_bits,
                 self.act_bit_alloc, self.act_clipping),
                ("weight", self.weight_quantizer, self.weight_granularity, self.weight_bits, self.weight_avg_bits,
                 self.weight_bit_alloc, self.weight_clipping)):
            if quantizer != "midtread":
                continue
            field_name = f"{kind}_quantizer='midtread'"
            if bits is None:
                raise ValueError(f"{field_name} needs {kind}_bits (the bins budget is C * 2**{kind}_bits)")
            if not isinstance(gran, PerChannel):
                raise ValueError(f"{field_name} allocates bins per channel (eq. 10): it needs per-channel "
                                 f"{kind}_granularity")
            if rule is None:
                raise ValueError(f"{field_name} always allocates bins (eq. 10, the seed's -mtq): set "
                                 f"{kind}_bit_alloc to 'paper' (eq. 10 rounded, the seed's) or 'optimal' (the "
                                 "integer optimum within the budget)")
            if clipping not in MIDTREAD_CLIPPING:
                raise ValueError(f"{field_name} takes {kind}_clipping in {list(MIDTREAD_CLIPPING)}, got "
                                 f"{clipping!r}")
            if rule == "optimal" and clipping == "minmax":
                raise ValueError(f"{kind}_bit_alloc='optimal' with {field_name} minimises a prior's error: it "
                                 f"needs {kind}_clipping 'laplace', 'gauss' or 'exact' (or {kind}_bit_alloc="
                                 "'paper', eq. 10 on the channels' std)")
            target = bits if avg is None else avg
            if target > _MIDTREAD_MAX_AVG:
                raise ValueError(f"{field_name}: a channel has at most 255 bins (codes in one byte), so the "
                                 f"bins budget needs {kind}_avg_bits <= log2(255) = {_MIDTREAD_MAX_AVG:.4f}; "
                                 f"{kind}_bits={bits}, {kind}_avg_bits={avg}")
            if self.alloc_budget != "bins":
                raise ValueError(f"{field_name} allocates bins within C * 2**avg_bits (eq. 10): it needs "
                                 "alloc_budget='bins'")
        if self.act_quantizer == "midtread" and self.act_cap != "off":
            raise ValueError("act_cap='auto' models capped activations on the gemmlowp grid: "
                             "act_quantizer='midtread' needs act_cap='off'")
        if self.weight_quantizer == "midtread" and self.weight_rounding != "nearest":
            raise ValueError("weight_rounding='gptq' rounds on grids of 2**bits levels: weight_quantizer='midtread' "
                             "needs weight_rounding='nearest'")

    def _check_act_bias(self) -> None:
        _choice("act_bias_correction", self.act_bias_correction, ACT_BIAS_CORRECTION)
        if not isinstance(self.allow_oracle, bool):
            raise ValueError(f"allow_oracle must be True or False, got {self.allow_oracle!r}")
        if self.allow_oracle and self.act_bias_correction != "oracle":
            raise ValueError("allow_oracle only applies to act_bias_correction='oracle'")
        if self.act_bias_correction == "off":
            return
        if self.act_bits is None:
            raise ValueError("act_bias_correction corrects quantized activations: it needs act_bits")
        if self.act_site != "output":
            raise ValueError("act_bias_correction (the seed's -bca) shifts the quantized outputs of conv layers: it "
                             "needs act_site='output'. At the input site the mean error of activation "
                             "quantization passes linearly into the layer's output mean, which "
                             "bias_correction='empirical' (with calibration='sequential') corrects in the bias")
        if self.act_bias_correction == "oracle" and not self.allow_oracle:
            raise ValueError("act_bias_correction='oracle' corrects every batch with the statistics of that same "
                             "batch, i.e. of the data being scored (the seed's -bca): not deployable, for "
                             "reproducing the seed only. Ask for it explicitly with allow_oracle=True, or use "
                             "act_bias_correction='calibration' (statistics of the calibration data only)")

    def replace(self, **changes) -> "QuantConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, (PerTensor, PerChannel)) else (list(v) if isinstance(v, tuple) else v)
        return out

    def describe(self) -> str:
        """One line: the bits and every technique that is on."""
        w = "f" if self.weight_bits is None else self.weight_bits
        a = "f" if self.act_bits is None else self.act_bits
        w_how = "kmeans" if self.weight_quantizer == "kmeans" else self.weight_clipping
        if self.weight_quantizer == "midtread":
            w_how += "/midtread"
        a_how = self.act_clipping + ("/midtread" if self.act_quantizer == "midtread" else "")
        parts = [f"W{w}A{a}", f"w:{self.weight_granularity}/{w_how}",
                 f"a:{self.act_granularity}/{a_how}@{self.act_site}"]
        if self.act_bit_alloc:
            parts.append(f"alloc-a:{self.act_bit_alloc}")
        if self.weight_bit_alloc:
            parts.append(f"alloc-w:{self.weight_bit_alloc}")
        if self.bias_correction == "empirical":
            parts.append("bias:empirical")
        elif self.bias_correction != "off":
            parts.append(f"bias:{self.bias_correction}/{self.bias_form}")
        if self.weight_rounding != "nearest":
            parts.append(f"round:{self.weight_rounding}")
        if self.act_cap != "off":
            parts.append(f"cap:{self.act_cap}")
        if self.equalize:
            parts.append(f"eq:{self.equalize}" + ("+absorb" if self.absorb_bias else ""))
        if self.calibration != "float":
            parts.append(f"calib:{self.calibration}")
        if self.act_bias_correction == "oracle":
            parts.append("bca:ORACLE(scored-data)")
        elif self.act_bias_correction != "off":
            parts.append(f"bca:{self.act_bias_correction}")
        return " ".join(parts)

    @property
    def weights_off_grid(self) -> bool:
        """The seed form of the analytic bias correction moves the weights off their integer grid."""
        return self.bias_correction in ("mean", "mean+variance") and self.bias_form == "seed"


_PC_W, _PC_A, _PT = PerChannel(axis=0), PerChannel(axis=1), PerTensor()
_SEED = dict(act_site="output", first_layer_bits=8, last_layer_bits=8, pool_bits=8)

_SEQ = dict(calibration="sequential", bias_correction="empirical")
_MSE = dict(mse_candidates=50)
_BEST_PT = {
    # 4-bit weights: MSE-clipped per-channel weight grids; layers quantized in order, each on the outputs of the
    # quantized layers before it, its bias matching the float mean output after the activation it feeds
    "w4a8-best": QuantConfig(weight_bits=4, act_bits=8, weight_clipping="mse", **_MSE, **_SEQ),
    # 4-bit activations only: per-tensor MSE-optimal clipping of the float statistics, and the mean output shift
    # of quantization corrected in the bias (on-grid: the weights stay integers)
    "w8a4-best": QuantConfig(weight_bits=8, act_bits=4, act_clipping="mse", bias_correction="mean",
                             bias_form="on-grid", **_MSE),
    # both: the 4-bit weights of w4a8-best, activations clipped by the measured best of min/max, Laplace, Gauss
    "w4a4-best": QuantConfig(weight_bits=4, act_bits=4, weight_clipping="mse", act_clipping="mix", **_MSE, **_SEQ),
}
_BEST = {**_BEST_PT, **{f"{k}-pc": v.replace(act_granularity=PerChannel(axis=1)) for k, v in _BEST_PT.items()}}

PRESETS: dict[str, QuantConfig] = {
    # --- the seed's README (ResNet-50), its act_site="output" convention and 8-bit pooling/first/last
    # RM:51-55  -pcq_w -pcq_a --qtype int4 -qw int4                       (62.15 / 84.25)
    "seed-w4a4-naive": QuantConfig(weight_bits=4, act_bits=4, weight_granularity=_PC_W, act_granularity=_PC_A,
                                   **_SEED),
    # RM:57-61  + -c laplace -baa -baw -bcw                                (73.33 / 91.33)
    "seed-w4a4-all": QuantConfig(weight_bits=4, act_bits=4, weight_granularity=_PC_W, act_granularity=_PC_A,
                                 act_clipping="laplace", act_bit_alloc="paper", weight_bit_alloc="paper",
                                 bias_correction="mean", **_SEED),
    # RM:117-121  -pcq_w -pcq_a --qtype int4 -c 2std  (W8A4)               (15.44 / 34.65)
    "seed-w8a4-2std": QuantConfig(weight_bits=8, act_bits=4, weight_granularity=_PC_W, act_granularity=_PC_A,
                                  act_clipping="kstd", kstd=2.0, **_SEED),
    # RM:123-127  --qtype int4 -c laplace (W8 per-tensor, A4 per-tensor)   (71.40 / 90.25)
    "seed-w8a4-aciq-layerwise": QuantConfig(weight_bits=8, act_bits=4, weight_granularity=_PT,
                                            act_granularity=_PT, act_clipping="laplace", **_SEED),
    # RM:129-140 (VGG16, "VLC")  -pcq_w -pcq_a --qtype int4 -qw int4 -c laplace -baa -baw -bcw -bata 5.3
    # -batw 5.3 -mtq: mid-tread grids, eq. 10 bins rounded (2**5.3 ~ 39 per channel on average)  (70.80 / 91.21)
    "seed-vlc-mtq": QuantConfig(weight_bits=4, act_bits=4, weight_granularity=_PC_W, act_granularity=_PC_A,
                                act_clipping="laplace", act_quantizer="midtread", weight_quantizer="midtread",
                                act_bit_alloc="paper", weight_bit_alloc="paper", act_avg_bits=5.3,
                                weight_avg_bits=5.3, bias_correction="mean", **_SEED),
    # seed-w4a4-all + -bca: the activation bias correction from the calibration set (deployable) ...
    "seed-w4a4-bca": QuantConfig(weight_bits=4, act_bits=4, weight_granularity=_PC_W, act_granularity=_PC_A,
                                 act_clipping="laplace", act_bit_alloc="paper", weight_bit_alloc="paper",
                                 bias_correction="mean", act_bias_correction="calibration", **_SEED),
    # ... and as the seed ran it (IQM:180-196): from the batch being scored, an ORACLE, for reproduction only
    "seed-w4a4-bca-oracle": QuantConfig(weight_bits=4, act_bits=4, weight_granularity=_PC_W, act_granularity=_PC_A,
                                        act_clipping="laplace", act_bit_alloc="paper", weight_bit_alloc="paper",
                                        bias_correction="mean", act_bias_correction="oracle", allow_oracle=True,
                                        **_SEED),
    # --- the paper's table, one technique at a time (inputs of every conv/linear are quantized)
    "w8a4-naive": QuantConfig(weight_bits=8, act_bits=4, act_granularity=_PC_A),
    "w8a4-aciq": QuantConfig(weight_bits=8, act_bits=4, act_granularity=_PC_A, act_clipping="laplace"),
    "w8a4-alloc": QuantConfig(weight_bits=8, act_bits=4, act_granularity=_PC_A, act_bit_alloc="optimal"),
    "w8a4-aciq-alloc": QuantConfig(weight_bits=8, act_bits=4, act_granularity=_PC_A, act_clipping="laplace",
                                   act_bit_alloc="optimal"),
    "w4a8-naive": QuantConfig(weight_bits=4, act_bits=8),
    "w4a8-bias": QuantConfig(weight_bits=4, act_bits=8, bias_correction="mean"),
    "w4a8-alloc": QuantConfig(weight_bits=4, act_bits=8, weight_bit_alloc="optimal"),
    "w4a8-alloc-bias": QuantConfig(weight_bits=4, act_bits=8, weight_bit_alloc="optimal", bias_correction="mean"),
    "w4a4-naive": QuantConfig(weight_bits=4, act_bits=4, act_granularity=_PC_A),
    "w4a4-aciq": QuantConfig(weight_bits=4, act_bits=4, act_granularity=_PC_A, act_clipping="laplace"),
    "w4a4-all": QuantConfig(weight_bits=4, act_bits=4, act_granularity=_PC_A, act_clipping="laplace",
                            act_bit_alloc="optimal", weight_bit_alloc="optimal", bias_correction="mean"),
    "w4a4-all-exact": QuantConfig(weight_bits=4, act_bits=4, act_granularity=_PC_A, act_clipping="exact",
                                  act_bit_alloc="optimal", weight_bit_alloc="optimal", bias_correction="mean"),
    # mid-tread activations (the seed's -mtq) with the integer optimum of eq. 10's problem within 16 bins per
    # channel on average; mid-tread weights with eq. 10 rounded (minmax: no prior to optimise)
    "w4a4-mtq": QuantConfig(weight_bits=4, act_bits=4, act_granularity=_PC_A, act_clipping="laplace",
                            act_quantizer="midtread", act_bit_alloc="optimal", weight_quantizer="midtread",
                            weight_bit_alloc="paper"),
    "w4a4-all-ongrid": QuantConfig(weight_bits=4, act_bits=4, act_granularity=_PC_A, act_clipping="laplace",
                                   act_bit_alloc="optimal", weight_bit_alloc="optimal",
                                   bias_correction="mean+variance", bias_form="on-grid"),
    # --- the calibrators peers use, per tensor (what deploys on integer hardware)
    "w4a4-pt-minmax": QuantConfig(weight_bits=4, act_bits=4),
    "w4a4-pt-aciq": QuantConfig(weight_bits=4, act_bits=4, act_clipping="laplace"),
    "w4a4-pt-mix": QuantConfig(weight_bits=4, act_bits=4, act_clipping="mix"),
    "w4a4-pt-kl": QuantConfig(weight_bits=4, act_bits=4, act_clipping="kl"),
    "w4a4-pt-mse": QuantConfig(weight_bits=4, act_bits=4, act_clipping="mse"),
    "w4a4-pt-exact": QuantConfig(weight_bits=4, act_bits=4, act_clipping="exact"),
    # --- the seed's kmeans_quantization.py (per tensor there; per output channel here), with its mean correction
    "w4a8-kmeans": QuantConfig(weight_bits=4, act_bits=8, weight_quantizer="kmeans"),
    "w4a8-kmeans-bias": QuantConfig(weight_bits=4, act_bits=8, weight_quantizer="kmeans", bias_correction="mean"),
    # --- the best recipes found without backprop (EfficientNet-Lite0 two-fold protocol; README "Best recipes"),
    # per-tensor activations (what integer hardware runs), and -pc with per-channel activations
    **_BEST,
}

PAPER_TABLE_PRESETS: dict[tuple[tuple[int, int], str], str] = {
    # (weight bits, act bits), technique -> preset: the rows of the paper's Table 1, block by block, one
    # technique at a time ("naive" is the paper's "Baseline"). aciq.quant.paper holds the paper's numbers for the
    # techniques it published; a row added here without one (an aciq preset of our own) joins the comparison
    # table with an empty paper column.
    ((8, 4), "naive"): "w8a4-naive",
    ((8, 4), "aciq"): "w8a4-aciq",
    ((8, 4), "alloc"): "w8a4-alloc",
    ((8, 4), "aciq+alloc"): "w8a4-aciq-alloc",
    ((4, 8), "naive"): "w4a8-naive",
    ((4, 8), "bias"): "w4a8-bias",
    ((4, 8), "alloc"): "w4a8-alloc",
    ((4, 8), "alloc+bias"): "w4a8-alloc-bias",
    ((4, 4), "naive"): "w4a4-naive",
    ((4, 4), "all"): "w4a4-all",
}
"""The preset behind each (bits, technique) row of the paper's Table 1 (see :mod:`aciq.quant.paper`)."""


def preset(name: str, **changes) -> QuantConfig:
    """The named preset, optionally with fields changed (``preset("w4a4-all", act_bits=3)``)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]
