"""A model from outside the zoo with a dynamic width, fed `.npy` tensors and scored by a plug-in
evaluator (the README's): quantize, eval, analyze and search run with no flags beyond the
documented ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from tests.helpers import quantlens
from tests.models import dynamic_width_model

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_plugin() -> str:
    """The plug-in evaluator of the README's worked example, as a user would copy it."""
    found = re.search(r"```python\n(# step_accuracy\.py\n.*?)```", README.read_text(), re.S)
    assert found is not None, "the README's worked example lost its plug-in"
    return found.group(1)


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
    plugin.write_text(_readme_plugin())
    task = f"{plugin}:make_evaluator"
    run = str(tmp_path / "run")
    hailo = ("--target", "hailo8")
    quantized = quantlens("quantize", str(model), "--calib", str(calib), *hailo, "-o", run)
    assert quantized.returncode == 0, quantized.stderr
    assert "8 samples" in quantized.stdout.splitlines()[-1]
    scored = quantlens("eval", str(model), "--data", str(data), "--task", task, "--run", run)
    assert scored.returncode == 0, scored.stderr
    assert "accuracy: float 1.0000 -> quantized" in scored.stdout.splitlines()[-1]
    analyzed = quantlens("analyze", str(model), "--calib", str(calib), *hailo, "-o", run)
    assert analyzed.returncode == 0, analyzed.stderr
    assert "3 layers" in analyzed.stdout.splitlines()[-1]
    searched = quantlens(
        "search",
        str(model),
        "--calib",
        str(calib),
        "--data",
        str(data),
        "--task",
        task,
        *hailo,
        "--no-noise-stop",  # 8 samples cannot resolve the gap; the flow through export is tested
        "-o",
        run,
    )
    assert searched.returncode == 0, searched.stderr
    result = json.loads((tmp_path / "run" / "search.json").read_text())
    assert result["points"], result.keys()
    alls = str(tmp_path / "run" / "model.alls")
    exported = quantlens("export", run, "--format", "hailo", "-o", alls)
    assert exported.returncode == 0, exported.stderr
    assert "quantization_param(" in Path(alls).read_text()
