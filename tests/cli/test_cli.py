"""The CLI end to end, as a user runs it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.helpers import one_error_line as _one_error_line
from tests.helpers import quantlens
from tests.models import conv_bn_model, single_op_model


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), path)
    return path


def test_inspect_json(model_file: Path) -> None:
    result = quantlens("inspect", str(model_file), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "inspect"
    assert [layer["id"] for layer in report["layers"]] == ["conv1", "conv2", "matmul"]
    assert report["op_histogram"]["Conv"] == 2
    assert report["opset"] == 11 and report["opset_canonical"] == 13
    assert report["unsupported"] == []


def test_inspect_table_ends_with_summary(model_file: Path) -> None:
    result = quantlens("inspect", str(model_file))
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("conv_bn.onnx: 17 nodes, 3 quantizable layers")


def test_check_passes_and_writes_json(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    result = quantlens("check", str(model_file), "--random", "3", "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("PASS: conv_bn.onnx, 3 samples")
    report = json.loads(out.read_text())
    assert report["passed"] and report["outputs"][0]["relative_error"] <= 1e-4


def test_check_fails_with_exit_1_when_tolerance_is_impossible(tmp_path: Path) -> None:
    # A Sigmoid, not conv_bn: ONNX Runtime's optimization levels agree on it on every CPU (on
    # an AVX-512 one they differ on conv_bn by 3.5e-7, a spread `check` accepts), while
    # torch's and MLAS's sigmoids differ by float32 ulps.
    path = tmp_path / "sigmoid.onnx"
    onnx.save(single_op_model("Sigmoid", width=4096), path)
    result = quantlens("check", str(path), "--random", "1", "--tolerance", "-1")
    assert result.returncode == 1
    assert "FAIL" in result.stdout


def test_unsupported_op(tmp_path: Path) -> None:
    path = tmp_path / "custom.onnx"
    onnx.save(single_op_model("MyFancyOp", domain="com.example"), path)
    line = _one_error_line(quantlens("check", str(path), "--random", "1"))
    assert "unsupported op com.example::MyFancyOp" in line and "'the_node'" in line
    listed = json.loads(quantlens("inspect", str(path), "--json").stdout)
    assert listed["unsupported"] == [
        {"node": "the_node", "op_type": "MyFancyOp", "domain": "com.example"}
    ]


def test_missing_shape_for_dynamic_dimension(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 48, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 48, "W"])],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    line = _one_error_line(quantlens("check", str(path), "--random", "1"))
    assert "dynamic dimensions" in line and "--input-shape x:1,3,48,?" in line
    ok = quantlens("check", str(path), "--random", "1", "--input-shape", "x:2,3,48,64")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"not onnx", "corrupt or not an ONNX file"), (b"", "is empty")],
)
def test_bad_model_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    for command in ("inspect", "check"):
        assert message in _one_error_line(quantlens(command, str(path)))


def test_truncated_model(tmp_path: Path, model_file: Path) -> None:
    data = model_file.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    assert "corrupt or not an ONNX file" in _one_error_line(quantlens("inspect", str(path)))


def test_unknown_model_name() -> None:
    line = _one_error_line(quantlens("inspect", "no-such-model"))
    assert "neither a file nor a zoo model" in line and "doclayout-yolov8n" in line


def test_data_make_is_deterministic(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        result = quantlens(
            "data", "make", "rotated-pages", "-n", "2", "-o", str(tmp_path / folder), "--seed", "5"
        )
        assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert "labels.txt" in files and len(files) == 3
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert "unknown sample kind" in _one_error_line(quantlens("data", "make", "faces"))


def test_cli_analyze_small_model(model_file: Path, tmp_path: Path) -> None:
    import numpy as np

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        x = np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.savez(calib / f"{i}.npz", x=x)
    result = quantlens(
        "analyze",
        str(model_file),
        "--calib",
        str(calib),
        "--target",
        "qnn-htp",
        "-o",
        str(tmp_path / "run"),
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "3 layers on qnn-htp" in last and (tmp_path / "run" / "analysis.json").is_file()
