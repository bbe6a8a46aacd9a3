"""Qualcomm overrides and AIMET encodings: exact scale/offset, float layers, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlens.errors import UserError
from quantlens.export.vendors import ModelIndex, get_format
from quantlens.ir.vendors.qualcomm_rules import (
    HTP_SUPERGROUPS,
    MATMUL_ADD_SOURCE,
    TIE_BACKWARD,
    TIE_FORWARD,
    TIE_SOURCE,
    find_fusions,
)
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan, TensorQuant
from quantlens.vendor_io import export_vendor, import_vendor, load_run
from tests.export.vendor_helpers import effective, make_run, model_index

# A consistent mixed assignment: conv1 writes 16-bit for relu1, which feeds the a16_w8 conv2;
# matmul and its bias add are one Qualcomm op, so both are fp16.
MIXED = Assignment(
    layers={
        "conv1": "a8_w8_a16",
        "relu1": "a16_w16",
        "conv2": "a16_w8",
        "matmul": "fp16",
        "add": "fp16",
    }
)
# What Qualcomm's graph does not quantize in the small model: conv1's output (Conv+Relu is one
# op), the MatMul output (MatMul + bias Add is one op), the Reshape output (data movement).
NOT_IN_VENDOR_GRAPH = {"bn1", "mm", "flat"}


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
            if name in NOT_IN_VENDOR_GRAPH:
                assert name not in data[section]
                continue
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
    floating = [{"bitwidth": 16, "dtype": "float"}]
    # The MatMul + bias Add op: its output is the Add's; weight and bias float with it.
    assert "mm" not in data["activation_encodings"]
    assert data["activation_encodings"]["y"] == floating
    assert data["param_encodings"]["wm"] == data["param_encodings"]["bias"] == floating
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
    assert acts["y"] == {"name": "y", "bw": 16, "dtype": "FLOAT", "enc_type": "PER_TENSOR"}
    assert not NOT_IN_VENDOR_GRAPH & set(acts)
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
            layers={
                "conv1": "a8_w8_a16",
                "relu1": "a16_w16",
                "conv2": "a8_w4",
                "matmul": "fp16",
                "add": "fp16",
            }
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


def test_sixteen_bit_input_gets_a_sixteen_bit_producer(tmp_path: Path) -> None:
    """`quantize` closes the assignment (#17): relu1 (and conv1, one op with it) write the
    16 bits conv2 reads, so the file reads back as asked."""
    run_dir, model = make_run(tmp_path, "qnn-htp", Assignment(layers={"conv2": "a16_w8"}))
    result = export_vendor(run_dir, "qnn")
    assert result.dropped == []
    back = import_vendor(Path(result.files[0]), "qnn", model)
    assert back.mode_name("conv2") == "a16_w8" and back.mode_name("conv1") == "a8_w8_a16"


def test_sixteen_bit_input_from_an_eight_bit_producer_is_reported(tmp_path: Path) -> None:
    """A plan made without the closure (the export still guards against it)."""
    run_dir, _ = make_run(tmp_path, "qnn-htp", Assignment())
    ctx = load_run(run_dir)
    ctx.assignment = Assignment(target="qnn-htp", layers={"conv2": "a16_w8"})
    rendered = get_format("qnn").export(ctx)
    [dropped] = rendered.dropped
    assert dropped.layer == "conv2" and "producer" in dropped.reason


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


def _index(model: onnx.ModelProto) -> tuple[ModelIndex, ir.Model]:
    canonical = ir.from_proto(model)
    return ModelIndex.from_model(canonical), canonical


def _chain_model(
    conv_groups: int = 1, relu_users: int = 1, bias_shape: tuple[int, ...] = (4,)
) -> onnx.ModelProto:
    """x -> Conv -> Relu (-> extra Relus) ... -> Flatten -> MatMul -> Add(constant)."""
    f32 = np.float32
    weight = np.ones((4, 4 // conv_groups, 1, 1), f32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.ones((4, 4), f32), "wm"),
        numpy_helper.from_array(np.ones(bias_shape, f32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", group=conv_groups),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "wm"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], ["y"], name="add"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    for extra in range(relu_users - 1):
        nodes.append(helper.make_node("Relu", ["c"], [f"e{extra}"], name=f"extra{extra}"))
        outputs.append(helper.make_tensor_value_info(f"e{extra}", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
        outputs,
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fusions_follow_aimet_htp_rules() -> None:
    fusions = find_fusions(*_index(_chain_model()))
    assert fusions.groups == [("matmul", "add"), ("conv", "relu")]
    assert fusions.fused_away == {"mm": "y", "c": "r"}
    assert fusions.passthrough == {"f": "r"}
    assert all(rule.source for rule in HTP_SUPERGROUPS) and "matmul_add" in MATMUL_ADD_SOURCE


@pytest.mark.parametrize(
    ("model", "groups"),
    [
        (_chain_model(conv_groups=4), [("matmul", "add")]),  # depthwise: no supergroup
        (_chain_model(relu_users=2), [("matmul", "add")]),  # a branch ends the chain
        (_chain_model(bias_shape=(1, 4)), [("conv", "relu")]),  # bias not rank 1
    ],
)
def test_fusions_the_vendor_does_not_make(model: onnx.ModelProto, groups: list) -> None:
    assert find_fusions(*_index(model)).groups == groups


def _layernorm_model() -> onnx.ModelProto:
    """x -> decomposed LayerNorm (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add)."""
    consts = {"two": 2.0, "eps": 1e-5, "gamma": 1.5, "beta": 0.1}
    inits = [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in consts.items()]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="sub"),
        helper.make_node("Pow", ["centred", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq"], ["var"], name="var", axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="add_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["std"], name="sqrt"),
        helper.make_node("Div", ["centred", "std"], ["normed"], name="div"),
        helper.make_node("Mul", ["normed", "gamma"], ["scaled"], name="mul"),
        helper.make_node("Add", ["scaled", "beta"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_decomposed_layernorm_is_one_op() -> None:
    fusions = find_fusions(*_index(_layernorm_model()))
    names = ("mean", "sub", "pow", "var", "add_eps", "sqrt", "div", "mul", "add")
    assert fusions.groups == [names]
    assert set(fusions.fused_away.values()) == {"y"} and len(fusions.fused_away) == 8


def _concat_model() -> onnx.ModelProto:
    """Two convolutions into a Concat (the second also read by a Sigmoid), then a Resize;
    a third convolution through MaxPool into the Concat."""
    f32 = np.float32
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), f32), f"w{i}") for i in range(3)]
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], f32), "scales"))
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="conv_a"),
        helper.make_node("Conv", ["x", "w1"], ["b"], name="conv_b"),
        helper.make_node("Conv", ["x", "w2"], ["c"], name="conv_c"),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["b"], ["s"], name="sigmoid"),
        helper.make_node("Concat", ["a", "b", "p"], ["cat"], name="concat", axis=1),
        helper.make_node("Resize", ["cat", "", "scales"], ["up"], name="resize"),
    ]
    graph = helper.make_graph(
        nodes,
        "concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("up", "s")],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_htp_ties_concat_inputs_and_resize_outputs() -> None:
    """A Concat's inputs read by nothing else take its output's encoding (through MaxPool,
    whose output HTP does not quantize); a Resize output takes its input's."""
    fusions = find_fusions(*_index(_concat_model()))
    assert fusions.passthrough == {"p": "c"}
    assert fusions.tied == {"a": "cat", "c": "cat", "up": "cat"}
    assert "Concat" in TIE_BACKWARD and "Resize" in TIE_FORWARD and "aimet_onnx" in TIE_SOURCE


def test_a_float_member_floats_its_fused_op(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path, "qnn-htp", Assignment(layers={"matmul": "fp16"}))
    ctx = load_run(run_dir)
    assert ctx.assignment.layers == {"matmul": "fp16", "add": "fp16"}  # closed by quantize
    ctx.assignment = Assignment(target="qnn-htp", layers={"matmul": "fp16"})  # as if not
    [dropped] = get_format("qnn").export(ctx).dropped
    assert dropped.layer == "add" and "float as a whole" in dropped.reason
    result = export_vendor(run_dir, "qnn")
    assert result.dropped == []
    data = json.loads(Path(result.files[0]).read_text())
    assert data["activation_encodings"]["y"] == [{"bitwidth": 16, "dtype": "float"}]
    assert data["param_encodings"]["bias"] == [{"bitwidth": 16, "dtype": "float"}]
    back = import_vendor(Path(result.files[0]), "qnn", model)
    assert back.layers == {"matmul": "fp16", "add": "fp16"}  # what the chip will run


def test_a_precision_the_fused_op_cannot_hold_warns_or_fails_strict(tmp_path: Path) -> None:
    """conv1 writes 16 bits, but Conv+Relu is one op whose output is relu1's 8 bits."""
    run_dir, _ = make_run(tmp_path, "qnn-htp", Assignment())
    ctx = load_run(run_dir)
    # `quantize` would have raised relu1 too (#17); a hand-edited run folder has not.
    ctx.assignment = Assignment(target="qnn-htp", layers={"conv1": "a8_w8_a16"})
    rendered = get_format("aimet").export(ctx)
    assert any("bn1 (int16; r1 keeps int8)" in w for w in rendered.warnings)
    assert any("not in Qualcomm's quantized graph" in w for w in rendered.warnings)
    ctx.strict = True
    with pytest.raises(UserError, match="cannot hold"):
        get_format("aimet").export(ctx)
