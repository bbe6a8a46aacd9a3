"""`quantlens demo`: the whole job on a real model with rendered pages."""

from __future__ import annotations

from typing import Annotated

import typer

from quantlens.cli.app import app
from quantlens.cli.console import out, progress, records, say
from quantlens.cli.options import RunDirOpt, run_dir


@app.command()
@records("output", seeds={"calibration pages": 1, "evaluation pages": 2}, default=True)
def demo(
    output: RunDirOpt = None,
    target: Annotated[str, typer.Option(help="Target profile of the demo.")] = "hailo8",
    calib_count: Annotated[int, typer.Option(help="Calibration pages to render.", min=1)] = 16,
    eval_count: Annotated[int, typer.Option(help="Evaluation pages to render.", min=1)] = 8,
) -> None:
    """The whole job on doclayout-yolov8n with rendered pages: quantize, evaluate, analyse,
    search for mixed precision, export and report."""
    from quantlens.pipeline.demo import DemoOptions, run_demo

    options = DemoOptions(
        run_dir=run_dir(output, "demo"),
        target=target,
        calib_count=calib_count,
        eval_count=eval_count,
    )
    with progress("demo") as bar:
        summary = run_demo(options, say=say, progress=bar)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    mixed, found = "", summary.mixed
    if found is not None:
        mixed = (
            f" -> mixed {fmt(found.metric)} (ONNX Runtime {fmt(found.onnxruntime_metric)}) at "
            f"{found.cost:.3f}x int8 cost, {found.nodes} nodes promoted, "
            f"{found.full_evaluations} full evaluations"
        )
    out.print(f"worst layers (gradient estimate): {', '.join(summary.worst_layers)}")
    dropped = ""
    if summary.vendor_dropped:
        dropped = (
            f" ({summary.vendor_dropped} entries dropped; `quantlens export "
            f"{summary.run_dir} --format {summary.vendor_format}` lists why)"
        )
    out.print(f"vendor files: {', '.join(summary.vendor_files)}{dropped}")
    out.print(
        f"demo: {summary.metric} float {fmt(summary.float_metric)} -> int8 {summary.target} "
        f"{fmt(summary.quantized_metric)} (QDQ in ONNX Runtime "
        f"{fmt(summary.quantized_onnxruntime_metric)}), output SNR {summary.output_snr_db:.1f} dB"
        f"{mixed}; run folder {summary.run_dir}; report {summary.report}"
    )
