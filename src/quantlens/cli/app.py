"""The typer applications the command modules register on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="quantlens",
    help="Find where int8 quantization hurts an ONNX model, and fix it for the target chip.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Real models shipped inside PyPI wheels.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
data_app = typer.Typer(help="Generated data with known ground truth.", no_args_is_help=True)
app.add_typer(data_app, name="data")
