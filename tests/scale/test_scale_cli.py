"""The scale-out flags: absent, nothing changes and Ray is not imported; given without Ray, one
error naming the extra; given with Ray, the single-process numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from quantlens.cli import run
from tests.helpers import npz_folder
from tests.models import conv_bn_model

COMMANDS = ("quantize", "analyze", "search", "eval")


@pytest.fixture
def model_and_data(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    return model, npz_folder(tmp_path / "data", 6)


def test_every_data_command_takes_the_flags() -> None:
    for command in COMMANDS:
        done = subprocess.run(
            [sys.executable, "-m", "quantlens", command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            env={"COLUMNS": "200", "PATH": ""},
        )
        assert "--workers" in done.stdout and "--ray-address" in done.stdout, command


def test_flags_without_ray_are_one_error(
    model_and_data: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data = model_and_data
    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the extra sees
    code = run(["eval", str(model), "--data", str(data), "--task", "distance", "--workers", "2"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1
    assert len(errors) == 1 and "pip install 'quantlens[ray]'" in errors[0], errors


PROBE = """
import sys
from quantlens.cli import run
code = run(sys.argv[1:])
print(sys.argv[1], "EXIT", code, "RAY", "ray" in sys.modules, file=sys.stderr)
"""


def test_without_the_flags_ray_is_never_imported(
    model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = model_and_data
    out = tmp_path / "eval.json"
    args = ["eval", str(model), "--data", str(data), "--task", "distance", "-o", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300
    )
    assert done.stderr.strip().splitlines()[-1] == "eval EXIT 0 RAY False", done.stderr
    assert json.loads(out.read_text())["samples"] == 6
