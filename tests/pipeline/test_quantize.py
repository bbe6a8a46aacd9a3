"""`quantlens quantize` end to end: run folder, QDQ model in ONNX Runtime, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment
from tests.helpers import npz_folder, quantlens
from tests.helpers import one_error_line as _one_error_line
from tests.models import conv_bn_model


def _npz_folder(folder: Path, count: int, shape: tuple[int, ...] = (1, 3, 8, 8)) -> Path:
    return npz_folder(folder, count, shape)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    return model, _npz_folder(tmp_path / "calib", 6)


@pytest.mark.parametrize("target", ["ort-cpu", "qnn-htp", "bm1684x", "hailo8"])
def test_quantize_small_model_every_profile(
    small: tuple[Path, Path], tmp_path: Path, target: str
) -> None:
    model, calib = small
    run = tmp_path / target
    report = quantize_model(model, QuantizeOptions(calib=calib, target=target, run_dir=run))
    for name in (
        "model.qdq.onnx",
        "calibration.json",
        "assignment.json",
        "plan.json",
        "quantize.json",
    ):
        assert (run / name).is_file(), name
    session = ort.InferenceSession(str(run / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(calib / "000.npz")["x"]
    assert session.run(None, {"x": x})[0].shape == (1, 10)
    assert report.worst_snr() > 20
    agree = report.outputs[0].emulator_vs_onnxruntime
    assert agree is not None and agree.pooled_snr_db >= 40
    # ORT with vs without its graph optimizations: measured, and on this small model as close
    # as the emulator (the floor only matters on deep models such as the OCR recognizer).
    assert agree.onnxruntime_self_db is not None and agree.onnxruntime_self_db >= 40
    assert json.loads((run / "quantize.json").read_text())["kind"] == "quantize"


def test_rerun_reuses_calibration(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    options = QuantizeOptions(calib=calib, run_dir=tmp_path / "run")
    assert not quantize_model(model, options).calibration_reused
    assert quantize_model(model, options).calibration_reused
    changed = QuantizeOptions(calib=calib, run_dir=tmp_path / "run", method="minmax")
    assert not quantize_model(model, changed).calibration_reused


def test_mixed_assignment(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    path = Assignment(target="ort-cpu", layers={"conv2": "a16_w16", "matmul": "fp32"}).save(
        tmp_path / "a.json"
    )
    report = quantize_model(
        model, QuantizeOptions(calib=calib, run_dir=tmp_path / "run", assignment=path)
    )
    assert report.modes == {"a8_w8": 4, "a16_w16": 1, "fp32": 1}
    agree = report.outputs[0].emulator_vs_onnxruntime
    assert agree is not None and agree.pooled_snr_db >= 40


def test_cli_quantize_summary(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    result = quantlens("quantize", str(model), "--calib", str(calib), "-o", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    assert "worst output SNR" in result.stdout.strip().splitlines()[-1]


def test_bad_calibration_inputs(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = small
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_error_line(quantlens("quantize", str(model), "--calib", str(empty)))
    assert "has no images or .npy/.npz files" in line
    missing = _one_error_line(quantlens("quantize", str(model), "--calib", str(tmp_path / "no")))
    assert "no" in missing
    wrong = _npz_folder(tmp_path / "wrong", 2, shape=(1, 1, 8, 8))
    line = _one_error_line(quantlens("quantize", str(model), "--calib", str(wrong)))
    assert "shape" in line and "[1, 1, 8, 8]" in line
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png")
    assert "a.png" in _one_error_line(quantlens("quantize", str(model), "--calib", str(corrupt)))


def test_nan_in_activations_names_the_tensor(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = small
    folder = tmp_path / "nan"
    folder.mkdir()
    x = np.ones((1, 3, 8, 8), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(folder / "0.npz", x=x)
    line = _one_error_line(quantlens("quantize", str(model), "--calib", str(folder)))
    assert "NaN" in line and "'x'" in line


def test_bad_assignments(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    unknown = Assignment(layers={"conv_2": "a16_w16"}).save(tmp_path / "unknown.json")
    line = _one_error_line(
        quantlens("quantize", str(model), "--calib", str(calib), "--assignment", str(unknown))
    )
    assert "'conv_2'" in line and "did you mean conv2" in line
    fp16 = Assignment(layers={"conv2": "fp16"}).save(tmp_path / "fp16.json")
    line = _one_error_line(
        quantlens(
            "quantize",
            str(model),
            "--calib",
            str(calib),
            "--assignment",
            str(fp16),
            "--target",
            "hailo8",
        )
    )
    assert "mode fp16 for layer 'conv2' is not allowed on hailo8" in line


@pytest.mark.zoo
@pytest.mark.parametrize("layers", [{}, {"Conv.30": "a16_w16", "Conv.31": "a16_w8"}])
def test_zoo_orientation_agrees_with_onnxruntime(tmp_path: Path, layers: dict[str, str]) -> None:
    images = write_samples("rotated-pages", 8, tmp_path / "pages", seed=3)
    assignment = Assignment(target="ort-cpu", layers=layers).save(tmp_path / "a.json")
    report = quantize_model(
        zoo.fetch("pplcnet-orientation"),
        QuantizeOptions(calib=images, run_dir=tmp_path / "run", assignment=assignment),
    )
    agree = report.outputs[0].emulator_vs_onnxruntime
    assert agree is not None and agree.pooled_snr_db >= 40 and agree.argmax_match == 1.0
    assert report.worst_snr() > 30


def test_cli_export_and_import_round_trip(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    layers = {"conv2": "a16_w16", "matmul": "a8_w8_a16"}
    assignment = Assignment(target="hailo8", layers=layers).save(tmp_path / "a.json")
    run = tmp_path / "run"
    quantize_model(
        model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run, assignment=assignment)
    )
    script = tmp_path / "model.alls"
    result = quantlens("export", str(run), "--format", "hailo", "-o", str(script))
    assert result.returncode == 0, result.stderr
    # With what hailo8's rules drag along (#17): the Reshape after conv2 outputs its 16 bits.
    assert "quantization_param([conv2, reshape], precision_mode=a16_w16)" in script.read_text()
    back = tmp_path / "back.json"
    result = quantlens(
        "import", str(script), "--format", "hailo", "--model", str(model), "-o", str(back)
    )
    assert result.returncode == 0, result.stderr
    closed = Assignment.load(run / "assignment.json").layers
    assert closed.items() >= layers.items() and Assignment.load(back).layers == closed
    bad = tmp_path / "bad.alls"
    bad.write_text("quantization_param(conv2, precision_mode=a12_w3)\n")
    line = _one_error_line(
        quantlens("import", str(bad), "--format", "hailo", "--model", str(model))
    )
    assert "a12_w3" in line


def test_bias_that_would_saturate_int32_raises_the_weight_scale() -> None:
    import torch

    from quantlens.emulate.plan import QuantPoints, build_plan
    from quantlens.schemes.formats import int_format

    points = QuantPoints(
        activations={"x": int_format("uint16-asym")},
        weights={"w": (int_format("int16-sym", per_channel=True, narrow=True), 0)},
        biases={"b": (int_format("int32-sym", per_channel=True), "x", "w")},
    )
    weights = {"w": torch.tensor([[1e-3], [1e-3]]), "b": torch.tensor([50.0, 1e-9])}
    plan = build_plan(points, {"x": (0.0, 1e-3)}, weights, "qnn-htp")
    scale = plan.weights["b"].scale
    assert abs(50.0 / scale[0]) <= 2**31 - 1  # fits after the weight scale was raised
    assert plan.weights["w"].scale[1] == pytest.approx(1e-3 / 32767, rel=1e-6)  # untouched
    assert any("fits int32" in note for note in plan.notes)


def test_on_onnxruntime_a_bias_that_would_saturate_int32_stays_float() -> None:
    """ORT runs an unfused Conv (every 16-bit one) in float on a float bias: the weight grid
    is not coarsened for the bias there (a 16-bit point was worse than int8 on picodet)."""
    import torch

    from quantlens.emulate.plan import QuantPoints, build_plan
    from quantlens.schemes.formats import int_format

    points = QuantPoints(
        activations={"x": int_format("uint16-asym")},
        weights={"w": (int_format("int16-sym", per_channel=True, narrow=True), 0)},
        biases={"b": (int_format("int32-sym", per_channel=True), "x", "w")},
        float_bias_on_overflow=True,
    )
    weights = {"w": torch.tensor([[1e-3], [1e-3]]), "b": torch.tensor([50.0, 1e-9])}
    plan = build_plan(points, {"x": (0.0, 1e-3)}, weights, "ort-cpu")
    assert "b" not in plan.weights  # exported and emulated as the float constant
    assert plan.weights["w"].scale == pytest.approx([1e-3 / 32767] * 2, rel=1e-6)
    assert any("b: bias kept float" in note for note in plan.notes)


def test_ort_cpu_16_bit_export_with_a_large_bias_agrees_with_onnxruntime(tmp_path: Path) -> None:
    """A 16-bit Conv whose bias overflows int32: the QDQ export carries it float, ONNX Runtime
    loads it, and quantize.json's emulator-vs-ORT agreement stays near exact."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 1e-3, (4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([60.0, -40.0, 0.5, 1e-3], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w, b],
    )
    model = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    calib = npz_folder(tmp_path / "calib", 4, (1, 3, 8, 8))
    given = tmp_path / "assignment.json"
    given.write_text(Assignment(target="ort-cpu", default="a16_w16").to_json())
    run = tmp_path / "run"
    result = quantlens(
        "quantize", str(model), "--calib", str(calib), "--target", "ort-cpu",
        "--assignment", str(given), "-o", str(run),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads((run / "plan.json").read_text())
    assert "b" not in plan["weights"] and not any("fits int32" in n for n in plan["notes"])
    record = json.loads((run / "quantize.json").read_text())
    agreement = record["outputs"][0]["emulator_vs_onnxruntime"]
    assert agreement["pooled_snr_db"] > 80
    assert record["outputs"][0]["float_vs_quantized"]["snr_db"] > 60  # 16-bit weights kept


def test_nan_quantizes_to_the_lowest_code_like_onnxruntime() -> None:
    import torch

    from quantlens.emulate.fakequant import fake_quantize

    x = torch.tensor([float("nan"), 1.0, float("inf"), -float("inf")])
    y = fake_quantize(x, torch.tensor([0.5]), torch.tensor([10.0]), 0, 255)
    assert y.tolist() == [-5.0, 1.0, 122.5, -5.0]
