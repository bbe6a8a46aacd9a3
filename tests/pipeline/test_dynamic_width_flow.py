"""A model from outside the zoo with a dynamic width, fed `.npy` tensors and scored by a plug-in
evaluator: quantize, eval, analyze and search run with no flags beyond the documented ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tests.helpers import quantlens
from tests.models import dynamic_width_model

# Per-step accuracy of a [1, W, classes] output against `labels.txt` (file<TAB>digits).
PLUGIN = """
from pathlib import Path

import numpy as np


class StepAccuracy:
    name, primary = "step-accuracy", "accuracy"

    def __init__(self, labels):
        self.labels, self.scores = labels, {}

    def update(self, outputs, sample):
        steps = np.asarray(next(iter(outputs.values())))[0].argmax(-1)
        truth = np.array([int(c) for c in self.labels[sample.name]])
        self.scores[sample.name] = float(np.mean(steps == truth))

    def result(self):
        return {"accuracy": float(np.mean(list(self.scores.values())))}

    def sample_scores(self):
        return self.scores


def make_evaluator(context):
    lines = (Path(context.data) / "labels.txt").read_text().splitlines()
    return StepAccuracy(dict(line.split("\\t") for line in lines))
"""


def _write_data(root: Path) -> tuple[Path, Path, Path]:
    """The model, 8 calibration lines without a batch axis, 6 evaluation lines with one, of
    widths 12-39, labelled with the float model's own argmax (so float scores 1.0)."""
    model = root / "dw.onnx"
    onnx.save(dynamic_width_model(), model)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    calib, data = root / "calib", root / "data"
    calib.mkdir()
    data.mkdir()
    for i in range(8):
        np.save(calib / f"{i:02d}.npy", rng.standard_normal((3, 8, rng.integers(12, 40))))
    labels = []
    for i in range(6):
        x = rng.standard_normal((1, 3, 8, rng.integers(12, 40))).astype(np.float32)
        np.save(data / f"{i:02d}.npy", x)
        steps = session.run(None, {"x": x})[0][0].argmax(-1)
        labels.append(f"{i:02d}.npy\t" + "".join(str(int(s)) for s in steps))
    (data / "labels.txt").write_text("\n".join(labels) + "\n")
    return model, calib, data


def test_dynamic_width_model_on_npy_data(tmp_path: Path) -> None:
    model, calib, data = _write_data(tmp_path)
    plugin = tmp_path / "step_accuracy.py"
    plugin.write_text(PLUGIN)
    task = f"{plugin}:make_evaluator"
    run = str(tmp_path / "run")
    quantized = quantlens("quantize", str(model), "--calib", str(calib), "-o", run)
    assert quantized.returncode == 0, quantized.stderr
    assert "8 samples" in quantized.stdout.splitlines()[-1]
    scored = quantlens("eval", str(model), "--data", str(data), "--task", task, "--run", run)
    assert scored.returncode == 0, scored.stderr
    assert "accuracy: float 1.0000 -> quantized" in scored.stdout.splitlines()[-1]
    analyzed = quantlens("analyze", str(model), "--calib", str(calib), "-o", run)
    assert analyzed.returncode == 0, analyzed.stderr
    assert "3 layers" in analyzed.stdout.splitlines()[-1]
    searched = quantlens(
        "search", str(model), "--calib", str(calib), "--data", str(data), "--task", task, "-o", run
    )
    assert searched.returncode == 0, searched.stderr
    result = json.loads((tmp_path / "run" / "search.json").read_text())
    assert result["points"], result.keys()
