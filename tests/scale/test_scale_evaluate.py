"""`eval` on Ray workers gives the numbers of one process: sample shards fold in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from quantlens.emulate.ort import OrtRunner
from quantlens.evaluation import EvalOptions, EvalReport, evaluate_three_way
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.scale import ScaleOptions
from tests.models import conv_bn_model
from tests.scale.conftest import assert_same, one_thread

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """20 samples (three shards of 8, the last short) labelled so float top-1 is not 1."""
    root = tmp_path_factory.mktemp("scale_eval")
    model = root / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    data = root / "data"
    data.mkdir()
    runner = OrtRunner(model)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(20):
        x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.save(data / f"s{i:02d}.npy", x)
        label = int(runner.run({"x": x})["y"].argmax()) if i % 3 else 0
        rows.append(f"s{i:02d}.npy\t{label}\n")
    (data / "labels.txt").write_text("".join(rows))
    run = root / "run"
    quantize_model(model, QuantizeOptions(calib=data, target="ort-cpu", run_dir=run, limit=6))
    return model, data, run


# A plug-in evaluator whose metric depends on the order of its update calls: it only matches
# one process when the driver folds the workers' outputs in sample order.
PLUGIN = """
import numpy as np


class InOrder:
    name, primary = "in-order", "weighted"

    def __init__(self):
        self.names, self.total = [], 0.0

    def update(self, outputs, sample):
        self.names.append(sample.name)
        first = np.asarray(next(iter(outputs.values())), dtype=np.float64)
        self.total += len(self.names) * float(first.mean())

    def result(self):
        return {"weighted": self.total / len(self.names), "samples": float(len(self.names))}

    def sample_scores(self):
        return {name: float(i) for i, name in enumerate(self.names)}


def make(context):
    return InOrder()
"""


def _numbers(report: EvalReport) -> dict[str, object]:
    return report.model_dump(exclude={"seconds", "run_dir"})


@pytest.mark.parametrize("task", ["classification", "distance", "plugin"])
def test_workers_give_the_single_process_numbers(
    setup: tuple[Path, Path, Path], task: str, tmp_path: Path
) -> None:
    model, data, run = setup
    if task == "plugin":
        (tmp_path / "in_order.py").write_text(PLUGIN)
        task = f"{tmp_path / 'in_order.py'}:make"
    with one_thread():
        alone = evaluate_three_way(model, data, task, EvalOptions(run_dir=run))
    for workers in (1, 2):
        scale = ScaleOptions(workers=workers, threads=1)
        options = EvalOptions(run_dir=run, scale=scale)
        spread = evaluate_three_way(model, data, task, options)
        assert spread.samples == 20
        assert_same(_numbers(spread), _numbers(alone))
