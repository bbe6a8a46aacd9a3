"""`quantlens analyze`: per-layer quantization noise, with diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    RunDirOpt,
    ShapeOpt,
    SpecOpt,
    TargetOpt,
    resolve_target,
    run_dir,
    shapes,
)


@app.command()
@records("output")
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
    samples: Annotated[int | None, typer.Option(help="Analyse at most N samples.")] = None,
    split: Annotated[
        int | None,
        typer.Option(help="Weight-only/activation-only runs for the N worst layers (0: none)."),
    ] = None,
    spec: SpecOpt = None,
    limit: LimitOpt = None,
    top: Annotated[int, typer.Option(help="Rows in the table of worst layers.")] = 15,
    all_nodes: Annotated[
        bool, typer.Option(help="Also weightless nodes that own a quantizer (Concat, Sigmoid...).")
    ] = False,
    input_shape: ShapeOpt = None,
    device: DeviceOpt = "cpu",
    json: JsonOpt = False,
) -> None:
    """Per-layer quantization noise: accumulated, isolated and gradient modes, with diagnostics.
    Beside a quantize run in the same folder, its calibration is reused."""
    from quantlens.pipeline.analyze import AnalyzeOptions, analyze_model, render_table
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
        all_nodes=all_nodes,
    )
    path = resolve_model(model, say=say)
    with progress("analyze") as bar:
        report = analyze_model(path, options, say=say, progress=bar)
    if json:
        print_json(report.to_json())
        return
    out.print(render_table(report, top))
    worst = report.worst(1)
    flagged = sum(1 for layer in report.layers if layer.flags)
    out.print(
        f"{Path(report.model).name}: {len(report.layers)} layers on {report.target}, "
        f"{flagged} flagged, worst {worst[0].id if worst else '-'} (ranked by {report.ranked_by}); "
        f"{folder / 'analysis.json'}"
    )
