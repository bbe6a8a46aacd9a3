"""`quantlens export` and `quantlens import`: a run folder to the vendor's own files and back."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from quantlens.cli.app import app
from quantlens.cli.console import out, records, say, styled
from quantlens.cli.options import (
    FormatOpt,
    ModelOpt,
    NameMapOpt,
    OutputOpt,
    RunDirArg,
    output_file,
)

if TYPE_CHECKING:
    from quantlens.export.vendors.base import Dropped


@app.command("export")
@records("run_dir", reads=True)
def export_cmd(
    run_dir: RunDirArg,
    fmt: FormatOpt,
    output: OutputOpt = None,
    name_map: NameMapOpt = None,
    model: Annotated[
        Path | None,
        typer.Option(help="The quantized ONNX model (default: the one the run folder saved)."),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Fail, instead of warning, on a plan entry the vendor's graph cannot hold "
            "(a name its fusions remove, a precision a fused op cannot take).",
        ),
    ] = False,
) -> None:
    """Write the run's assignment and ranges in a vendor's own format."""
    from quantlens.pipeline.export import default_output, export_vendor

    target = None if output is None else output_file(output, default_output(fmt).name)
    result = export_vendor(
        run_dir, fmt, output=target, name_map=name_map, model=model, strict=strict
    )
    _print_dropped(result.dropped)
    for warning in result.warnings:
        out.print(styled(("warning", "yellow"), f" {warning}"))
    if result.usage:
        out.print(f"use: {result.usage}")
    out.print(
        f"{result.format}: {result.entries} entries in {', '.join(result.files)}; "
        f"{len(result.dropped)} dropped"
    )


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="The vendor file to read.")],
    fmt: FormatOpt,
    model: ModelOpt,
    output: OutputOpt = None,
    name_map: NameMapOpt = None,
) -> None:
    """Read a vendor file (model script, qtable, overrides) into an assignment.json."""
    from quantlens.pipeline.export import import_vendor
    from quantlens.pipeline.session import resolve_model

    path = resolve_model(model, say=say)
    target = output_file(output or Path("."), "assignment.json")
    assignment = import_vendor(file, fmt, path, name_map=name_map)
    assignment.save(target)
    modes = collections.Counter(assignment.layers.values())
    summary = ", ".join(f"{m} x{n}" for m, n in modes.most_common()) or "no per-layer entries"
    out.print(f"{target}: default {assignment.default}, {summary}")


def _print_dropped(dropped: list[Dropped], shown: int = 3) -> None:
    """One line per reason, naming the first few entries: a model of 200 layers dropped for one
    reason is one line, not 200."""
    by_reason: dict[str, list[Dropped]] = collections.defaultdict(list)
    for item in dropped:
        by_reason[item.reason].append(item)
    for reason, items in by_reason.items():
        names = ", ".join(f"{item.layer} ({item.mode})" for item in items[:shown])
        more = f" and {len(items) - shown} more" if len(items) > shown else ""
        out.print(styled(("dropped", "yellow"), f" {names}{more}: {reason}"))
