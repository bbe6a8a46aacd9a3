"""HardSwish on `ort-cpu-fast`: split into x * HardSigmoid(x), the gate exported as the Add that
ONNX Runtime fuses into QLinearAdd, the product a QLinearMul; the float graph is unchanged and
the emulator computes what ORT runs with its fusions off."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlens.bench.latency import cpu_session, fused_op_counts
from quantlens.emulate.executor import Executor
from quantlens.emulate.plan import quantization_points
from quantlens.export.qdq import export_qdq
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.ir.passes.optimize import GraphOptions, optimize_graph
from quantlens.pipeline.session import profile_passes
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan
from tests.export.test_qdq_export import MIN_SNR_DB, _check_export, min_max_plan

Feeds = list[dict[str, np.ndarray]]


def hardswish_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv -> HardSwish -> Conv -> HardSwish, and an SE-style HardSigmoid gate (alpha 0.2)."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, gain: float = 0.4) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * gain).astype(np.float32), name)

    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        node("HardSwish", ["c1"], ["h1"], name="hs1"),
        node("Conv", ["h1", "w2"], ["c2"], name="conv2"),
        node("HardSwish", ["c2"], ["h2"], name="hs2"),
        node("GlobalAveragePool", ["h2"], ["g"], name="gap"),
        node("Conv", ["g", "w3"], ["c3"], name="conv3"),
        node("HardSigmoid", ["c3"], ["se"], name="se_gate", alpha=0.2, beta=0.5),
        node("Mul", ["h2", "se"], ["scaled"], name="se_mul"),
        node("Conv", ["scaled", "w4"], ["y"], name="conv4"),
    ]
    graph = helper.make_graph(
        nodes,
        "hardswish_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
        initializer=[
            weight("w1", 8, 3, 3, 3),
            weight("b1", 8, gain=0.2),
            weight("w2", 8, 8, 1, 1),
            weight("w3", 8, 8, 1, 1),
            weight("w4", 4, 8, 1, 1),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _split_model() -> ir.Model:
    model, _ = canonicalize(ir.serde.deserialize_model(hardswish_cnn()), CanonicalizeOptions())
    graph = profile_passes(GraphOptions(), get_profile("ort-cpu-fast"))
    assert graph.split_hardswish
    optimize_graph(model, graph)
    return model


@pytest.fixture(scope="module")
def split() -> tuple[ir.Model, Executor, Feeds]:
    model = _split_model()
    rng = np.random.default_rng(1)
    feeds = [{"x": (rng.standard_normal((1, 3, 12, 12)) * 2).astype(np.float32)} for _ in range(4)]
    return model, Executor(model), feeds


def test_only_profiles_with_integer_gates_split() -> None:
    assert not profile_passes(GraphOptions(), get_profile("ort-cpu")).split_hardswish
    assert not profile_passes(GraphOptions(), get_profile("hailo8")).split_hardswish


def test_split_keeps_names_and_float_outputs(
    split: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    model, executor, feeds = split
    ops = {n.name: n.op_type for n in model.graph}
    assert ops["hs1"] == "Mul" and ops["hs1.gate"] == "HardSigmoid"
    assert "HardSwish" not in ops.values()
    original = tmp_path / "float.onnx"
    onnx.save(hardswish_cnn(), str(original))
    session = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    for feed in feeds:
        expected = session.run(None, feed)[0]
        got = executor.run(feed)["y"].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_gates_quantized_and_owned_by_their_conv(split: tuple[ir.Model, Executor, Feeds]) -> None:
    model = split[0]
    points = quantization_points(
        model, Assignment(target="ort-cpu-fast"), get_profile("ort-cpu-fast")
    )
    # Each gate's input, output and product are integer tensors (QLinearAdd, QLinearMul).
    assert {"c1", "h1.gate", "h1", "c2", "h2.gate", "h2", "se", "scaled"} <= set(points.activations)


def test_ort_runs_the_gates_as_integer_kernels(
    split: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    model, executor, feeds = split
    plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", {})
    exact, fused = _check_export(model, executor, feeds, plan, tmp_path / "q.onnx")
    assert min(exact.values()) >= MIN_SNR_DB, exact
    assert min(fused.values()) >= MIN_SNR_DB - 10, fused  # ORT's fused kernels round their own way
    exported = Counter(n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    assert exported["HardSigmoid"] == 0, exported
    ops = Counter(fused_op_counts(tmp_path / "q.onnx"))
    # Three gates (two HardSwish, the SE's HardSigmoid) fused as QLinearAdd; their products
    # (two HardSwish Muls and the SE Mul) as QLinearMul; no float elementwise op is left.
    assert ops["QLinearAdd"] == 3 and ops["QLinearMul"] == 3, ops
    assert ops["HardSigmoid"] + ops["Mul"] + ops["Add"] == 0, ops


def test_a_gate_grid_past_one_keeps_the_float_hardsigmoid(
    split: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    """Saturation is the clip only on a grid inside [0, 1]; a wider one would lose it."""
    model, executor, feeds = split
    plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", {})
    wide = _widened(plan, "h1.gate", 2.0)
    exact, _ = _check_export(model, executor, feeds, wide, tmp_path / "q.onnx")
    assert min(exact.values()) >= MIN_SNR_DB, exact
    exported = Counter(n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
    assert exported["HardSigmoid"] == 1, exported  # h1's gate; the two others are lowered


def test_latency_sessions_do_not_spin(tmp_path: Path) -> None:
    path = tmp_path / "float.onnx"
    onnx.save(hardswish_cnn(), str(path))
    options = cpu_session(path).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _widened(plan: QuantPlan, name: str, factor: float) -> QuantPlan:
    spec = plan.activations[name]
    scale = [s * factor for s in spec.scale]
    wider = spec.model_copy(update={"scale": scale})
    return plan.model_copy(update={"activations": {**plan.activations, name: wider}})


def test_export_of_a_split_model_leaves_the_model_alone(
    split: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    model, executor, feeds = split
    plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", {})
    before = ir.serde.serialize_model(model).SerializeToString()
    export_qdq(model, plan, tmp_path / "q.onnx")
    assert ir.serde.serialize_model(model).SerializeToString() == before
    cpu_session(tmp_path / "q.onnx")  # ORT loads it


def test_ort_overrides_reproduce_the_integer_placement(tmp_path: Path) -> None:
    """`export --format ort` of an ort-cpu-fast run: quantize_static with the file places
    exactly the plan's quantizers, and after the HardSigmoid rewrite ORT fuses what ours does."""
    from onnxruntime.quantization import quantize_static

    from quantlens.export.vendors.ort import (
        _ZeroReader,
        quantize_static_kwargs,
        quantize_with_overrides,
    )
    from quantlens.pipeline.quantize import QuantizeOptions, quantize_model
    from quantlens.vendor_io import export_vendor
    from tests.export.test_vendor_ort import _quantized

    model = tmp_path / "hs.onnx"
    onnx.save(hardswish_cnn(), str(model))
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        np.savez(calib / f"{i}.npz", x=(rng.standard_normal((1, 3, 12, 12)) * 2).astype("f4"))
    run = tmp_path / "run"
    opts = QuantizeOptions(calib=calib, target="ort-cpu-fast", run_dir=run, latency_rounds=0)
    report = quantize_model(model, opts)
    result = export_vendor(run, "ort", tmp_path / "out" / "m.ort.json")
    # conv4 writes the graph output, float in the plan: ORT cannot keep its weight int8 alone.
    assert not result.warnings and [d.layer for d in result.dropped] == ["conv4"]
    plain = tmp_path / "ort-unlowered.qdq.onnx"
    kwargs = quantize_static_kwargs(result.files[0])
    quantize_static(result.files[1], plain, _ZeroReader(Path(result.files[1])), **kwargs)
    overrides = json.loads(Path(result.files[0]).read_text())["TensorQuantOverrides"]
    assert _quantized(onnx.load(str(plain))) == set(overrides) - {"w4"}
    out = tmp_path / "ort.qdq.onnx"
    quantize_with_overrides(result.files[0], out)
    ours = _integer_kernels(report.files["qdq_model"])
    theirs = _integer_kernels(out)
    assert ours["QLinearAdd"] == 3 and theirs == ours, (theirs, ours)
    assert Counter(fused_op_counts(out))["HardSigmoid"] == 0


