"""Qualcomm overrides and AIMET encodings: exact scale/offset, float layers, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantlens.errors import UserError
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan, TensorQuant
from quantlens.vendor_io import export_vendor, import_vendor
from tests.test_vendor_helpers import effective, make_run, model_index

# A consistent mixed assignment: conv1 writes 16-bit for relu1, which feeds the a16_w8 conv2.
MIXED = Assignment(
    layers={"conv1": "a8_w8_a16", "relu1": "a16_w16", "conv2": "a16_w8", "matmul": "fp16"}
)


@pytest.fixture(scope="module")
def qnn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_run(tmp_path_factory.mktemp("qnn"), "qnn-htp", MIXED)


def _offset(quant: TensorQuant, channel: int) -> int:
    assert isinstance(quant.format, IntFormat)
    shift = 1 << (quant.format.bits - 1) if quant.format.signed else 0
    return -quant.zero_point[channel] - shift


def test_qnn_min_max_reproduce_scale_and_zero_point(qnn_run: tuple[Path, Path]) -> None:
    run_dir, _ = qnn_run
    result = export_vendor(run_dir, "qnn")
    data = json.loads(Path(result.files[0]).read_text())
    plan = QuantPlan.load(run_dir / "plan.json")
    checked = 0
    for section, quants in (
        ("activation_encodings", plan.activations),
        ("param_encodings", plan.weights),
    ):
        for name, quant in quants.items():
            entries = data[section][name]
            if not quant.is_int:
                continue
            assert isinstance(quant.format, IntFormat)
            assert len(entries) == len(quant.scale)  # per channel: one entry per channel
            for channel, entry in enumerate(entries):
                bits = entry["bitwidth"]
                # What the converter recomputes from bitwidth/min/max:
                scale = np.float32((entry["max"] - entry["min"]) / ((1 << bits) - 1))
                offset = round(entry["min"] / float(scale))
                if bits <= 16:
                    assert scale == np.float32(quant.scale[channel])
                    assert offset == entry["offset"] == _offset(quant, channel)
                assert entry["is_symmetric"] == str(quant.format.symmetric)
                assert entry["dtype"] == "int" and bits == quant.format.bits
                checked += 1
    assert checked > 20
    assert Path(result.files[-1]).name == "model.float.onnx"


def test_float_layer_is_float_on_output_and_params(qnn_run: tuple[Path, Path]) -> None:
    run_dir, _ = qnn_run
    result = export_vendor(run_dir, "qnn")
    data = json.loads(Path(result.files[0]).read_text())
    assert data["activation_encodings"]["mm"] == [{"bitwidth": 16, "dtype": "float"}]
    assert data["param_encodings"]["wm"] == [{"bitwidth": 16, "dtype": "float"}]
    assert data["activation_encodings"]["c2"][0]["bitwidth"] == 16
    assert result.dropped == []


def test_aimet_1_0_0_entries(qnn_run: tuple[Path, Path]) -> None:
    run_dir, _ = qnn_run
    result = export_vendor(run_dir, "aimet")
    data = json.loads(Path(result.files[0]).read_text())
    assert Path(result.files[0]).name == "model.encodings"
    assert data["version"] == "1.0.0"
    plan = QuantPlan.load(run_dir / "plan.json")
    acts = {e["name"]: e for e in data["activation_encodings"]}
    params = {e["name"]: e for e in data["param_encodings"]}
    assert acts["mm"] == {"name": "mm", "bw": 16, "dtype": "FLOAT", "enc_type": "PER_TENSOR"}
    assert acts["r1"]["offset"] == [-plan.activations["r1"].zero_point[0]]  # offset = -zp
    assert acts["r1"]["scale"] == plan.activations["r1"].scale
    assert acts["r1"]["is_sym"] is False and acts["r1"]["bw"] == 16
    w1 = params["w1"]
    assert w1["enc_type"] == "PER_CHANNEL" and w1["is_sym"] is True
    assert w1["offset"] == [-128] * 8 and w1["scale"] == plan.weights["w1"].scale


@pytest.mark.parametrize("fmt", ["qnn", "aimet"])
@pytest.mark.parametrize(
    "assignment",
    [
        MIXED,
        Assignment(
            layers={"conv2": "a16_w16", "relu1": "a8_w8_a16", "matmul": "fp16", "conv1": "a8_w4"}
        ),
    ],
)
def test_round_trip(tmp_path: Path, fmt: str, assignment: Assignment) -> None:
    run_dir, model = make_run(tmp_path, "qnn-htp", assignment)
    result = export_vendor(run_dir, fmt)
    assert result.dropped == []
    back = import_vendor(Path(result.files[0]), fmt, model)
    index = model_index(model)
    assert effective(back, index) == effective(assignment, index)
    assert back.target == "qnn-htp"


def test_sixteen_bit_input_from_an_eight_bit_producer_is_reported(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path, "qnn-htp", Assignment(layers={"conv2": "a16_w8"}))
    result = export_vendor(run_dir, "qnn")
    [dropped] = result.dropped
    assert dropped.layer == "conv2" and "producer" in dropped.reason
    back = import_vendor(Path(result.files[0]), "qnn", model)
    assert back.layers == {"conv2": "a8_w8_a16"}  # what the file says the chip will run


def test_partial_override_from_the_guide(tmp_path: Path, qnn_run: tuple[Path, Path]) -> None:
    """The SNPE guide's mixed-precision shape: float output and params, nothing else."""
    _, model = qnn_run
    file = tmp_path / "partial.json"
    file.write_text(
        json.dumps(
            {
                "activation_encodings": {"c2": [{"bitwidth": 32, "dtype": "float"}]},
                "param_encodings": {"w2": [{"bitwidth": 32, "dtype": "float"}]},
            }
        )
    )
    assert import_vendor(file, "qnn", model).layers == {"conv2": "fp32"}
    assert import_vendor(file, "aimet", model).layers == {"conv2": "fp32"}


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (
            '{"activation_encodings": {"c3": [{"bitwidth": 8}]}}',
            "tensor 'c3' is not in the model; did you mean",
        ),
        ('{"activation_encodings": {"c2": [{"bitwidth": 3}]}}', "bitwidth 3"),
        ("{not json", "not JSON"),
        ('{"param_encodings": {}}', "no 'activation_encodings'"),
    ],
)
def test_bad_files_are_one_user_error(
    tmp_path: Path, qnn_run: tuple[Path, Path], payload: str, needle: str
) -> None:
    file = tmp_path / "bad.json"
    file.write_text(payload)
    with pytest.raises(UserError) as err:
        import_vendor(file, "qnn", qnn_run[1])
    assert needle in str(err.value)
