"""`quantize` for an ONNX Runtime target times the float model against its QDQ export."""

from __future__ import annotations

from pathlib import Path

import onnx

from quantlens.artifacts.quantize import QuantizeReport
from quantlens.quantize import QuantizeOptions, quantize_model
from tests.helpers import npz_folder
from tests.models import conv_bn_model


def _quantize(tmp_path: Path, target: str, rounds: int = 5) -> QuantizeReport:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    calib = npz_folder(tmp_path / "calib", 4)
    opts = QuantizeOptions(
        calib=calib, target=target, run_dir=tmp_path / target, latency_rounds=rounds
    )
    return quantize_model(model, opts)


def test_ort_fast_export_runs_integer_kernels_and_is_timed(tmp_path: Path) -> None:
    report = _quantize(tmp_path, "ort-cpu-fast")
    latency = report.latency
    assert latency is not None and latency.threads == 2 and latency.rounds == 5
    assert latency.float_ms > 0 and latency.quantized_ms > 0
    assert latency.integer_kernels.get("QLinearConv", 0) >= 1, latency
    assert not latency.float_weighted_ops, latency
    saved = QuantizeReport.load(tmp_path / "ort-cpu-fast" / "quantize.json")
    assert saved.latency == latency


def test_vendor_targets_and_zero_rounds_time_nothing(tmp_path: Path) -> None:
    assert _quantize(tmp_path, "hailo8").latency is None
    assert _quantize(tmp_path, "ort-cpu", rounds=0).latency is None
