"""Commands that need no model start without torch; the CLI's modules stay small."""

from __future__ import annotations

import collections
import inspect
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

import quantlens.cli
from quantlens.cli import app
from quantlens.pipeline.quantize import QuantizeOptions, quantize_model

CLI = Path(quantlens.cli.__file__).parent

PROBE = """
import sys
from quantlens.cli import main
sys.argv = ["quantlens", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
heavy = [name for name in ("torch", "onnxruntime") if name in sys.modules]
print("HEAVY", heavy, "EXIT", code, file=sys.stderr)
"""


def _heavy_modules(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120
    )
    last = done.stderr.strip().splitlines()[-1]
    assert last.endswith("EXIT 0"), done.stderr
    return last


@pytest.mark.parametrize("args", [["--help"], ["version"], ["profiles"], ["zoo", "list"]])
def test_commands_without_a_model_do_not_import_torch(args: list[str]) -> None:
    assert _heavy_modules(*args).startswith("HEAVY []")


def test_report_does_not_import_torch(conv_bn: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = conv_bn
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    assert _heavy_modules("report", str(run)).startswith("HEAVY []")
    assert (run / "report.html").is_file()


def test_cli_modules_are_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in CLI.glob("*.py")}
    assert max(sizes.values()) <= 300, sizes


# Parameters whose meaning differs by command, so each command declares its own.
OWN_MEANING = {
    "model": "the model argument; an optional model for doctor, a moved model for export",
    "data": "samples to check, analyse, compare or evaluate",
    "calib": "required where a command calibrates, optional where eval may quantize",
    "target": "the demo has its own showcase target",
    "output": "a run folder, or the one file a command writes",
    "seed": "random inputs for check, rendered pages for data make",
    "samples": "samples analysed vs samples for the search's SNR checks",
    "task": "optional for search, required for eval",
    "fmt": "a vendor file format for export/import, a dump format for compare",
    "name_map": "ONNX node -> Hailo layer for export/import, dump name -> tensor for compare",
    "top": "rows of worst layers (analyze) or worst tensors (compare)",
}


def _commands() -> list[tuple[str, Any]]:
    found = []

    def walk(typer_app: Any, prefix: str) -> None:
        for command in typer_app.registered_commands:
            callback = inspect.unwrap(command.callback)
            found.append((prefix + (command.name or callback.__name__), callback))
        for group in typer_app.registered_groups:
            walk(group.typer_instance, f"{prefix}{group.name} ")

    walk(app, "")
    return found


def test_no_option_is_declared_twice() -> None:
    """An option two commands share is one declaration (cli/options.py) unless its meaning
    differs by command."""
    declarations: dict[str, set[int]] = collections.defaultdict(set)
    for _, callback in _commands():
        for name, hint in typing.get_type_hints(callback, include_extras=True).items():
            if name != "return":
                declarations[name].add(id(hint.__metadata__[0]))
    repeated = {name for name, ids in declarations.items() if len(ids) > 1}
    assert repeated <= OWN_MEANING.keys(), repeated - OWN_MEANING.keys()
    assert len(declarations["input_shape"]) == len(declarations["method"]) == 1
