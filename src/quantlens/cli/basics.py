"""Commands about the model itself, no calibration: version, profiles, inspect, check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from quantlens import __version__
from quantlens.cli.app import app
from quantlens.cli.console import out, progress, say, styled
from quantlens.cli.options import (
    DeviceOpt,
    JsonOpt,
    ModelArg,
    OutputOpt,
    ShapeOpt,
    output_file,
    shapes,
)
from quantlens.data.zoo import display_name
from quantlens.errors import UserError

if TYPE_CHECKING:
    from quantlens.pipeline.check import CheckReport
    from quantlens.pipeline.inspect import InspectReport


@app.command()
def version() -> None:
    """Print the quantlens version."""
    out.print(__version__)


@app.command()
def inspect(model: ModelArg, input_shape: ShapeOpt = None, json: JsonOpt = False) -> None:
    """Inputs, outputs, op histogram, canonicalization, quantizable layers, unsupported ops."""
    from quantlens.pipeline.inspect import inspect_model
    from quantlens.pipeline.session import resolve_model

    path = resolve_model(model, say=say)
    report = inspect_model(path, shapes(input_shape))
    if json:
        out.print(report.to_json(), markup=False)
        return
    _print_inspect(report)
    unsupported = f", {len(report.unsupported)} unsupported nodes" if report.unsupported else ""
    out.print(
        styled(
            (path.name, "bold"),
            f": {sum(report.op_histogram.values())} nodes, "
            f"{len(report.layers)} quantizable layers, {report.activations} activation tensors, "
            f"{report.parameters:,} parameters{unsupported}",
        )
    )


def _print_inspect(report: InspectReport) -> None:
    out.print(
        styled(
            ("model", "bold"),
            f" {report.model}  producer: {report.producer or '?'}  "
            f"IR {report.ir_version}  opset {report.opset} -> {report.opset_canonical}",
        )
    )
    io = Table("", "name", "shape", "dtype", title="Inputs and outputs", title_justify="left")
    for kind, infos in (("input", report.inputs), ("output", report.outputs)):
        for info in infos:
            io.add_row(kind, info.name, str(info.shape), info.dtype)
    out.print(io)
    ops = Table("op", "count", title="Op histogram (as loaded)", title_justify="left")
    for op, count in report.op_histogram.items():
        ops.add_row(op, str(count))
    out.print(ops)
    out.print(styled(("Canonicalization", "bold")))
    for step in report.canonicalization:
        out.print(f"  {step.summary()}")
    _print_layers(report)
    if report.unsupported:
        table = Table("node", "op", title="Unsupported ops", title_justify="left")
        for node in report.unsupported:
            table.add_row(
                node.node, f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            )
        out.print(table)


def _print_layers(report: InspectReport) -> None:
    table = Table(
        "layer",
        "op",
        "weight shape",
        "MACs",
        "BN folded",
        title="Quantizable layers",
        title_justify="left",
    )
    for layer in report.layers:
        macs = f"{layer.macs:,}" if layer.macs is not None else "?"
        table.add_row(layer.id, layer.op_type, str(layer.weight_shape), macs, layer.folded_bn or "")
    out.print(table)
    for rejection in report.rejected:
        out.print(styled("  ", (rejection.reason, "yellow")))


@app.command()
def check(
    model: ModelArg,
    data: Annotated[Path | None, typer.Option(help="Folder of images or .npy/.npz inputs.")] = None,
    random: Annotated[int, typer.Option(help="Number of random inputs (default 4).", min=0)] = 0,
    input_shape: ShapeOpt = None,
    tolerance: Annotated[float, typer.Option(help="Max relative error to PASS.")] = 1e-4,
    device: DeviceOpt = "cpu",
    seed: Annotated[int, typer.Option(help="Seed for random inputs.", min=0)] = 0,
    output: OutputOpt = None,
    json: JsonOpt = False,
) -> None:
    """Float validation: the emulator against ONNX Runtime on the same inputs (exit 1 on FAIL)."""
    from quantlens.pipeline.check import CheckOptions, check_model
    from quantlens.pipeline.session import resolve_model

    if data is not None and random:
        raise UserError("--data and --random are exclusive", "pass one of them")
    path = resolve_model(model, say=say)
    options = CheckOptions(
        data=data,
        random=random,
        input_shapes=shapes(input_shape),
        tolerance=tolerance,
        device=device,
        seed=seed,
    )
    with progress("check") as bar:
        report = check_model(path, options, bar)
    if output is not None:
        report.save(output_file(output, "check.json"))
    if json:
        out.print(report.to_json(), markup=False)
    else:
        _print_check(report)
    if not report.passed:
        raise typer.Exit(code=1)


def _print_check(report: CheckReport) -> None:
    table = Table(
        "output",
        "shape",
        "max abs err",
        "rel err",
        "cosine",
        "SNR dB",
        "",
        title=f"Emulator vs ONNX Runtime ({report.inputs})",
        title_justify="left",
    )
    for o in report.outputs:
        verdict = styled(("PASS", "green") if o.passed else ("FAIL", "red"))
        table.add_row(
            o.name,
            str(o.shape),
            f"{o.max_abs_error:.3g}",
            f"{o.relative_error:.3g}",
            f"{o.cosine:.8f}",
            f"{o.snr_db:.1f}",
            verdict,
        )
    out.print(table)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    worst = max((o.relative_error for o in report.outputs), default=0.0)
    out.print(
        styled(
            ("PASS", "green") if report.passed else ("FAIL", "red"),
            f": {display_name(report.model)}, {report.samples} samples, worst relative error "
            f"{worst:.2e} (tolerance {report.tolerance:g}); "
            f"emulator {report.emulator_seconds:.2f}s, "
            f"ONNX Runtime {report.onnxruntime_seconds:.2f}s on {report.threads} threads",
        )
    )


@app.command()
def profiles(json: JsonOpt = False) -> None:
    """Target profiles: formats, allowed precision modes, quantizer placement."""
    from quantlens.schemes.profiles import list_profiles

    items = list_profiles()
    if json:
        import json as _json

        dumped = [p.model_dump(mode="json") for p in items]
        out.print(_json.dumps(dumped, indent=2), markup=False)
        return
    table = Table(
        "profile",
        "activations",
        "weights",
        "modes",
        "placement",
        title="Target profiles",
        title_justify="left",
    )
    for p in items:
        acts = ", ".join(p.activation_format(b).describe() for b in sorted(p.activation_formats))
        weights = ", ".join(p.weight_format(b).describe() for b in sorted(p.weight_formats))
        table.add_row(p.name, acts, weights, " ".join(p.modes), p.placement)
    out.print(table)
    out.print(f"{len(items)} profiles")
