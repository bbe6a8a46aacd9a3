"""`analyze` on a zoo detector: isolated mode names the worst layers, and promoting them helps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantlens.analysis.metrics import OutputNoise
from quantlens.analyze import AnalyzeOptions, analyze_model
from quantlens.api import prepare
from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.evaluation import TaskScorer
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan


@pytest.mark.zoo
@pytest.mark.slow
def test_yolov8_isolated_top3_to_16_bit(tmp_path: Path) -> None:
    """doclayout-yolov8n on hailo8 collapses to mAP 0 at int8: its last Concat joins pixel boxes
    with 0-1 scores under one 8-bit grid. With weightless nodes analysed too (`all_nodes`) and
    noise compared per output channel, isolated mode ranks that Concat first; promoting the three
    worst units to 16 bits raises both the per-channel output SNR and the mAP."""
    model = zoo.fetch("doclayout-yolov8n")
    pages = write_samples("pages", 4, tmp_path / "pages", 0)
    data = write_samples("pages", 4, tmp_path / "eval", 2)
    run = tmp_path / "run"
    options = AnalyzeOptions(
        calib=pages, target="hailo8", run_dir=run, mode="isolated", split=0, all_nodes=True
    )
    report = analyze_model(model, options)
    assert len(report.ranking) == len(report.layers) > 100
    worst = report.worst(3)
    assert worst[0].op_type == "Concat"
    assert all(la.isolated is not None and la.isolated.snr_db is not None for la in worst)
    # Same run folder: quantize reuses the calibration analyze wrote.
    quantize_model(model, QuantizeOptions(calib=pages, target="hailo8", run_dir=run))
    fix = report.promote(Assignment(target="hailo8"), 3).save(tmp_path / "fix.json")
    fixed_run = tmp_path / "fixed"
    quantize_model(
        model,
        QuantizeOptions(calib=pages, target="hailo8", run_dir=fixed_run, assignment=fix),
    )
    executor = Executor(prepare(model, batch=1).model)
    scorer = TaskScorer(model, data, "detection", executor)
    results = []
    for folder in (run, fixed_run):
        plan = QuantPlan.load(folder / "plan.json")
        noise = OutputNoise()
        with torch.inference_mode():
            for _, feed in scorer.samples:
                noise.add(executor.run(feed), executor.run(feed, hooks=QuantHooks(plan, "cpu")))
        results.append((scorer.score(plan)[scorer.primary], noise.snr_db))
    (base_map, base_snr), (fixed_map, fixed_snr) = results
    assert fixed_snr > base_snr + 3.0
    assert fixed_map > base_map + 0.2
