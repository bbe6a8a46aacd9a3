"""The int8 quality benchmark's own bookkeeping (benchmarks/int8_quality.py): the float
agreement it reports for classifiers, and that other tasks get none."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import int8_quality as bench  # noqa: E402


def _outputs(rows: list[list[float]]) -> list[dict[str, np.ndarray]]:
    return [{"probs": np.array([row], dtype=np.float32)} for row in rows]


def test_agreement_counts_samples_whose_top1_is_floats() -> None:
    reference = _outputs([[0.9, 0.1], [0.4, 0.6], [0.51, 0.49], [0.2, 0.8]])
    # The third sample flips across the boundary; the others keep float's class.
    quantized = _outputs([[0.8, 0.2], [0.3, 0.7], [0.49, 0.51], [0.1, 0.9]])
    assert bench.top1_agreement("ppocr-textline-cls", reference, quantized) == 0.75


def test_agreement_is_for_classifiers_only() -> None:
    reference = _outputs([[0.9, 0.1]])
    assert bench.top1_agreement("doclayout-yolov8n", reference, reference) is None
