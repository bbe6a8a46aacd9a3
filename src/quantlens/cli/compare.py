"""`quantlens compare`: another runtime's per-layer dump against float and our emulation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from quantlens.cli.app import app
from quantlens.cli.console import out, print_json, progress, records
from quantlens.cli.options import DeviceOpt, JsonOpt, RunDirArg, RunDirOpt

if TYPE_CHECKING:
    from quantlens.artifacts.compare import CompareReport

DumpsOpt = Annotated[
    Path,
    typer.Option(
        "--dumps",
        help="The dump: an .npz (ours or TPU-MLIR's --dump_all_tensors), a folder of SNPE/QNN "
        ".raw outputs, or an ONNX model to run with every tensor as an output.",
    ),
]
DumpFormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="npz, tpu-mlir, snpe-raw or onnx-outputs.")
]
DumpNameMapOpt = Annotated[
    Path | None, typer.Option("--name-map", help="JSON: name in the dump -> our tensor name.")
]
InputsOpt = Annotated[
    Path | None,
    typer.Option("--inputs", help=".npz of the graph inputs, when the dump does not hold them."),
]


@app.command()
@records("run_dir", reads=True)
def compare(
    run_dir: RunDirArg,
    dumps: DumpsOpt,
    fmt: DumpFormatOpt = "npz",
    name_map: DumpNameMapOpt = None,
    inputs: InputsOpt = None,
    output: RunDirOpt = None,
    threshold: Annotated[
        float, typer.Option(help="SNR (dB) against our emulation below which a tensor parts.")
    ] = 40.0,
    top: Annotated[
        int, typer.Option(help="Rows of the table: the worst against emulation, and replayed ops.")
    ] = 20,
    device: DeviceOpt = "cpu",
    json: JsonOpt = False,
) -> None:
    """Per layer: the dump against float and against our emulation of the run (SNR, cosine, max
    error, integer codes), and the first layer where the dump and the emulation part, with why:
    its op replayed from the dump's own inputs says whether the op itself differs (grid,
    rounding ties, float summation order, other values) or inherits earlier layers' noise."""
    from quantlens.pipeline.compare import compare_dumps

    with progress("comparing samples") as update:
        report = compare_dumps(
            run_dir,
            dumps,
            fmt,
            name_map=name_map,
            inputs=inputs,
            output=output,
            threshold_db=threshold,
            device=device,
            progress=update,
        )
    if json:
        print_json(report.to_json())
        return
    out.print(_table(report, top))
    for note in report.notes:
        out.print(f"note: {note}", markup=False)
    out.print(_summary(report))


def _db(value: float) -> str:
    return "inf" if math.isinf(value) and value > 0 else f"{value:.1f}"


def _table(report: CompareReport, top: int) -> Table:
    table = Table(title=f"{report.format} dump vs float and vs our {report.target} emulation")
    columns = ("tensor", "op", "vs float dB", "vs emulation dB", "cosine", "codes equal")
    for column in (*columns, "op alone"):
        table.add_column(column, justify="left" if column in ("tensor", "op") else "right")
    # The per-op replays: our op from the dump's own inputs, dB against the dump, and why.
    replays = {r.tensor: f"{_db(r.agreement.snr_db)} {r.cause}" for r in report.replays}
    worst = sorted(report.tensors, key=lambda t: t.vs_emulation.snr_db)[:top]
    shown = {t.tensor for t in worst} | set(replays)
    for entry in (t for t in report.tensors if t.tensor in shown):
        codes = "" if entry.codes_equal is None else f"{100 * entry.codes_equal:.2f}%"
        table.add_row(
            entry.tensor,
            entry.op_type,
            _db(entry.vs_float.snr_db),
            _db(entry.vs_emulation.snr_db),
            f"{entry.vs_emulation.cosine:.5f}",
            codes,
            replays.get(entry.tensor, ""),
        )
    return table


def _summary(report: CompareReport) -> str:
    first = report.first_divergence
    head = f"compare: {len(report.tensors)} tensors over {report.samples} sample(s)"
    if first is None:
        return f"{head}; all within {report.threshold_db:.0f} dB of our emulation"
    return (
        f"{head}; first below {report.threshold_db:.0f} dB: {first.tensor} "
        f"({_db(first.snr_db)} dB): {first.cause}"
    )
