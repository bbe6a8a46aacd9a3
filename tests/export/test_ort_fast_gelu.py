"""The erf GELU and an SE block's spatial ReduceMean on `ort-cpu-fast`: exported as ORT's Gelu
kernel and as the GlobalAveragePool ORT fuses into QLinearGlobalAveragePool, with the codes of
the decomposed ops they replace."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlens.bench.latency import fused_op_counts
from quantlens.emulate.executor import Executor
from quantlens.export.qdq_lower import Fresh, lower_gelu, lowerings
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.ir.passes.optimize import GraphOptions, optimize_graph
from tests.export.test_qdq_export import MIN_SNR_DB, _check_export, min_max_plan

Feeds = list[dict[str, np.ndarray]]
SQRT2 = float(np.sqrt(2.0))


def gelu_se_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> erf GELU (as Paddle exports it) -> Conv, then an SE gate: ReduceMean over H, W
    -> Conv -> HardSigmoid, multiplied back, and a last Conv."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, gain: float = 0.4) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * gain).astype(np.float32), name)

    def const(name: str, value: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, np.float32), name)

    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        node("Div", ["c1", "sqrt2"], ["d"], name="gelu_div"),
        node("Erf", ["d"], ["e"], name="gelu_erf"),
        node("Add", ["e", "one"], ["e1"], name="gelu_add"),
        node("Mul", ["c1", "e1"], ["m"], name="gelu_mul"),
        node("Mul", ["m", "half"], ["g"], name="gelu_half"),
        node("Conv", ["g", "w2", "b2"], ["c2"], name="conv2"),
        node("ReduceMean", ["c2"], ["pooled"], name="se_pool", axes=[2, 3], keepdims=1),
        node("Conv", ["pooled", "w3"], ["c3"], name="conv3"),
        node("HardSigmoid", ["c3"], ["gate"], name="se_gate", alpha=0.2, beta=0.5),
        node("Mul", ["c2", "gate"], ["scaled"], name="se_mul"),
        node("Conv", ["scaled", "w4"], ["y"], name="conv4"),
    ]
    graph = helper.make_graph(
        nodes,
        "gelu_se_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
        initializer=[
            weight("w1", 8, 3, 3, 3),
            weight("b1", 8, gain=0.2),
            weight("w2", 8, 8, 1, 1),
            weight("b2", 8, gain=0.2),
            weight("w3", 8, 8, 1, 1),
            weight("w4", 4, 8, 1, 1),
            const("sqrt2", SQRT2),
            const("one", 1.0),
            const("half", 0.5),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _prepared(fuse: bool) -> ir.Model:
    model, _ = canonicalize(ir.serde.deserialize_model(gelu_se_cnn()), CanonicalizeOptions())
    if fuse:  # what `--fuse` runs: the Div becomes a Mul, the 0.5 moves into conv2
        optimize_graph(model, GraphOptions(div_to_mul=True, fuse_affine=True))
    return model


def _feeds() -> Feeds:
    rng = np.random.default_rng(1)
    return [{"x": (rng.standard_normal((1, 3, 12, 12)) * 2).astype(np.float32)} for _ in range(4)]


def test_only_ort_cpu_fast_lowers() -> None:
    assert set(lowerings("ort-cpu-fast")) == {"hardsigmoid", "reducemean", "gelu"}
    assert lowerings("ort-cpu") == [] and lowerings("hailo8") == []


@pytest.mark.parametrize("fuse", [False, True], ids=["plain", "fuse"])
def test_gelu_and_pool_run_as_ort_kernels(fuse: bool, tmp_path: Path) -> None:
    model = _prepared(fuse)
    ops = Counter(n.op_type for n in model.graph)
    # --fuse leaves a GELU ORT cannot fuse even in float: Mul by 1/sqrt 2, its 0.5 in conv2.
    assert ops["Div"] == (0 if fuse else 1), ops
    assert any(n.name == "gelu_half" for n in model.graph) == (not fuse)
    executor, feeds = Executor(model), _feeds()
    plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", {})
    path = tmp_path / "q.onnx"
    exact, fused = _check_export(model, executor, feeds, plan, path)
    assert min(exact.values()) >= MIN_SNR_DB, exact
    assert min(fused.values()) >= MIN_SNR_DB - 10, fused  # ORT's fused kernels round their own way
    graph = onnx.load(str(path)).graph
    exported = Counter(n.op_type for n in graph.node)
    assert exported["Erf"] + exported["ReduceMean"] + exported["HardSigmoid"] == 0, exported
    assert exported["Gelu"] == 1 and exported["GlobalAveragePool"] == 1, exported
    runs = Counter(fused_op_counts(path))
    assert runs["Gelu"] == 1 and runs["QLinearGlobalAveragePool"] == 1, runs
    assert runs["Erf"] + runs["ReduceMean"] + runs["Mul"] + runs["Add"] == 0, runs


def _island(divide: bool, k: float | None, scale: float, zero: int) -> onnx.ModelProto:
    """DQ(all 256 codes) -> x * (1 + erf(x / sqrt 2)) [* k] -> Q, as the export writes it."""
    node = helper.make_node
    pre = (
        node("Div", ["x", "c"], ["d"], name="pre")
        if divide
        else node("Mul", ["c", "x"], ["d"], name="pre")
    )
    nodes = [
        node("DequantizeLinear", ["codes", "s", "z"], ["x"], name="dq"),
        pre,
        node("Erf", ["d"], ["e"], name="erf"),
        node("Add", ["one", "e"], ["e1"], name="add"),
        node("Mul", ["e1", "x"], ["m"], name="mul"),
    ]
    last = "m"
    if k is not None:
        nodes.append(node("Mul", ["m", "k"], ["g"], name="scale_k"))
        last = "g"
    nodes.append(node("QuantizeLinear", [last, "so", "zo"], ["y"], name="q"))
    consts = {
        "c": SQRT2 if divide else float(np.float32(1 / SQRT2)),
        "one": 1.0,
        "k": k or 1.0,
        "s": scale,
        "so": 0.011,
    }
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in consts.items()]
    inits += [
        numpy_helper.from_array(np.array(zero, np.uint8), "z"),
        numpy_helper.from_array(np.array(20, np.uint8), "zo"),
    ]
    graph = helper.make_graph(
        nodes,
        "island",
        [helper.make_tensor_value_info("codes", TensorProto.UINT8, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 256])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _lowered(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    graph_model = ir.serde.deserialize_model(model)
    names = {n.name for n in graph_model.graph if n.name} | set(graph_model.graph.initializers)
    names |= {v.name for n in graph_model.graph for v in n.outputs if v.name}
    done = lower_gelu(graph_model.graph, Fresh(names))
    graph_model.opset_imports.setdefault("com.microsoft", 1)
    return ir.serde.serialize_model(graph_model), done


def _run(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    codes = np.arange(256, dtype=np.uint8).reshape(1, 256)
    return np.asarray(session.run(None, {"codes": codes})[0]).astype(int)


@pytest.mark.parametrize(
    ("divide", "k", "scale", "zero"),
    [(True, 0.5, 0.031, 128), (False, None, 0.047, 90), (False, 0.5, 0.019, 200)],
    ids=["div-half", "mul-no-half", "mul-half"],
)
def test_lowered_gelu_gives_every_code_the_decomposed_ops_give(
    divide: bool, k: float | None, scale: float, zero: int
) -> None:
    island = _island(divide, k, scale, zero)
    lowered, done = _lowered(island)
    assert done == ["erf"]
    assert [n.op_type for n in lowered.graph.node] == ["DequantizeLinear", "Gelu", "QuantizeLinear"]
    np.testing.assert_array_equal(_run(lowered), _run(island))


def test_a_gelu_that_is_not_exact_or_is_read_inside_stays() -> None:
    # A 0.3 after the product: its 0.6 is no power of two, the Q's scale cannot take it exactly.
    assert _lowered(_island(True, 0.3, 0.031, 128))[1] == []
    # An inner tensor read by a second node (here a graph output) must still be computed.
    island = _island(True, 0.5, 0.031, 128)
    island.graph.output.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 256]))
    assert _lowered(island)[1] == []


def test_export_format_ort_gets_the_same_kernels(tmp_path: Path) -> None:
    """`export --format ort`: quantize_static's model, after `quantize_with_overrides`' rewrites
    (it carries no shapes: the ReduceMean's rank comes from shape inference), runs the GELU and
    the pool as our export does."""
    from quantlens.export.vendors.ort import quantize_with_overrides
    from quantlens.pipeline.quantize import QuantizeOptions, quantize_model
    from quantlens.vendor_io import export_vendor

    model = tmp_path / "gelu.onnx"
    onnx.save(gelu_se_cnn(), str(model))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(_feeds()):
        np.savez(calib / f"{i}.npz", **feed)  # type: ignore[arg-type]
    run = tmp_path / "run"
    opts = QuantizeOptions(calib=calib, target="ort-cpu-fast", run_dir=run, latency_rounds=0)
    report = quantize_model(model, opts)
    result = export_vendor(run, "ort", tmp_path / "out" / "m.ort.json")
    out = tmp_path / "ort.qdq.onnx"
    quantize_with_overrides(result.files[0], out)
    for path in (report.files["qdq_model"], out):
        runs = Counter(fused_op_counts(path))
        assert runs["Gelu"] == 1 and runs["QLinearGlobalAveragePool"] == 1, runs
        assert runs["Erf"] + runs["ReduceMean"] == 0, runs
