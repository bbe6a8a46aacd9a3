"""`quantlens analyze`: per-layer quantization noise, with diagnostics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from quantlens.cli.app import app
from quantlens.cli.console import out, print_json, progress, records, say
from quantlens.cli.options import (
    AssignmentOpt,
    CalibOpt,
    DeviceOpt,
    JsonOpt,
    LimitOpt,
    MethodOpt,
    ModelArg,
    PercentileOpt,
    RayAddressOpt,
    RunDirOpt,
    ShapeOpt,
    SpecOpt,
    TargetOpt,
    WorkersOpt,
    resolve_target,
    run_dir,
    scale,
    shapes,
)
from quantlens.data.zoo import display_name

if TYPE_CHECKING:
    from quantlens.artifacts.analysis import AnalysisReport


@app.command()
@records("output", default=True)
def analyze(
    model: ModelArg,
    calib: CalibOpt,
    target: TargetOpt = None,
    mode: Annotated[str, typer.Option(help="accumulated, isolated, gradient or all.")] = "all",
    output: RunDirOpt = None,
    assignment: AssignmentOpt = None,
    method: MethodOpt = "percentile",
    percentile: PercentileOpt = 99.999,
    data: Annotated[
        Path | None, typer.Option(help="Samples to analyse (default: the calibration set).")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Analyse at most N samples.", min=1)] = None,
    split: Annotated[
        int | None,
        typer.Option(
            help="Weight-only/activation-only runs for the N worst layers (0: none).", min=0
        ),
    ] = None,
    spec: SpecOpt = None,
    limit: LimitOpt = None,
    top: Annotated[int, typer.Option(help="Rows in the table of worst layers.", min=1)] = 15,
    all_nodes: Annotated[
        bool, typer.Option(help="Also weightless nodes that own a quantizer (Concat, Sigmoid...).")
    ] = False,
    input_shape: ShapeOpt = None,
    device: DeviceOpt = "cpu",
    json: JsonOpt = False,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Per-layer quantization noise: accumulated, isolated and gradient modes, with diagnostics.
    Beside a quantize run in the same folder, its calibration is reused."""
    from quantlens.pipeline.analyze import AnalyzeOptions, analyze_model
    from quantlens.pipeline.session import resolve_model

    folder = run_dir(output, "analyze")
    options = AnalyzeOptions(
        calib=calib,
        target=resolve_target(target, folder),
        run_dir=folder,
        mode=mode,
        assignment=assignment,
        method=method,
        percentile=percentile,
        data=data,
        samples=samples,
        split=split,
        spec_file=spec,
        limit=limit,
        input_shapes=shapes(input_shape),
        device=device,
        scale=scale(workers, ray_address),
        all_nodes=all_nodes,
    )
    path = resolve_model(model, say=say)
    with progress("analyze") as bar:
        report = analyze_model(path, options, say=say, progress=bar)
    if json:
        print_json(report.to_json())
        return
    out.print(render_table(report, top))
    for change in report.mode_changes:
        out.print(change.line(), markup=False)
    worst = report.worst(1)
    flagged = sum(1 for layer in report.layers if layer.flags)
    out.print(
        f"{display_name(report.model)}: {len(report.layers)} layers on {report.target}, "
        f"{flagged} flagged, worst {worst[0].id if worst else '-'} (ranked by {report.ranked_by}); "
        f"{folder / 'analysis.json'}"
    )


def _db(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if value == math.inf else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def render_table(report: AnalysisReport, top: int = 15) -> Table:
    """The worst layers (by the report's ranking) with their numbers and suggested action."""
    table = Table(
        title=f"worst layers by {report.ranked_by} SNR ({report.target}, {report.samples} samples)"
    )
    for column in ("#", "layer", "op", "acc dB", "iso dB", "w / a dB", "grad dB", "outlier"):
        table.add_column(column, justify="left" if column in ("layer", "op") else "right")
    table.add_column("w spread", justify="right")
    table.add_column("suggestion")
    for rank, la in enumerate(report.worst(top), start=1):
        iso, d = la.isolated, la.diagnostics
        split = f"{_db(iso.weight_snr_db)} / {_db(iso.activation_snr_db)}" if iso else "-"
        outlier = max(
            (v for v in (d.input_outlier_ratio, d.output_outlier_ratio) if v is not None),
            default=None,
        )
        action = f"{la.suggestion.action}: {la.suggestion.reason}" if la.suggestion else ""
        table.add_row(
            str(rank),
            la.id,
            la.op_type + ("+" + "+".join(la.fused) if la.fused else ""),
            _db(la.accumulated.snr_db if la.accumulated else None),
            _db(iso.snr_db if iso else None),
            split,
            _db(la.gradient.snr_db if la.gradient else None),
            _ratio(outlier),
            _ratio(d.weight_channel_spread),
            action,
        )
    if report.spearman_gradient_isolated is not None:
        table.caption = f"Spearman(gradient, isolated) = {report.spearman_gradient_isolated:.2f}"
    return table
