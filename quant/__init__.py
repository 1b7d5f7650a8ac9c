"""aciq.quant: post-training quantization of real CNNs (torch), every number from :mod:`aciq.theory`.

``qmodel = quantize(model, config, calibration_data)``: fold BatchNorm, observe the calibration images,
compute each grid analytically, swap the conv/linear layers. See :mod:`aciq.quant.config` for the recipe
and its presets, :mod:`aciq.quant.api` for the steps, :mod:`aciq.quant.report` for the entropy and Huffman
length of the codes (``code_lengths(qmodel, data)``), :mod:`aciq.quant.export` for the ONNX file
(``export_onnx(qmodel, example_input, path)``, QDQ form, checked in ONNX Runtime by :mod:`aciq.quant.onnx_check`).
"""
from .api import collect_statistics, convert, prepare, quantize
from .config import PRESETS, PerChannel, PerTensor, QuantConfig, preset
from .export import OnnxExport, export_onnx
from .fake import GridParams, fake_quantize, grid_params, midtread_params
from .fold import fold_batchnorm
from .observe import Statistics
from .report import code_lengths

__all__ = ["quantize", "prepare", "collect_statistics", "convert", "QuantConfig", "PerTensor", "PerChannel",
           "PRESETS", "preset", "Statistics", "fold_batchnorm", "GridParams", "grid_params", "fake_quantize",
           "code_lengths", "export_onnx", "OnnxExport", "midtread_params"]
