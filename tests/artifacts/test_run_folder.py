"""The run folder: one table of artifact files, schema versions checked on read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quantlens.artifacts.folder import ARTIFACT_FILES, RunFolder
from quantlens.artifacts.provenance import CommandLog
from quantlens.errors import UserError
from quantlens.schemes.assignment import Assignment


def test_every_artifact_has_one_file_name() -> None:
    names = [name for name, _ in ARTIFACT_FILES.values()]
    assert len(names) == len(set(names))
    folder = RunFolder("runs/x")
    assert folder.file(Assignment) == Path("runs/x/assignment.json")


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write(Assignment(target="hailo8", default="a8_w8", layers={"conv1": "a16_w16"}))
    read = folder.read(Assignment)
    assert read is not None and read.layers == {"conv1": "a16_w16"}
    assert folder.read(CommandLog) is None


def test_missing_artifact_names_the_command_that_writes_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="quantlens search"):
        RunFolder(tmp_path).require(Assignment, writer="quantlens search")


def test_older_schema_version_is_one_clear_error(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    path = folder.write(Assignment(target="hailo8", default="a8_w8"))
    data = json.loads(path.read_text())
    data["schema_version"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema version 0, written by an older quantlens"):
        folder.read(Assignment)


def test_report_imports_no_pipeline_and_no_torch() -> None:
    """The report renders from artifact schemas only: no torch, no ONNX Runtime, no pipeline."""
    code = (
        "import sys, quantlens.report.render\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'quantlens.quantize', "
        "'quantlens.evaluation', 'quantlens.pipeline.quantize') if m in sys.modules]\n"
        "print(heavy)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
