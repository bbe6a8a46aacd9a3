"""`analyze` on a zoo detector: isolated mode names the worst layers, and promoting them helps."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlens.analyze import AnalyzeOptions, analyze_model
from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment


@pytest.mark.zoo
@pytest.mark.slow
@pytest.mark.xfail(
    reason="open finding: on doclayout-yolov8n/hailo8, promoting the worst isolated layers to "
    "a16_w16 lowers output SNR (30.3 -> 26.7 dB) although their own tensors improve by 20+ dB; "
    "e.g. /model.0/conv/Conv alone: box SNR 30.9 -> 28.2 dB with the head in float too",
    strict=False,
)
def test_yolov8_isolated_top3_to_16_bit(tmp_path: Path) -> None:
    model = zoo.fetch("doclayout-yolov8n")
    pages = write_samples("pages", 4, tmp_path / "pages", 0)
    run = tmp_path / "run"
    options = AnalyzeOptions(calib=pages, target="hailo8", run_dir=run, mode="isolated", split=0)
    report = analyze_model(model, options)
    assert len(report.ranking) == len(report.layers) > 50
    worst = report.worst(3)
    assert all(la.isolated is not None and la.isolated.snr_db is not None for la in worst)
    # Same run folder: quantize reuses the calibration analyze wrote.
    base = quantize_model(model, QuantizeOptions(calib=pages, target="hailo8", run_dir=run))
    fix = report.promote(Assignment(target="hailo8"), 3).save(tmp_path / "fix.json")
    fixed = quantize_model(
        model,
        QuantizeOptions(calib=pages, target="hailo8", run_dir=run, assignment=fix),
    )
    assert fixed.worst_snr() > base.worst_snr()
