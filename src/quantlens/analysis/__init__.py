"""Per-layer analysis: where quantization noise enters, how it reaches the outputs, and why.

Three measurements of each layer (accumulated, isolated, gradient estimate), diagnostics read
from the calibration statistics and the weights, low-SNR flags and a suggested fix.
"""

from quantlens.analysis.accumulated import AccumulatedResult, run_accumulated
from quantlens.analysis.batching import batches, choose_batch_size, stack
from quantlens.analysis.diagnostics import diagnose, flag_low_snr, suggest
from quantlens.analysis.gradient import GradientResult, run_gradient
from quantlens.analysis.isolated import VARIANTS, Evaluator, IsolatedResult, run_isolated
from quantlens.analysis.metrics import ErrorSums, NoiseStats, OutputNoise, spearman
from quantlens.analysis.ownership import LayerTensors, layer_tensors, node_tensors
from quantlens.analysis.report import AnalysisReport, Diagnostics, LayerAnalysis, Suggestion

__all__ = [
    "VARIANTS",
    "AccumulatedResult",
    "AnalysisReport",
    "Diagnostics",
    "ErrorSums",
    "Evaluator",
    "GradientResult",
    "IsolatedResult",
    "LayerAnalysis",
    "LayerTensors",
    "NoiseStats",
    "OutputNoise",
    "Suggestion",
    "batches",
    "choose_batch_size",
    "diagnose",
    "flag_low_snr",
    "layer_tensors",
    "node_tensors",
    "run_accumulated",
    "run_gradient",
    "run_isolated",
    "spearman",
    "stack",
    "suggest",
]
