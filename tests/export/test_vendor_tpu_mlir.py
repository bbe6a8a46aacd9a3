"""TPU-MLIR tables: op names after TPU-MLIR's fusions, thresholds of fused outputs, float ops'
thresholds, the float model it loads, grammar, round trips and errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantlens.errors import UserError
from quantlens.export.vendors import ExportContext, ModelIndex, get_format
from quantlens.export.vendors.base import NodeInfo
from quantlens.export.vendors.tpu_mlir import graph_facts
from quantlens.ir.vendors.tpu_mlir_ops import GraphFacts, tpu_ops
from quantlens.schemes.assignment import Assignment, PatternRule
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan
from quantlens.vendor_io import export_vendor, import_vendor, load_run
from tests.export.vendor_helpers import context, effective, make_run, model_index, small_model

TPU = get_format("tpu-mlir")
# The reader (TopToTpuPass::init_qtable): comments, blank lines, or exactly `name mode`.
QTABLE_LINE = re.compile(r"^\S+\s+(INT8|F16|BF16|F32)$")
# The calibration writer: "{} {:.7f} {:.7f} {:.7f}".
CALI_LINE = re.compile(r"^\S+ \d+\.\d{7} -?\d+\.\d{7} -?\d+\.\d{7}$")
# The small model's canonical graph: conv1 (BN folded, output "bn1") -> relu1 -> conv2 ->
# reshape -> matmul -> add (bias, graph output "y").
SMALL_OPS = ["r1_Relu", "c2_Conv", "flat_Reshape", "y_Gemm"]


def node(name: str, op: str, inputs: tuple[str, ...], output: str) -> NodeInfo:
    return NodeInfo(name=name, op_type=op, inputs=inputs, outputs=(output,))


def index(*nodes: NodeInfo, outputs: tuple[str, ...] = ("out",)) -> ModelIndex:
    return ModelIndex(nodes=list(nodes), graph_inputs=["x"], graph_outputs=list(outputs))


def names(model: ModelIndex, facts: GraphFacts | None = None) -> list[tuple[str, str]]:
    return [(op.name, op.output) for op in tpu_ops(model, facts)]


def rows(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_conv_batchnorm_keeps_the_convs_name_with_the_batchnorms_range() -> None:
    model = index(
        node("conv", "Conv", ("x", "w"), "c"),
        node("bn", "BatchNormalization", ("c", "s", "b", "m", "v"), "out"),
    )
    assert names(model) == [("c_Conv", "out")]


def test_conv_bias_add_is_the_conv_carrying_the_adds_range() -> None:
    model = index(
        node("conv", "Conv", ("x", "w"), "c"),
        node("add", "Add", ("c", "bias"), "out"),
    )
    facts = GraphFacts(shapes={"bias": (1, 8, 1, 1), "c": (1, 8, 4, 4)}, scalars={})
    assert names(model, facts) == [("c_Conv", "out")]
    # A full-size addend is not a bias: two ops.
    facts = GraphFacts(shapes={"bias": (1, 8, 4, 4), "c": (1, 8, 4, 4)}, scalars={})
    assert names(model, facts) == [("c_Conv", "c"), ("out_Add", "out")]


def test_conv_add_relu_takes_the_relus_name() -> None:
    model = index(
        node("conv", "Conv", ("x", "w"), "c"),
        node("add", "Add", ("c", "bias"), "a"),
        node("relu", "Relu", ("a",), "out"),
    )
    [op] = tpu_ops(model)
    assert (op.name, op.output, op.nodes) == ("out_Relu", "out", ("conv", "add", "relu"))
    assert op.rules == ("conv+bias-add", "relu-fusion")


def test_matmul_bias_add_is_one_gemm_named_after_the_add() -> None:
    model = index(
        node("mm", "MatMul", ("x", "w"), "m"),
        node("add", "Add", ("m", "bias"), "out"),
    )
    assert names(model) == [("out_Gemm", "out")]
    # onnxoptimizer fuses 2-D MatMuls only; the top dialect takes a batched one and keeps
    # the Add's name.
    facts = GraphFacts(shapes={"x": (1, 5, 8), "w": (8, 4)}, scalars={})
    assert names(model, facts) == [("out_Add", "out")]


def test_relu_fuses_only_into_a_single_use_host() -> None:
    shared = index(
        node("conv", "Conv", ("x", "w"), "c"),
        node("relu", "Relu", ("c",), "r"),
        node("add", "Add", ("c", "r"), "out"),
    )
    assert names(shared) == [("c_Conv", "c"), ("r_Relu", "r"), ("out_Add", "out")]
    output = index(node("conv", "Conv", ("x", "w"), "c"), node("relu", "Relu", ("c",), "out"))
    assert names(output) == [("out_Relu", "out")]
    output.graph_outputs.append("c")
    assert names(output) == [("c_Conv", "c"), ("out_Relu", "out")]
    hardswish = index(node("conv", "Conv", ("x", "w"), "c"), node("hs", "HardSwish", ("c",), "out"))
    assert names(hardswish) == [("c_Conv", "c"), ("out_HardSwish", "out")]


def test_residual_add_hosts_a_relu_and_clip_fuses_only_from_zero() -> None:
    model = index(
        node("add", "Add", ("x", "y"), "a"),
        node("clip", "Clip", ("a", "lo", "hi"), "out"),
    )
    relu6 = GraphFacts(shapes={}, scalars={"lo": 0.0, "hi": 6.0})
    assert names(model, relu6) == [("out_Clip", "out")]
    shifted = GraphFacts(shapes={}, scalars={"lo": -1.0, "hi": 6.0})
    assert names(model, shifted) == [("a_Add", "a"), ("out_Clip", "out")]


def test_dropped_ops_have_no_name() -> None:
    model = index(node("id", "Identity", ("x",), "i"), node("conv", "Conv", ("i", "w"), "out"))
    assert names(model) == [("out_Conv", "out")]


def test_onnxopt_chains_become_one_op_named_after_the_last_node() -> None:
    gelu = index(
        node("div", "Div", ("x", "sqrt2"), "d"),
        node("erf", "Erf", ("d",), "e"),
        node("add", "Add", ("e", "one"), "a"),
        node("mul", "Mul", ("x", "a"), "m"),
        node("half", "Mul", ("m", "h"), "out"),
    )
    [op] = tpu_ops(gelu, GraphFacts(shapes={}, scalars={"one": 1.0, "h": 0.5, "sqrt2": 1.41}))
    assert (op.name, op.output, len(op.nodes)) == ("out_GELU", "out", 5)
    # Another constant is another function: five ops.
    assert len(tpu_ops(gelu, GraphFacts(shapes={}, scalars={"one": 2.0, "h": 0.5}))) == 5
    hardsigmoid = index(
        node("add", "Add", ("three", "x"), "a"),
        node("clip", "Clip", ("a", "zero", "six"), "c"),
        node("div", "Div", ("c", "six"), "out"),
    )
    assert names(hardsigmoid) == [("out_HardSigmoid", "out")]  # Add's inputs in either order
    layernorm = index(
        node("mean", "ReduceMean", ("x",), "mu"),
        node("sub", "Sub", ("x", "mu"), "xc"),
        node("pow", "Pow", ("xc", "two"), "sq"),
        node("var", "ReduceMean", ("sq",), "v"),
        node("eps", "Add", ("v", "e"), "ve"),
        node("sqrt", "Sqrt", ("ve",), "sd"),
        node("div", "Div", ("xc", "sd"), "n"),
        node("gamma", "Mul", ("n", "g"), "ng"),
        node("beta", "Add", ("ng", "b"), "out"),
    )
    assert names(layernorm) == [("out_LayerNormalization", "out")]


def test_top_dialect_fusions_and_removals() -> None:
    silu = index(node("sig", "Sigmoid", ("x",), "s"), node("mul", "Mul", ("x", "s"), "out"))
    assert names(silu) == [("out_Mul", "out")]
    gate = index(node("sig", "Sigmoid", ("x",), "s"), node("mul", "Mul", ("y", "s"), "out"))
    assert names(gate) == [("s_Sigmoid", "s"), ("out_Mul", "out")]
    facts = GraphFacts(shapes={}, scalars={"zero": 0.0})
    plus_zero = index(
        node("conv", "Conv", ("x", "w"), "c"), node("add", "Add", ("c", "zero"), "out")
    )
    plus_zero.nodes[0] = node("sig", "Sigmoid", ("x",), "c")
    assert names(plus_zero, facts) == [("c_Sigmoid", "c")]


def test_shape_subgraphs_fold_away() -> None:
    model = index(
        node("shape", "Shape", ("x",), "s"),
        node("gather", "Gather", ("s", "zero"), "n"),
        node("cat", "Concat", ("n", "minus1"), "shape2"),
        node("reshape", "Reshape", ("x", "shape2"), "out"),
    )
    assert names(model) == [("out_Reshape", "out")]


def test_a_transpose_read_by_slices_moves_below_them() -> None:
    model = index(
        node("t", "Transpose", ("x",), "xt"),
        node("s1", "Slice", ("xt", "a", "b"), "q"),
        node("q1", "Squeeze", ("q", "ax"), "q2"),
        node("s2", "Slice", ("xt", "c", "d"), "k"),
        node("q3", "Squeeze", ("k", "ax"), "k2"),
        node("mm", "MatMul", ("q2", "k2"), "out"),
    )
    assert [n for n, _ in names(model)] == [
        "q_Slice_r_new",
        "q2_Squeeze_r_new",
        "q2_Squeeze_r_new_r_permute_for_out_MatMul",
        "k_Slice_r_new",
        "k2_Squeeze_r_new",
        "k2_Squeeze_r_new_r_permute_for_out_MatMul",
        "out_MatMul",
    ]


def test_a_softmax_between_transposes_runs_under_the_second_name() -> None:
    model = index(
        node("t1", "Transpose", ("x",), "a"),
        node("sm", "Softmax", ("a",), "b"),
        node("t2", "Transpose", ("b",), "out"),
    )
    ops = tpu_ops(model)
    assert [(op.name, op.nodes) for op in ops] == [
        ("a_Transpose_r_reordered", ("t1",)),
        ("out_Transpose", ("sm", "t2")),
    ]


def test_graph_facts_read_shapes_and_scalars(tmp_path: Path) -> None:
    ctx = load_run(make_run(tmp_path, "bm1684x", Assignment())[0])
    assert ctx.canonical is not None
    facts = graph_facts(ctx.canonical)
    assert facts.shapes["x"] == (1, 3, 8, 8)
    assert len(facts.shapes["flat"]) == 2
    assert [op.name for op in tpu_ops(ctx.model, facts)] == SMALL_OPS


def test_tables_follow_the_documented_grammar(tmp_path: Path) -> None:
    assignment = Assignment(layers={"conv2": "fp16", "matmul": "bf16", "add": "bf16"})
    run_dir, _ = make_run(tmp_path, "bm1684x", assignment)
    result = export_vendor(run_dir, "tpu-mlir", tmp_path / "out" / "m.qtable")
    qtable, cali, float_model = (Path(f) for f in result.files)
    assert (qtable.name, cali.name, float_model.name) == (
        "m.qtable",
        "m.cali_table",
        "m.float.onnx",
    )
    assert all(QTABLE_LINE.match(row) for row in rows(qtable.read_text()))
    assert rows(qtable.read_text()) == ["c2_Conv F16", "y_Gemm BF16"]
    cali_rows = rows(cali.read_text())
    assert all(CALI_LINE.match(row) for row in cali_rows)
    # Graph inputs keep their tensor name; then one line per op, float ops included where an
    # integer op reads them (y_Gemm is a float graph output: no range, and none needed).
    assert [row.split()[0] for row in cali_rows] == ["x", *SMALL_OPS[:-1]]
    assert "# op_name    threshold    min    max" in cali.read_text()
    assert "model_deploy.py --mlir m.mlir --quantize INT8" in result.usage
    assert "--input_shapes [[1,3,8,8]]" in result.usage


def test_thresholds_are_the_fused_outputs_plan_scales(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, "bm1684x", Assignment())
    result = export_vendor(run_dir, "tpu-mlir")
    plan = QuantPlan.load(run_dir / "plan.json")
    table = {
        row.split()[0]: float(row.split()[1]) for row in rows(Path(result.files[1]).read_text())
    }
    # r1_Relu carries the Relu's range (not the Conv's), y_Gemm the bias Add's (not the MatMul's).
    minimum = {
        row.split()[0]: float(row.split()[2]) for row in rows(Path(result.files[1]).read_text())
    }
    for name, tensor in [("x", "x"), ("r1_Relu", "r1"), ("c2_Conv", "c2"), ("y_Gemm", "y")]:
        quant = plan.activations[tensor]
        assert isinstance(quant.format, IntFormat)
        # Symmetric: scale = threshold / 127, or / 255 on the unsigned grid TPU-MLIR picks for
        # a non-negative min (the Relu), up to 7 decimals and float32 rounding.
        qmax = quant.format.qmax
        assert np.isclose(table[name] / qmax, quant.scale[0], rtol=1e-6, atol=1e-7 / qmax), name
        assert (minimum[name] >= 0) == (not quant.format.signed), name
    assert plan.activations["r1"].format.qmax == 255
    # Nothing for tensors TPU-MLIR fuses away.
    assert not {"bn1_Conv", "mm_MatMul", "y_Add"} & set(table)


def test_float_ops_get_thresholds_where_they_feed_int8_ops(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, "bm1684x", Assignment(layers={"conv2": "fp32"}))
    ctx = load_run(run_dir)
    assert ctx.calibration is not None and "c2" in ctx.calibration.tensors
    # The F32 Conv's output is cast to its INT8 readers' grid (TPU-MLIR's tpu.Cast) on the
    # tensor's own calibrated range, which the table carries.
    cast = QuantPlan.load(run_dir / "plan.json").activations["c2"]
    assert cast.is_int
    rendered = TPU.export(ctx)
    assert rows(rendered.texts[".qtable"]) == ["c2_Conv F32"]
    row = next(r for r in rows(rendered.texts[".cali_table"]) if r.startswith("c2_Conv "))
    entry = ctx.calibration.tensors["c2"]
    threshold = max(abs(entry.clip_min), abs(entry.clip_max))
    assert float(row.split()[1]) == pytest.approx(threshold, rel=1e-6)
    assert float(cast.scale[0]) * cast.format.qmax == pytest.approx(threshold, rel=1e-6)


def test_a_float_fused_member_floats_the_whole_op_and_warns(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    split = Assignment(layers={"relu1": "fp32"})
    rendered = TPU.export(context(split, model, "bm1684x"))
    assert rows(rendered.texts[".qtable"]) == ["r1_Relu F32"]
    assert any("r1_Relu fuses conv1, relu1 (INT8, F32)" in w for w in rendered.warnings)


def test_names_tpu_mlir_will_not_have_warn_or_fail_when_strict(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    # conv1 asks INT8 but its fused op runs F32 because relu1 does.
    assignment = Assignment(default="fp16", layers={"conv1": "a8_w8", "relu1": "fp32"})
    ctx = context(assignment, model, "bm1684x")
    rendered = TPU.export(ctx)
    assert any("conv1 (fused into r1_Relu, which runs F32)" in w for w in rendered.warnings)
    ctx.strict = True
    with pytest.raises(UserError, match="name no op of TPU-MLIR's graph"):
        TPU.export(ctx)


def test_the_float_model_loads_in_onnx_1_14(tmp_path: Path) -> None:
    ctx = load_run(make_run(tmp_path, "bm1684x", Assignment())[0])
    rendered = TPU.export(ctx)
    proto = onnx.load_model(io.BytesIO(rendered.binaries[".float.onnx"]))
    # onnx 1.14 (TPU-MLIR 1.30.2's pin) reads IR versions up to 9.
    assert proto.ir_version <= 8
    onnx.checker.check_model(proto)
    outputs = {out for n in proto.graph.node for out in n.output}
    assert {"r1", "c2", "y"} <= outputs and "mm" in outputs  # the graph the names refer to


@pytest.mark.parametrize(
    "assignment",
    [
        Assignment(layers={"conv2": "fp16", "matmul": "bf16", "add": "bf16"}),
        Assignment(layers={"conv1": "fp32", "relu1": "fp32"}),
        Assignment(default="fp16", layers={"conv1": "a8_w8", "relu1": "a8_w8"}),
        Assignment(patterns=[PatternRule(pattern="conv2", mode="fp32")]),
    ],
)
def test_round_trip(tmp_path: Path, assignment: Assignment) -> None:
    model = small_model(tmp_path)
    rendered = TPU.export(context(assignment, model, "bm1684x"))
    assert rendered.dropped == []
    idx = model_index(model)
    back = TPU.parse(rendered.texts[".qtable"], "m.qtable", idx, None)
    assert effective(back, idx) == effective(assignment, idx)


def test_import_reads_fused_and_unfused_names(tmp_path: Path) -> None:
    file = tmp_path / "m.qtable"
    file.write_text("r1_Relu F16\nmm_MatMul F32\nc2_conv_typo F16\n")
    with pytest.raises(UserError, match="c2_conv_typo"):
        import_vendor(file, "tpu-mlir", small_model(tmp_path))
    file.write_text("r1_Relu F16\nmm_MatMul F32\n")
    back = import_vendor(file, "tpu-mlir", small_model(tmp_path))
    assert back.layers == {"conv1": "fp16", "relu1": "fp16", "matmul": "fp32"}


def test_import_reads_a_batched_matmul_bias_by_its_adds_name() -> None:
    model = index(node("mm", "MatMul", ("x", "w"), "m"), node("add", "Add", ("m", "bias"), "out"))
    facts = GraphFacts(shapes={"x": (1, 5, 8), "w": (8, 4)}, scalars={})
    ctx = ExportContext(
        assignment=Assignment(layers={"mm": "fp16", "add": "fp16"}),
        plan=QuantPlan(target="bm1684x"),
        model=model,
    )
    [op] = tpu_ops(model, facts)
    table = f"{op.name} F16\n"
    assert TPU.parse(table, "m.qtable", ctx.model, None).layers == {"mm": "fp16", "add": "fp16"}


def test_sixteen_bit_modes_are_dropped(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    assignment = Assignment(layers={"conv1": "a8_w8_a16", "conv2": "a16_w16", "matmul": "fp16"})
    rendered = TPU.export(context(assignment, model, "hailo8"))
    assert {d.layer for d in rendered.dropped} == {"conv1", "conv2"}
    assert all("no 16-bit integer mode" in d.reason for d in rendered.dropped)
    assert rows(rendered.texts[".qtable"]) == ["y_Gemm F16"]


def test_export_from_another_target_warns(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, "hailo8", Assignment(layers={"conv2": "a16_w16"}))
    result = export_vendor(run_dir, "tpu-mlir")
    assert any("quantized for hailo8" in w for w in result.warnings)
    # conv2 and what hailo8's rules dragged along with it (its producers, the Reshape after).
    assert [d.layer for d in result.dropped] == ["conv1", "relu1", "conv2", "reshape"]


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ("# head\nc3_Conv F16\n", "m.qtable:2: op 'c3_Conv' is not in the model; did you mean"),
        ("c2_Conv INT7\n", "m.qtable:1: unknown quantize mode 'INT7'"),
        ("c2_Conv W8F16\n", "no quantlens equivalent"),
        ("\nc2_Conv F16 extra\n", "m.qtable:2: malformed"),
    ],
)
def test_bad_tables_are_one_user_error(tmp_path: Path, table: str, needle: str) -> None:
    file = tmp_path / "m.qtable"
    file.write_text(table)
    with pytest.raises(UserError) as err:
        import_vendor(file, "tpu-mlir", small_model(tmp_path))
    assert needle in str(err.value)


def test_lowercase_modes_and_single_tokens_read_like_tpu_mlir(tmp_path: Path) -> None:
    file = tmp_path / "m.qtable"
    file.write_text("c2_Conv f16\nlonely\ny_Gemm uint8\n")
    back = import_vendor(file, "tpu-mlir", small_model(tmp_path))
    assert back.layers == {"conv2": "fp16"}


def test_export_context_is_not_strict_by_default(tmp_path: Path) -> None:
    ctx = ExportContext(
        assignment=Assignment(),
        plan=QuantPlan(target="bm1684x"),
        model=model_index(small_model(tmp_path)),
    )
    assert ctx.strict is False
