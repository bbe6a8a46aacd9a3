"""Kept for existing imports: the evaluate stage lives in `quantlens.pipeline.evaluate`, what it
shares with the search in `quantlens.pipeline.tasks`."""

from quantlens.artifacts.evaluation import EvalReport, FloatCheck, SampleResult
from quantlens.emulate.ort import OrtRunner
from quantlens.pipeline.evaluate import QDQ_FILE
from quantlens.pipeline.flows import evaluate_three_way
from quantlens.pipeline.tasks import (
    EvalOptions,
    TaskScorer,
    list_samples,
    model_labels,
    read_samples,
)

__all__ = [
    "QDQ_FILE",
    "EvalOptions",
    "EvalReport",
    "FloatCheck",
    "OrtRunner",
    "SampleResult",
    "TaskScorer",
    "evaluate_three_way",
    "list_samples",
    "model_labels",
    "read_samples",
]
