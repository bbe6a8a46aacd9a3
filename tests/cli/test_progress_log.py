"""Long runs are not silent in a log: without a terminal, progress is plain lines (first step,
at most every 30 s, the end), and a default run folder is named when it is used."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from quantlens.cli import console
from tests.helpers import npz_folder, quantlens
from tests.models import conv_bn_model


def test_progress_and_default_run_folder_reach_a_log(tmp_path: Path) -> None:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    calib = npz_folder(tmp_path / "calib", 4)
    result = quantlens("quantize", str(model), "--calib", str(calib), "-o", str(tmp_path / "q"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if re.match(r"quantize: \d+/\d+", line)]
    assert lines and lines[-1].startswith("quantize: 4/4 after"), result.stderr
    assert lines[0].startswith("quantize: 1/4 after"), result.stderr  # the first step
    # Run where the default folder may be written: the test's own folder.
    command = [sys.executable, "-m", "quantlens", "eval", str(model), "--data", str(calib)]
    command += ["--task", "distance", "--target", "ort-cpu"]
    default = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert (tmp_path / "runs" / "eval" / "plan.json").is_file()
    assert "run folder: runs/eval (the default; --run names another)" in default.stderr


def test_time_left_follows_the_current_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """One label, two loops: the second (824 steps of 0.01 s after a 12 s loop) gets its time
    left from its own pace, not from the whole command's elapsed time."""
    lines: list[str] = []
    monkeypatch.setattr(console, "say", lines.append)
    now = [0.0]
    update = console._log_lines("search", clock=lambda: now[0])
    for done in range(1, 9):  # the first loop: 1.5 s a step
        now[0] += 1.5
        update(done, 8)
    now[0] += 0.01
    update(1, 824)
    now[0] += 30.0
    update(30, 824)
    assert lines[0] == "search: 1/8 after 2s"
    assert lines[-3] == "search: 8/8 after 12s"
    assert lines[-2] == "search: 1/824 after 12s"
    assert lines[-1] == "search: 30/824 after 42s, about 821s left"


def test_time_left_leaves_out_the_first_steps_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full evaluation's first sample waits for the export and the session (280 s), the
    other 63 take 1 s each: the time left follows the 1 s steps."""
    lines: list[str] = []
    monkeypatch.setattr(console, "say", lines.append)
    now = [0.0]
    update = console._log_lines("search", clock=lambda: now[0])
    update(0, 64)
    now[0] += 280.0
    update(1, 64)
    for done in range(2, 65):
        now[0] += 1.0
        update(done, 64)
    assert lines[:2] == ["search: 0/64 after 0s", "search: 1/64 after 280s"]
    assert lines[2] == "search: 31/64 after 310s, about 33s left"
    assert lines[-1] == "search: 64/64 after 343s"
