"""The bad-input suite's world: tiny models, data and one quantized run folder, built once.

Commands run in-process through `quantlens.cli.run` (the console entry point's body), so a case
costs what its command costs, not a Python start. `invoke` returns the exit code and what was
printed; `answer_shape` asserts the one-line answer the README promises.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlens.cli import run
from tests.helpers import npz_folder
from tests.models import conv_bn_model


@dataclass
class World:
    root: Path
    model: Path
    calib: Path
    run: Path
    labels: Path

    def paths(self) -> dict[str, str]:
        return {
            "model": str(self.model),
            "calib": str(self.calib),
            "run": str(self.run),
            "labels": str(self.labels),
        }


@dataclass
class Answer:
    code: int
    out: str
    err: str


def invoke(capsys: pytest.CaptureFixture[str], *argv: str) -> Answer:
    capsys.readouterr()
    code = run(list(argv))
    captured = capsys.readouterr()
    return Answer(code, captured.out, captured.err)


def answer_shape(answer: Answer, code: int, needle: str = "") -> str:
    """Exactly one `error:` line, the exit code, no traceback; the line holds `needle`."""
    text = answer.out + answer.err
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert answer.code == code, text
    assert len(errors) == 1, text
    assert "Traceback" not in text, text
    assert needle in errors[0], errors[0]
    return errors[0]


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative name -> sha256): 'nothing written' is equality."""
    found = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def quantize_into(capsys: pytest.CaptureFixture[str], model: Path, calib: Path, out: Path) -> None:
    answer = invoke(capsys, "quantize", str(model), "--calib", str(calib), "-o", str(out))
    assert answer.code == 0, answer.out + answer.err


def external_data_model(folder: Path, location: str) -> Path:
    """x + w with `w` stored in an external file named `location` (relative to the model)."""
    weight = numpy_helper.from_array(np.ones((1, 4), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("badinput")
    model = root / "model.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    calib = npz_folder(root / "calib", 4)
    labels = root / "labels.txt"
    labels.write_text("".join(f"{i:03d}.npz\t{i % 10}\n" for i in range(4)))
    yield World(root=root, model=model, calib=calib, run=root / "run", labels=labels)


@pytest.fixture(scope="session")
def quantized(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished quantize run folder (copy it before changing it)."""
    from quantlens.cli import run as run_cli

    code = run_cli(
        ["quantize", str(world.model), "--calib", str(world.calib), "-o", str(world.run)]
    )
    assert code == 0
    return world.run


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each case runs in its own folder, so default outputs (runs/<command>) land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target
