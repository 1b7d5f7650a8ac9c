"""aciq.theory: the mathematics of analytical post-training quantization.

Pure functions of numpy/scipy (sympy only in the ``*derivation`` modules, matplotlib only in
:mod:`.figures`; neither is imported here). Units: ``alpha`` and ``scale`` share units
(b for Laplace, sigma for Gauss); MSE is absolute (scale squared times the unit value).

Modules
-------
clipping    the paper's model (eq. 5) and its optimal alpha (eq. 6), any real bit-width
derivation  sympy derivation of the model from the densities
priors      densities, samples, closed-form partial moments
grids       the quantizers that really run and their exact error and optimum
limits      Lloyd-Max and the rate-distortion function
kmeans      k-means codebooks of measured data per channel (exact 1-D programme), against Lloyd-Max
empirical   seeded Monte Carlo and the error on any real array
allocation  per-channel bin and bit allocation (eq. 10, 11)
midtread    mid-tread grids with any integer number of bins per channel: exact error, alpha, eq. 10 integer bins
stats       robust scale estimates, prior choice, generalized-Gaussian fit
bias        bias correction (eq. 12, 13)
capped      clipping a capped activation (ReLU6): truncated prior + atom at the cap, moment fit
            (its sympy derivation in :mod:`.capped_derivation`)
rounding    second-order weight rounding (GPTQ / OBQ) on the per-row gemmlowp grid
tables, figures, cli
explore     the numbers and state behind notebooks/00-explore.ipynb's widgets
"""
from ._common import CODED_GRIDS, GRIDS, PRIORS, QUANTIZER_GRIDS, ClippingResult
from .allocation import Allocation, allocate
from .bias import channel_bias, correct_bias, correction_terms
from .capped import CappedClipping, CappedFit, capped_moments, capped_mse, fit_capped_scale, optimal_alpha_capped
from .clipping import clipping_error, model_mse, optimal_alpha, quantization_noise
from .empirical import EmpiricalResult, empirical_mse, monte_carlo_mse
from .grids import analytic_gap, exact_mse, grid_cells, optimal_alpha_exact, quantize
from .limits import blahut_arimoto, lloyd_max, rate_distortion, shannon_lower_bound, to_db
from .stats import channel_stats, choose_prior, estimate_scale, fit_generalized_gaussian
from .coding import CodeLength, code_entropy, code_length, huffman_average_length, huffman_code_lengths
from .kl import KL_CONVENTIONS, KLResult, abs_histogram, kl_threshold
from .rounding import RoundingResult, gptq_round, layer_objective
from .midtread import BinAllocation, allocate_bins, midtread_mse, optimal_alpha_bins
from .kmeans import KMeansResult, LloydMaxComparison, kmeans_1d, kmeans_quantize, lloyd_max_comparison

__all__ = [
    "GRIDS", "QUANTIZER_GRIDS", "CODED_GRIDS", "PRIORS", "ClippingResult",
    "clipping_error", "quantization_noise", "model_mse", "optimal_alpha",
    "exact_mse", "optimal_alpha_exact", "analytic_gap", "grid_cells", "quantize",
    "lloyd_max", "rate_distortion", "shannon_lower_bound", "blahut_arimoto", "to_db",
    "EmpiricalResult", "empirical_mse", "monte_carlo_mse",
    "Allocation", "allocate",
    "estimate_scale", "channel_stats", "choose_prior", "fit_generalized_gaussian",
    "channel_bias", "correct_bias", "correction_terms",
    "CodeLength", "code_entropy", "code_length", "huffman_average_length", "huffman_code_lengths",
    "KL_CONVENTIONS", "KLResult", "abs_histogram", "kl_threshold",
    "CappedClipping", "CappedFit", "capped_mse", "optimal_alpha_capped", "capped_moments", "fit_capped_scale",
    "RoundingResult", "gptq_round", "layer_objective",
    "BinAllocation", "allocate_bins", "midtread_mse", "optimal_alpha_bins",
    "KMeansResult", "LloydMaxComparison", "kmeans_1d", "kmeans_quantize", "lloyd_max_comparison",
]