def _integer_kernels(path: str | Path) -> Counter[str]:
    ops = fused_op_counts(path)
    return Counter({k: v for k, v in ops.items() if k.startswith(("QLinear", "QGemm"))})


def test_interleaved_times_keep_every_round(tmp_path: Path) -> None:
    from quantlens.bench.latency import LatencySettings, interleaved_times

    path = tmp_path / "float.onnx"
    onnx.save(hardswish_cnn(), str(path))
    feeds = [{"x": np.zeros((1, 3, 12, 12), np.float32)}]
    times = interleaved_times({"a": path, "b": path}, feeds, LatencySettings(warmup=2, rounds=5))
    assert sorted(times) == ["a", "b"] and all(len(v) == 5 and min(v) > 0 for v in times.values())


@pytest.mark.zoo
def test_pplcnet_runs_no_float_elementwise_op(tmp_path: Path) -> None:
    """pplcnet's 28 HardSwish and 2 SE HardSigmoids all become QLinearAdd + QLinearMul, and the
    export still computes what the emulator does, node by node, with ORT's fusions off."""
    from quantlens.api import prepare
    from quantlens.data import zoo
    from quantlens.data.preprocess import load_inputs
    from quantlens.data.render import write_samples
    from quantlens.export import stepwise_code_error
    from quantlens.fixes.levels import FixSettings

    entry = zoo.get_entry("pplcnet-orientation")
    samples = write_samples("rotated-pages", 2, tmp_path / "s", seed=1)
    feeds = [{k: np.asarray(v) for k, v in f.items()} for f in load_inputs(samples, entry.input)]
    shapes = {k: list(v.shape) for k, v in feeds[0].items()}
    model = prepare(zoo.fetch("pplcnet-orientation"), shapes).model
    # --fuse, as the benchmark runs it: the Paddle export's Conv-then-Add-bias folds into the
    # Conv, so the SE blocks' HardSigmoids read quantized tensors too.
    fused = FixSettings(fuse=True).graph_options()
    optimize_graph(model, profile_passes(fused, get_profile("ort-cpu-fast")))
    executor = Executor(model)
    plan = min_max_plan(model, executor, feeds, "ort-cpu-fast", {})
    path = export_qdq(model, plan, tmp_path / "q.onnx")
    ops = Counter(fused_op_counts(path))
    assert ops["QLinearAdd"] == 30 and ops["QLinearMul"] == 30, ops
    assert ops["HardSigmoid"] + ops["HardSwish"] == 0 and ops["QLinearConv"] == 32, ops
    steps = stepwise_code_error(executor, plan, path, feeds[0])
    assert max(e.max_steps for e in steps.values()) < 1.01, steps
    assert max(e.mismatched for e in steps.values()) < 0.01, steps
