"""`quantlens import` and `export`: model arguments and `-o` as every other command reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantlens.errors import UserError
from quantlens.pipeline.quantize import QuantizeOptions, quantize_model
from tests.helpers import quantlens


@pytest.mark.zoo
def test_import_takes_a_zoo_model_name(tmp_path: Path) -> None:
    script = tmp_path / "model.alls"
    script.write_text("")
    result = quantlens(
        "import", str(script), "--format", "hailo", "--model", "pplcnet-orientation",
        "-o", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "assignment.json").read_text())
    assert saved["default"] == "a8_w8" and saved["layers"] == {}


def test_export_into_a_folder_gets_the_usual_name(
    conv_bn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = conv_bn
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    result = quantlens("export", str(run), "--format", "hailo", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "model.alls").is_file()


def test_export_strict_fails_where_the_vendor_graph_cannot_hold_the_plan(
    conv_bn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = conv_bn
    assignment = tmp_path / "assignment.json"
    # conv1 fuses with relu1 into one TPU-MLIR op, which runs F32: conv1's INT8 is not held.
    layers = {"conv1": "a8_w8", "relu1": "fp32"}
    assignment.write_text(json.dumps({"default": "fp16", "layers": layers}))
    run = tmp_path / "run"
    options = QuantizeOptions(calib=calib, target="bm1684x", run_dir=run, assignment=assignment)
    with pytest.raises(UserError, match="one fused op"):  # quantize refuses it (#17)
        quantize_model(model, options)
    # A plan another vendor's file cannot hold: Qualcomm encodings have no bfloat16.
    bf16 = {"conv1": "bf16", "relu1": "bf16"}
    assignment.write_text(json.dumps({"default": "a8_w8", "layers": bf16}))
    quantize_model(model, options)
    lenient = quantlens("export", str(run), "--format", "qnn")
    assert lenient.returncode == 0, lenient.stderr
    assert "warning" in lenient.stdout and "conv1" in lenient.stdout
    strict = quantlens("export", str(run), "--format", "qnn", "--strict")
    assert strict.returncode == 1
    assert "error:" in strict.stderr and "conv1" in strict.stderr
