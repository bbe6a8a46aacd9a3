"""A two-node Ray cluster on this machine (`ray start --head` plus `ray start --address`, one CPU
each, so the two actors land on different nodes): `quantlens eval --ray-address` prints the
numbers of one process. Slow (starting a cluster takes a while): run with -m slow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantlens.emulate.ort import OrtRunner
from tests.models import conv_bn_model
from tests.scale.conftest import assert_same

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray")
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray(*args: str) -> None:
    done = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=180, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]


def _env() -> dict[str, str]:
    # Ray 2.60 clusters authenticate by token (~/.ray/auth_token here); every process says so.
    return {**os.environ, "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1"}


def _stop(marker: str) -> None:
    """End this cluster's processes only (`ray stop` would end every Ray on the machine): those
    whose command line names its own temp folder."""
    for pid in Path("/proc").iterdir():
        try:
            if marker in (pid / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(pid.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.fixture
def cluster() -> Iterator[str]:
    if not Path(RAY).is_file():
        pytest.skip("the ray command is not installed")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # A short temp folder of its own (Ray's socket paths must stay under 108 bytes).
    temp = tempfile.mkdtemp(prefix="qlray-", dir="/tmp")
    try:
        _ray("start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}")
        _ray("start", f"--address={address}", "--num-cpus=1", f"--temp-dir={temp}")
        yield address
    finally:
        _stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _eval(model: Path, data: Path, out: Path, *more: str) -> dict[str, object]:
    args = ["eval", str(model), "--data", str(data), "--task", "classification"]
    args += ["--target", "ort-cpu", "-o", str(out), *more]
    # One torch thread in every process (_env): the same rounding as the one-CPU workers.
    env = _env()
    done = subprocess.run(
        [sys.executable, "-m", "quantlens", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=out.parent.parent,  # quantizing here writes runs/eval under the working folder
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())
    assert found["samples"] == 18
    return {k: v for k, v in found.items() if k not in ("seconds", "run_dir")}


def test_eval_on_a_two_node_cluster_equals_one_process(cluster: str, tmp_path: Path) -> None:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    data = tmp_path / "data"
    data.mkdir()
    runner = OrtRunner(model)
    rng = np.random.default_rng(4)
    rows = []
    for i in range(18):
        x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.save(data / f"s{i:02d}.npy", x)
        label = int(runner.run({"x": x})["y"].argmax()) if i % 3 else 1
        rows.append(f"s{i:02d}.npy\t{label}\n")
    (data / "labels.txt").write_text("".join(rows))
    alone = _eval(model, data, tmp_path / "alone" / "eval.json")
    spread = _eval(
        model, data, tmp_path / "two" / "eval.json", "--ray-address", cluster, "--workers", "2"
    )
    assert_same(spread, alone)
