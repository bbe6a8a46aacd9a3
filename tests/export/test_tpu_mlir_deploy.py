"""The TPU-MLIR deployment benchmark's own logic (benchmarks/tpu_mlir_deploy.py and the worker's
all-INT8 and reuse paths), without TPU-MLIR: the deploy is cached by what it depends on, an
all-INT8 build passes no qtable, a finished build is reused and an unfinished one is not."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import _vendor_tpu_mlir as worker  # noqa: E402
import tpu_mlir_deploy as bench  # noqa: E402


def _files(tmp_path: Path, qtable: str | None) -> dict[str, str]:
    (tmp_path / "m.float.onnx").write_bytes(b"onnx")
    (tmp_path / "m.cali_table").write_text("x 1.0 -1.0 1.0\n")
    files = {
        ".float.onnx": str(tmp_path / "m.float.onnx"),
        ".cali_table": str(tmp_path / "m.cali_table"),
    }
    if qtable is not None:
        (tmp_path / "m.qtable").write_text(qtable)
        files[".qtable"] = str(tmp_path / "m.qtable")
    return files


def test_deploy_key_follows_every_input(tmp_path: Path) -> None:
    shapes = {"images": [1, 3, 8, 8]}
    plain = bench.deploy_key(_files(tmp_path, None), shapes, "py")
    assert plain == bench.deploy_key(_files(tmp_path, None), shapes, "py")
    mixed = bench.deploy_key(_files(tmp_path, "a F16\n"), shapes, "py")
    other = bench.deploy_key(_files(tmp_path, "b F16\n"), shapes, "py")
    assert len({plain, mixed, other}) == 3
    assert plain != bench.deploy_key(_files(tmp_path, None), {"images": [1, 3, 8, 9]}, "py")
    assert plain != bench.deploy_key(_files(tmp_path, None), shapes, "other-python")


def test_all_int8_passes_no_qtable(tmp_path: Path) -> None:
    assert worker.qtable_args(_files(tmp_path, None)) == []
    args = worker.qtable_args(_files(tmp_path, "a F16\n"))
    assert args[0] == "--quantize_table" and args[1].endswith("m.qtable")


def _fake_build(work: Path, finished: bool) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    mlir = work / f"m_{worker.CHIP}_int8_sym_tpu.mlir"
    mlir.write_text("")
    (work / "m.bmodel").write_bytes(b"")
    if finished:
        (work / worker.DEPLOYED).write_text("[]")
    return mlir


def test_finished_build_is_reused_unfinished_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def no_tool(args: list[str], cwd: Path, name: str) -> float:
        calls.append(name)
        raise worker.ToolError(f"{name} ran")

    monkeypatch.setattr(worker, "run_tool", no_tool)
    job: dict[str, Any] = {"reuse": True, "files": _files(tmp_path, None)}
    job["input_shapes"] = {"images": [1, 3, 8, 8]}
    job["float_model"] = job["files"][".float.onnx"]
    monkeypatch.setattr(worker, "graph_names", lambda path: (["images"], ["out"]))
    done = tmp_path / "done"
    kept = _fake_build(done, finished=True)
    notes: list[str] = []
    assert worker.compile_model(job, done, notes) == kept
    assert calls == [] and "reused" in notes[0]
    # A build killed before its marker (or a job without reuse) deploys again.
    half = tmp_path / "half"
    _fake_build(half, finished=False)
    with pytest.raises(worker.ToolError, match="model_transform ran"):
        worker.compile_model(job, half, [])
    with pytest.raises(worker.ToolError):
        worker.compile_model({**job, "reuse": False}, done, [])
    assert not (done / worker.DEPLOYED).exists()  # a rebuild drops the stale marker first


def test_predictions_read_plain_int8_and_chosen(tmp_path: Path) -> None:
    record = {
        "metric_name": "map50_95",
        "float_metric": 0.6,
        "chosen": "c",
        "points": [
            {"key": "a", "label": "all-int8", "metric": 0.4, "cost": 1.0, "modes": {}},
            {"key": "f", "label": "all-int8 + fixes", "metric": 0.45, "cost": 1.0},
            {"key": "c", "label": "milp", "metric": 0.58, "cost": 1.02, "modes": {"x": "fp16"}},
        ],
    }
    path = tmp_path / "search.json"
    path.write_text(json.dumps(record))
    got = bench.predictions(path)
    assert (got.float_, got.int8, got.chosen) == (0.6, 0.4, 0.58)
    assert got.chosen_modes == {"x": "fp16"}
    assert bench.recovered(got.float_, got.int8, got.chosen) == pytest.approx(90.0)
    assert bench.recovered(0.5, 0.5, 0.5) is None


def test_interpreter_scores_every_sample_and_the_bmodel_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    ran: list[tuple[str, int]] = []

    def fake_run(model: Path, batches: list[Any], outputs: list[str], work: Path, prefix: str = ""):
        ran.append((model.suffix, len(batches)))
        path = work / f"{prefix}outputs.npz"
        np.savez(path, out=np.zeros((len(batches), 2), np.float32))
        return path

    monkeypatch.setattr(worker, "run_model", fake_run)
    np.savez(tmp_path / "in.npz", images=np.zeros((3, 1, 2, 2), np.float32))
    job: dict[str, Any] = {
        "inputs": str(tmp_path / "in.npz"),
        "input_shapes": {"images": [1, 1, 2, 2]},
        "runner": "tpu-mlir",
        "bmodel_samples": 1,
        "outputs_name": "o.npz",
        "reuse": True,
    }
    mlir = tmp_path / "m_tpu.mlir"
    found = worker.run_outputs(job, tmp_path, mlir, ["out"], [])
    assert ran == [(".mlir", 3), (".bmodel", 1)]
    assert Path(found["outputs"]).name == "o.npz"
    assert Path(found["bmodel_outputs"]).name == "bmodel1-o.npz"
    worker.run_outputs(job, tmp_path, mlir, ["out"], [])  # both kept: nothing runs again
    assert len(ran) == 2
    with pytest.raises(worker.ToolError, match="unknown runner"):
        worker.run_outputs({**job, "runner": "gpu"}, tmp_path, mlir, ["out"], [])
    agree = bench.agreement(found["outputs"], found["bmodel_outputs"])
    assert agree["equal_share"] == 1.0 and agree["pages"] == 1


def test_deploys_disable_layer_groups_unless_asked_and_key_them(tmp_path: Path) -> None:
    # TPU-MLIR 1.30.2's layer groups broke doclayout's mixed bmodel (BENCHMARKS.md).
    assert bench.deploy_args(argparse.Namespace(layer_groups=False)) == ["--disable_layer_group"]
    assert bench.deploy_args(argparse.Namespace(layer_groups=True)) == []
    shapes = {"images": [1, 3, 8, 8]}
    plain = bench.deploy_key(_files(tmp_path, "a F32\n"), shapes, "py")
    assert plain == bench.deploy_key(_files(tmp_path, "a F32\n"), shapes, "py", [])
    assert plain != bench.deploy_key(
        _files(tmp_path, "a F32\n"), shapes, "py", ["--disable_layer_group"]
    )


def test_worker_passes_deploy_args_to_model_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, list[str]] = {}

    def record(args: list[str], cwd: Path, name: str) -> float:
        seen[name] = args
        return 0.0

    monkeypatch.setattr(worker, "run_tool", record)
    monkeypatch.setattr(worker, "graph_names", lambda path: (["images"], ["out"]))
    job: dict[str, Any] = {"files": _files(tmp_path, "a F32\n")}
    job.update(input_shapes={"images": [1, 3, 8, 8]}, float_model=job["files"][".float.onnx"])
    job["deploy_args"] = ["--disable_layer_group"]
    work = tmp_path / "w"
    _fake_build(work, finished=False)
    worker.compile_model(job, work, [])
    assert seen["model_deploy"][-1] == "--disable_layer_group"
    assert "--disable_layer_group" not in seen["model_transform"]


def test_all_int8_build_needs_a_full_table_when_the_point_has_float_nodes() -> None:
    def args(**kw: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"builds": ["chosen", "int8"], "int8_run": None, **kw})

    mixed = {"/model.22/Mul_2": "fp32", "/model.0/conv/Conv": "a8_w8"}
    problem = bench.int8_table_problem(args(), mixed)
    assert problem is not None and "--int8-run" in problem and "/model.22/Mul_2" in problem
    assert bench.int8_table_problem(args(int8_run=Path("r")), mixed) is None
    assert bench.int8_table_problem(args(builds=["chosen"]), mixed) is None
    assert bench.int8_table_problem(args(), {"/model.0/conv/Conv": "a8_w8"}) is None
