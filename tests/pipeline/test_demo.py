"""`quantlens demo` end to end (about 3 minutes on 2 cores, so it is in the slow suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import quantlens


@pytest.mark.zoo
@pytest.mark.slow
def test_demo_runs_the_whole_job(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    result = quantlens("demo", "-o", str(run), "--calib-count", "8", "--eval-count", "4")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("demo: map50_95 float") and str(run) in last
    assert last.endswith(f"report {run / 'report.html'}")
    files = ("model.qdq.onnx", "quantize.json", "eval.json", "analysis.json", "model.alls")
    for name in (*files, "graph.json", "command.json", "report.html"):
        assert (run / name).is_file(), name
    # doclayout's ONNX names fit no Hailo model-script line: the summary says entries were
    # dropped and how to see why, rather than leaving a near-empty model.alls unexplained.
    vendor = next(line for line in result.stdout.splitlines() if line.startswith("vendor files"))
    assert "entries dropped" in vendor and "--format hailo" in vendor
