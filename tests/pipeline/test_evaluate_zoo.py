"""Three-way evaluation of the zoo models on rendered samples with exact ground truth.

Numbers seen when these were written (2-core CPU, seeds below):
- doclayout-yolov8n, 4 pages: float F1 0.833, mAP@.5 0.859, mAP@[.5:.95] 0.590 (emulator and
  ONNX Runtime identical); hailo8 int8: 0 detections, F1 0, mAP 0 (emulator and QDQ in ORT);
  float vs int8 output SNR ~30 dB: the scores drown in the pixel-scale Concat.
- pplcnet-orientation, 8 pages: top-1 1.0 float and int8 (ort-cpu), output SNR ~58 dB.
- ppocr-v6-rec-small, 8 lines: character accuracy 1.0 float, ~0.99 int8 (ort-cpu).

The models added for variety (marked slow: minutes each on a loaded 2-core CPU; seen with more
samples through the CLI):
- picodet-layout-cdla, 16 calibration / 8 evaluation cdla-pages, ort-cpu: mAP@[.5:.95] 0.762
  float -> 0.618 int8 in the emulator, 0.638 as QDQ in ONNX Runtime (mAP@.5 0.926 -> 0.897).
- ppocr-v6-det-small, 8 / 4 text-pages, ort-cpu: pixel F1 0.709 -> 0.708, hmean 1.0 -> 1.0
  (0.985 as QDQ in ONNX Runtime).
- ppocr-textline-cls, 32 / 60 rotated-lines, ort-cpu: top-1 0.967 float, 1.0 int8.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlens.data import zoo
from quantlens.data.render import SampleKind, write_samples
from quantlens.evaluation import EvalOptions, EvalReport, evaluate_three_way
from quantlens.quantize import QuantizeOptions, quantize_model

pytestmark = pytest.mark.zoo


def _run(
    name: str, kind: SampleKind, task: str, target: str, count: int, tmp_path: Path
) -> EvalReport:
    model = zoo.fetch(name)
    data = write_samples(kind, count, tmp_path / "data", seed=3)
    # A separate, small calibration set keeps the test honest and fast.
    calib = write_samples(kind, 2, tmp_path / "calib", seed=4)
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target=target, run_dir=run))
    report = evaluate_three_way(model, data, task, EvalOptions(run_dir=run))
    assert (run / "eval.json").is_file()
    assert report.float_vs_gt == report.float_onnxruntime_vs_gt
    assert report.quantized_onnxruntime_vs_gt is not None
    return report


def test_doclayout_float_is_right_and_hailo8_int8_collapses(tmp_path: Path) -> None:
    report = _run("doclayout-yolov8n", "pages", "detection", "hailo8", 4, tmp_path)
    base, quant = report.float_vs_gt, report.quantized_vs_gt
    assert base is not None and quant is not None
    assert base["f1"] > 0.6 and base["map50"] > 0.5 and base["map50_95"] > 0.3
    assert quant["f1"] < 0.1 and quant["map50_95"] < 0.05
    assert report.quantized_onnxruntime_vs_gt is not None
    assert report.quantized_onnxruntime_vs_gt["f1"] < 0.1


def test_orientation_three_way(tmp_path: Path) -> None:
    report = _run("pplcnet-orientation", "rotated-pages", "classification", "ort-cpu", 8, tmp_path)
    assert report.float_vs_gt is not None and report.quantized_vs_gt is not None
    assert report.float_vs_gt["top1"] >= 0.75
    assert report.quantized_vs_gt["top1"] >= report.float_vs_gt["top1"] - 0.25
    assert report.float_vs_quantized is not None and report.float_vs_quantized["snr_db"] > 30


def test_ocr_three_way(tmp_path: Path) -> None:
    report = _run("ppocr-v6-rec-small", "text-lines", "ocr", "ort-cpu", 8, tmp_path)
    assert report.float_vs_gt is not None and report.quantized_vs_gt is not None
    assert report.float_vs_gt["char_accuracy"] > 0.9
    assert report.quantized_vs_gt["char_accuracy"] > 0.8
    assert len(report.per_sample) == 8


@pytest.mark.slow
def test_picodet_three_way(tmp_path: Path) -> None:
    report = _run("picodet-layout-cdla", "cdla-pages", "detection", "ort-cpu", 2, tmp_path)
    base, quant = report.float_vs_gt, report.quantized_vs_gt
    assert base is not None and quant is not None
    assert base["map50"] > 0.8 and base["map50_95"] > 0.6
    assert quant["map50"] > 0.6


@pytest.mark.slow
def test_db_text_detector_three_way(tmp_path: Path) -> None:
    report = _run("ppocr-v6-det-small", "text-pages", "text-detection", "ort-cpu", 2, tmp_path)
    base, quant = report.float_vs_gt, report.quantized_vs_gt
    assert base is not None and quant is not None
    assert base["hmean"] > 0.95 and base["pixel_recall"] > 0.95
    assert quant["hmean"] > 0.9 and quant["pixel_f1"] > base["pixel_f1"] - 0.05


@pytest.mark.slow
def test_textline_classifier_three_way(tmp_path: Path) -> None:
    report = _run("ppocr-textline-cls", "rotated-lines", "classification", "ort-cpu", 12, tmp_path)
    assert report.float_vs_gt is not None and report.quantized_vs_gt is not None
    assert report.float_vs_gt["top1"] >= 0.9
    assert report.quantized_vs_gt["top1"] >= report.float_vs_gt["top1"] - 0.1
