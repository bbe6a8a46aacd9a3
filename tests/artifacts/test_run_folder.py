"""The run folder: one table of artifact files, schema versions checked on read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantlens.artifacts import journal
from quantlens.artifacts import lock as run_lock
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


def test_a_folder_copied_mid_write_is_undone_and_said_so(tmp_path: Path) -> None:
    """A run folder copied while its writer was inside its unit holds a journal with an empty
    snapshot: the next command undoes the half-written files (they cannot be vouched for) and
    says which command and how many files, instead of failing later on a missing plan."""
    folder = tmp_path / "run"
    folder.mkdir()
    heard: list[str] = []
    with pytest.raises(RuntimeError), journal.writing(folder, "quantize"):
        (folder / "plan.json").write_text("{}")
        (folder / "graph.json").write_text("{}")
        copy = tmp_path / "copy"
        shutil.copytree(folder, copy)  # mid-write: journal, lock and both files
        raise RuntimeError("the original goes on; only the copy matters here")
    (copy / run_lock.LOCK_FILE).unlink()  # the copy's lock names a writer that is not there
    with journal.writing(copy, "compare", notify=heard.append):
        pass
    assert not (copy / "plan.json").exists() and not (copy / "graph.json").exists()
    assert len(heard) == 1
    assert "`quantize` stopped before it finished" in heard[0]
    assert "2 files removed, 0 restored" in heard[0]
    # Nothing left to undo: the next command hears nothing.
    with journal.writing(copy, "compare", notify=heard.append):
        pass
    assert len(heard) == 1


def test_a_failed_first_run_leaves_only_its_filled_caches(tmp_path: Path) -> None:
    """A command that fails in a folder it created leaves no run; once a search cached
    evaluations, the filled caches stay (so `--resume` redoes none of them); before that the
    folder goes whole, calibrations included."""
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError), journal.writing(folder, "search"):
        (folder / "search.json").write_text("{}")
        (folder / "search-cache" / "ctx").mkdir(parents=True)
        (folder / "search-cache" / "ctx" / "abc.json").write_text("{}")
        (folder / "calibration-cache").mkdir()  # empty: nothing to keep
        raise RuntimeError("the export failed")
    left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert left == ["search-cache/ctx/abc.json"]
    early = tmp_path / "early"
    with pytest.raises(RuntimeError), journal.writing(early, "search"):
        (early / "search-cache").mkdir()
        (early / "calibration-cache").mkdir()
        (early / "calibration-cache" / "grid8.json").write_text("{}")
        raise RuntimeError("failed before any evaluation (bad input): no file may stay")
    assert not early.exists()
