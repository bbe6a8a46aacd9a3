"""Kept for existing imports: the quantize stage lives in `quantlens.pipeline.quantize`."""

from quantlens.artifacts.quantize import OptimizeRecord, OutputQuality, QuantizeReport
from quantlens.pipeline.quantize import (
    FLOAT_MODEL_FILE,
    QuantizeOptions,
    compare_outputs,
    mode_counts,
    quantize,
    quantize_model,
)
from quantlens.pipeline.session import (
    CalibrationOptions,
    load_assignment,
    load_calibration_set,
)

__all__ = [
    "FLOAT_MODEL_FILE",
    "CalibrationOptions",
    "OptimizeRecord",
    "OutputQuality",
    "QuantizeOptions",
    "QuantizeReport",
    "compare_outputs",
    "load_assignment",
    "load_calibration_set",
    "mode_counts",
    "quantize",
    "quantize_model",
]
