"""`quantlens quantize`: calibrate, emulate and export a QDQ model for a target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.table import Table

from quantlens.cli.app import app
from quantlens.cli.console import out, print_json, progress, records, say
from quantlens.cli.options import (
    AdaroundOpt,
    AssignmentOpt,
    BiasCorrectionOpt,
    CalibOpt,
    ClipSearchOpt,
    DeviceOpt,
    EqualizeOpt,
    FinetuneOpt,
    FixBudgetOpt,
    FuseOpt,
    JsonOpt,
    LimitOpt,
    MethodOpt,
    ModelArg,
    OptimizeOpt,
    PercentileOpt,
    RayAddressOpt,
    RunDirOpt,
    ShapeOpt,
    SpecOpt,
    TargetOpt,
    WorkersOpt,
    fix_overrides,
    resolve_target,
    run_dir,
    scale,
    shapes,
)
from quantlens.data.zoo import display_name

if TYPE_CHECKING:
    from quantlens.artifacts.quantize import QuantizeReport


@app.command()
@records("output", default=True)
def quantize(
    model: ModelArg,
    calib: CalibOpt,
    target: TargetOpt = None,
    output: RunDirOpt = None,
    assignment: AssignmentOpt = None,
    method: MethodOpt = "percentile",
    percentile: PercentileOpt = 99.999,
    spec: SpecOpt = None,
    limit: LimitOpt = None,
    input_shape: ShapeOpt = None,
    device: DeviceOpt = "cpu",
    optimize: OptimizeOpt = 0,
    equalize: EqualizeOpt = None,
    fuse: FuseOpt = None,
    bias_correction: BiasCorrectionOpt = None,
    clip_search: ClipSearchOpt = None,
    adaround: AdaroundOpt = None,
    finetune: FinetuneOpt = None,
    fix_budget: FixBudgetOpt = None,
    json: JsonOpt = False,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Calibrate, emulate and export a QDQ model for a target; writes the run folder."""
    from quantlens.pipeline.quantize import QuantizeOptions, quantize_model
    from quantlens.pipeline.session import resolve_model

    folder = run_dir(output, "quantize")
    options = QuantizeOptions(
        calib=calib,
        target=resolve_target(target, folder),
        run_dir=folder,
        assignment=assignment,
        method=method,
        percentile=percentile,
        input_shapes=shapes(input_shape),
        spec_file=spec,
        limit=limit,
        device=device,
        scale=scale(workers, ray_address),
        optimize=optimize,
        fixes=fix_overrides(equalize, fuse, bias_correction, clip_search, adaround, finetune),
        fix_budget_s=fix_budget,
    )
    path = resolve_model(model, say=say)
    with progress("quantize") as bar:  # calibration, fixes (AdaRound: minutes), export
        report = quantize_model(path, options, say=say, progress=bar)
    if json:
        print_json(report.to_json())
        return
    _print_quantize(report)


def _print_quantize(report: QuantizeReport) -> None:
    table = Table(
        "output",
        "SNR dB float vs int",
        "cosine",
        "emulator vs ORT QDQ: pooled / worst dB",
        "ORT vs itself dB",
        "argmax match",
        title=f"{report.target}: quantized emulation",
        title_justify="left",
    )
    for o in report.outputs:
        a = o.emulator_vs_onnxruntime
        agree = "?" if a is None else f"{a.pooled_snr_db:.1f} / {a.worst_snr_db:.1f}"
        match = "?" if a is None else f"{a.argmax_match:.4f}"
        drift = (
            "?" if a is None or a.onnxruntime_self_db is None else f"{a.onnxruntime_self_db:.1f}"
        )
        d = o.float_vs_quantized
        table.add_row(o.name, f"{d.snr_db:.2f}", f"{d.cosine:.6f}", agree, drift, match)
    out.print(table)
    modes = ", ".join(f"{m} x{n}" for m, n in report.modes.items())
    for change in report.mode_changes:
        out.print(change.line(), markup=False)
    guard = report.optimize.passes_guard
    if guard is not None:
        verdict = "kept" if guard.kept else "undone: the outputs got noisier"
        out.print(
            f"graph passes {', '.join(guard.passes)}: output SNR {guard.snr_without_db:.2f} -> "
            f"{guard.snr_with_db:.2f} dB on {guard.samples} samples ({verdict})"
        )
    for fix in report.optimize.fixes:
        out.print(_fix_line(fix))
    if report.latency is not None:
        out.print(_latency_line(report))
    reused = " (calibration reused)" if report.calibration_reused else ""
    pooled = report.pooled_agreement()
    agree = "?" if pooled is None else f"{pooled:.1f}"
    out.print(
        f"{display_name(report.model)} -> {report.files['qdq_model']}: {report.target}, {modes}; "
        f"worst output SNR {report.worst_snr():.1f} dB, emulator vs ONNX Runtime {agree} dB "
        f"(pooled), {report.samples} samples{reused}"
    )


def _latency_line(report: QuantizeReport) -> str:
    lat = report.latency
    assert lat is not None
    kernels = sum(lat.integer_kernels.values())
    left = sum(lat.float_weighted_ops.values())
    return (
        f"ONNX Runtime CPU, {lat.threads} threads: float {lat.float_ms:.2f} ms, "
        f"QDQ {lat.quantized_ms:.2f} ms ({lat.ratio:.2f}x); {kernels} integer kernels, "
        f"{left} weighted ops left in float"
    )


def _fix_line(fix: Mapping[str, Any]) -> str:
    """One fix of quantize.json: its changes, time, effect on the outputs and on the layers."""
    line = f"fix {fix['name']}: {len(fix['changes'])} changes, {fix['seconds']} s"
    snr = fix.get("output_snr_db") or {}
    if snr.get("before") is not None and snr.get("after") is not None:
        better, worse = fix.get("layers_better_worse", [0, 0])
        line += f"; output SNR {snr['before']} -> {snr['after']} dB, layers +{better}/-{worse}"
        line += "" if fix.get("kept", True) else " (undone: the outputs got noisier)"
    return line
