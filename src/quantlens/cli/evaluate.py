"""`quantlens eval`: float vs ground truth, quantized vs ground truth, float vs quantized."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from quantlens.cli.app import app
from quantlens.cli.console import out, progress, records, styled
from quantlens.cli.options import (
    AssignmentOpt,
    DeviceOpt,
    LimitOpt,
    ModelArg,
    OutputOpt,
    RayAddressOpt,
    ShapeOpt,
    SpecOpt,
    TargetOpt,
    WorkersOpt,
    output_file,
    scale,
    shapes,
)

if TYPE_CHECKING:
    from quantlens.artifacts.evaluation import EvalReport


def _quantizes_here(params: dict[str, object]) -> bool:
    return params.get("target") is not None or params.get("assignment") is not None


@app.command("eval")
# With --target/--assignment eval quantizes into --run (default runs/eval); else it reads --run.
@records("run", default=_quantizes_here, reads=lambda params: not _quantizes_here(params))
def eval_cmd(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="Evaluation samples (images or .npy/.npz).")],
    task: Annotated[
        str,
        typer.Option(help="classification, detection, ocr, distance, or file.py:factory."),
    ],
    run: Annotated[
        Path | None, typer.Option("--run", help="Run folder from `quantlens quantize`.")
    ] = None,
    assignment: AssignmentOpt = None,
    target: TargetOpt = None,
    calib: Annotated[
        Path | None, typer.Option(help="Calibration data when quantizing here.")
    ] = None,
    gt: Annotated[Path | None, typer.Option(help="Ground truth (COCO JSON or labels.txt).")] = None,
    limit: LimitOpt = None,
    score_threshold: Annotated[float | None, typer.Option(help="Detection score floor.")] = None,
    postprocess: Annotated[
        str | None,
        typer.Option(help="Detection post-process: yolov8 or picodet (built in), or file.py:fn."),
    ] = None,
    spec: SpecOpt = None,
    input_shape: ShapeOpt = None,
    device: DeviceOpt = "cpu",
    output: OutputOpt = None,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Three ways: float vs ground truth, quantized vs ground truth, float vs quantized. With
    --run, the run folder's plan; with --target or --assignment, quantized here first."""
    from quantlens.pipeline.flows import evaluate_three_way
    from quantlens.pipeline.tasks import EvalOptions

    task_options: dict[str, object] = {}
    if score_threshold is not None:
        task_options["score_threshold"] = score_threshold
    if postprocess is not None:
        task_options["postprocess"] = postprocess
    options = EvalOptions(
        run_dir=run,
        assignment=assignment,
        target=target,
        calib=calib,
        ground_truth=gt,
        limit=limit,
        input_shapes=shapes(input_shape),
        spec_file=spec,
        task_options=task_options,
        device=device,
        scale=scale(workers, ray_address),
        out=output_file(output, "eval.json") if output is not None else None,
    )
    with progress("eval") as bar:
        report = evaluate_three_way(model, data, task, options, progress=bar)
    _print_eval(report)


def _print_eval(report: EvalReport) -> None:
    arms = [
        ("float vs ground truth (emulator)", report.float_vs_gt),
        ("float vs ground truth (ONNX Runtime)", report.float_onnxruntime_vs_gt),
        ("quantized vs ground truth (emulator)", report.quantized_vs_gt),
        ("quantized vs ground truth (QDQ in ONNX Runtime)", report.quantized_onnxruntime_vs_gt),
        ("quantized vs ground truth (ONNX simulation)", report.quantized_simulation_vs_gt),
        ("float vs quantized (emulator)", report.float_vs_quantized),
        ("float vs quantized (QDQ in ONNX Runtime)", report.float_vs_quantized_onnxruntime),
        ("float vs quantized (ONNX simulation)", report.float_vs_quantized_simulation),
    ]
    table = Table(
        "comparison",
        "metrics",
        title=f"{report.task}: {report.samples} samples",
        title_justify="left",
    )
    for label, metrics in arms:
        if metrics is not None:
            table.add_row(label, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    out.print(table)
    for note in report.notes:
        out.print(styled(("note", "yellow"), f" {note}"))
    float_value = report.primary_metric("float_vs_gt")
    quant_value = report.primary_metric("quantized_vs_gt")
    quant = "-" if quant_value is None else f"{quant_value:.4f}"
    base = "-" if float_value is None else f"{float_value:.4f}"
    out.print(
        f"{report.primary}: float {base} -> quantized {quant} ({report.target or 'float only'})"
    )
