"""Evaluation: task metrics (classification, detection, text-detection, ocr, distance) and
output distances."""

from quantlens.evaluate import agreement as _agreement  # noqa: F401  (registers "distance")
from quantlens.evaluate import classification as _classification  # noqa: F401
from quantlens.evaluate import detection as _detection  # noqa: F401
from quantlens.evaluate import ocr as _ocr  # noqa: F401
from quantlens.evaluate import text_detection as _text_detection  # noqa: F401
from quantlens.evaluate.base import (
    EvalContext,
    Evaluator,
    EvaluatorFactory,
    Sample,
    evaluator_names,
    load_plugin,
    make_evaluator,
    register_evaluator,
)
from quantlens.evaluate.yolo import DecodeOptions, Detections, decode_yolov8

__all__ = [
    "DecodeOptions",
    "Detections",
    "EvalContext",
    "Evaluator",
    "EvaluatorFactory",
    "Sample",
    "decode_yolov8",
    "evaluator_names",
    "load_plugin",
    "make_evaluator",
    "register_evaluator",
]
