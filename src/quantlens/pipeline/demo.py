"""`quantlens demo`: the whole job on a real model with generated ground truth.

doclayout-yolov8n (a YOLOv8n document-layout detector) is fetched, synthetic pages with known
layout boxes are rendered for calibration and evaluation, the model is quantized to int8 for the
target, evaluated three ways, analysed per layer and exported in the vendor's format. Every
stage writes into one run folder, and the HTML report is rendered from it last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.pipeline.analyze import AnalyzeOptions, analyze_model
from quantlens.pipeline.export import export_vendor
from quantlens.pipeline.flows import evaluate_three_way, search_model
from quantlens.pipeline.quantize import QuantizeOptions, quantize_model
from quantlens.pipeline.search import SearchOptions
from quantlens.pipeline.tasks import EvalOptions
from quantlens.report.render import render_report
from quantlens.schemes.profiles import get_profile, list_profiles

MODEL = "doclayout-yolov8n"


def vendor_format(target: str) -> str:
    """The target's own export format (its profile names it), else ONNX Runtime's."""
    formats = get_profile(target).export_formats
    return formats[0] if formats else "ort"


# Kept for existing imports; derived from the profiles.
VENDOR_FORMAT = {p.name: vendor_format(p.name) for p in list_profiles()}

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class DemoOptions:
    run_dir: Path = Path("runs/demo")
    target: str = "hailo8"
    calib_count: int = 16
    eval_count: int = 8
    analyze_samples: int = 4
    search: bool = True


class MixedSummary(BaseModel):
    metric: float | None
    onnxruntime_metric: float | None
    cost: float
    nodes: int
    full_evaluations: int


class DemoSummary(BaseModel):
    run_dir: str
    target: str
    metric: str
    float_metric: float | None
    quantized_metric: float | None
    quantized_onnxruntime_metric: float | None
    output_snr_db: float
    mixed: MixedSummary | None = None
    worst_layers: list[str]
    vendor_files: list[str]
    # Plan entries the vendor file could not carry (Hailo without a name map: every one whose
    # ONNX name fits no model-script line); `quantlens export` lists them with the reason.
    vendor_dropped: int = 0
    vendor_format: str = ""
    report: str


def run_demo(opts: DemoOptions, say: Say, progress: Progress | None = None) -> DemoSummary:
    run = opts.run_dir
    say(f"fetching {MODEL}")
    model = zoo.fetch(MODEL, progress=say)
    say(f"rendering {opts.calib_count} calibration and {opts.eval_count} evaluation pages")
    calib = write_samples("pages", opts.calib_count, run / "data" / "calib", seed=1)
    data = write_samples("pages", opts.eval_count, run / "data" / "eval", seed=2)
    say(f"quantizing for {opts.target}")
    quantized = quantize_model(
        model, QuantizeOptions(calib=calib, target=opts.target, run_dir=run), say, progress
    )
    say("evaluating three ways")
    report = evaluate_three_way(
        model, data, "detection", EvalOptions(run_dir=run), progress=progress
    )
    say("analysing layers (gradient mode)")
    analysis = analyze_model(
        model,
        AnalyzeOptions(
            calib=calib,
            target=opts.target,
            run_dir=run,
            mode="gradient",
            samples=opts.analyze_samples,
        ),
        say,
        progress,
    )
    mixed = _search(model, calib, data, opts, say, progress) if opts.search else None
    exported = export_vendor(run, vendor_format(opts.target))
    say("rendering the report")
    page = render_report(run)
    return DemoSummary(
        run_dir=str(run),
        target=opts.target,
        metric=report.primary,
        float_metric=report.primary_metric("float_vs_gt"),
        quantized_metric=report.primary_metric("quantized_vs_gt"),
        quantized_onnxruntime_metric=report.primary_metric("quantized_onnxruntime_vs_gt"),
        output_snr_db=quantized.worst_snr(),
        mixed=mixed,
        worst_layers=[layer.id for layer in analysis.worst(5)],
        vendor_files=exported.files,
        vendor_dropped=len(exported.dropped),
        vendor_format=exported.format,
        report=str(page.path),
    )


def _search(
    model: Path, calib: Path, data: Path, opts: DemoOptions, say: Say, progress: Progress | None
) -> MixedSummary | None:
    """Mixed precision at <= 1.1x the int8 cost, then the chosen point evaluated three ways (its
    eval.json replaces the int8 one; the search keeps the int8 numbers in search.json)."""
    say("searching for the cheapest mixed precision that recovers the metric")
    found = search_model(
        model,
        SearchOptions(
            calib=calib,
            target=opts.target,
            run_dir=opts.run_dir,
            data=data,
            task="detection",
            max_cost=1.1,
            samples=4,
            sensitivity_samples=2,
        ),
        say,
        progress,
    )
    say("evaluating the chosen assignment three ways")
    report = evaluate_three_way(
        model, data, "detection", EvalOptions(run_dir=opts.run_dir), progress=progress
    )
    chosen = found.point(found.chosen)
    if chosen is None:
        return None
    return MixedSummary(
        metric=report.primary_metric("quantized_vs_gt"),
        onnxruntime_metric=report.primary_metric("quantized_onnxruntime_vs_gt"),
        cost=chosen.cost,
        nodes=len(chosen.modes),
        full_evaluations=found.full_evaluations,
    )
