"""Exporters: the plan as a QDQ ONNX model (and, later, vendor files)."""

from quantlens.export.qdq import export_qdq
from quantlens.export.verify import StepError, agreement, stepwise_code_error

__all__ = ["StepError", "agreement", "export_qdq", "stepwise_code_error"]
