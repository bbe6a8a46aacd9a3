"""mobilenetv2-imagenet end to end: quantize, then three-way evaluation on crops of the shipped
photographs (their ImageNet classes as `a|b|c` labels), the QDQ export run in ONNX Runtime.

Seen when written (seed 3, 8 evaluation / 4 calibration crops, ort-cpu): top-1 0.875 float,
0.875 int8 in the emulator and as QDQ in ONNX Runtime; float vs int8 output SNR ~16 dB; ~45 s
at load 4 on 2 cores, most of it quantize's fixed costs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.evaluation import EvalOptions, evaluate_three_way
from quantlens.quantize import QuantizeOptions, quantize_model

pytestmark = pytest.mark.zoo


def test_mobilenetv2_quantizes_and_keeps_its_answers(tmp_path: Path) -> None:
    model = zoo.fetch("mobilenetv2-imagenet")
    data = write_samples("imagenet-samples", 8, tmp_path / "data", seed=3)
    calib = write_samples("imagenet-samples", 4, tmp_path / "calib", seed=4)
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="ort-cpu", run_dir=run))
    report = evaluate_three_way(model, data, "classification", EvalOptions(run_dir=run))
    base, ort_int8 = report.float_vs_gt, report.quantized_onnxruntime_vs_gt
    assert base is not None and ort_int8 is not None
    assert base == report.float_onnxruntime_vs_gt
    assert base["top1"] >= 0.75  # chance is ~0.003
    assert ort_int8["top1"] >= base["top1"] - 0.2
    assert report.float_vs_quantized is not None and report.float_vs_quantized["snr_db"] > 10
