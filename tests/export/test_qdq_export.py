"""QDQ export: the file passes the checker, runs in ONNX Runtime and computes what the emulator did.

Ranges come from a min-max recording hook (the calibration module proper is tested elsewhere).
Agreement is checked with ORT's graph optimizations off (the exported arithmetic itself) and on
(ORT fuses Q/DQ into integer kernels whose requantization rounds slightly differently).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.ort import session_options
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.export import agreement, export_qdq, stepwise_code_error
from quantlens.export.qdq import CONTRIB_DOMAIN, TARGET_KEY, VERSION_KEY
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import FloatFormat
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan, TensorQuant

Feeds = list[dict[str, np.ndarray]]
MIN_SNR_DB = 40.0

# (target, layer -> mode): int8 defaults, then mixed plans with 16-bit, 4-bit and float layers.
CASES = [
    ("ort-cpu", {}),
    ("ort-cpu", {"conv2": "a16_w16", "conv3": "a16_w8", "gemm": "a8_w4", "matmul": "fp32"}),
    ("qnn-htp", {}),
    ("qnn-htp", {"conv1": "a8_w8_a16", "conv2": "a16_w16", "conv3": "a16_w8", "gemm": "fp16"}),
    ("bm1684x", {}),
    ("bm1684x", {"conv2": "fp16", "gemm": "bf16", "matmul": "fp32"}),
    ("hailo8", {}),
    ("hailo8", {"conv1": "a8_w8_a16", "conv2": "a16_w16", "gemm": "a8_w4"}),
]


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv/Relu/residual Add/Concat/MaxPool/Gemm/Sigmoid/MatMul; `gate` is an output, read on."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int, gain: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * gain).astype(np.float32), name)

    inits = [
        weight("w1", 8, 3, 3, 3),
        weight("b1", 8, gain=0.1),
        weight("w2", 8, 8, 3, 3, gain=0.15),
        weight("w3", 4, 8, 1, 1),
        weight("b3", 4, gain=0.1),
        weight("wg", 32, 12 * 8 * 8, gain=0.03),
        weight("bg", 32, gain=0.1),
        weight("wm", 32, 16),
    ]
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        node("Add", ["r1", "c2"], ["res"], name="add"),
        node("Conv", ["res", "w3", "b3"], ["c3"], name="conv3"),
        node("Concat", ["res", "c3"], ["cat"], name="concat", axis=1),
        node("MaxPool", ["cat"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["pool"], ["flat"], name="flatten"),
        node("Gemm", ["flat", "wg", "bg"], ["g"], name="gemm", transB=1),
        node("Sigmoid", ["g"], ["gate"], name="sigmoid"),
        node("MatMul", ["gate", "wm"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16]),
            helper.make_tensor_value_info("gate", TensorProto.FLOAT, [1, 32]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def min_max_plan(
    model: ir.Model,
    executor: Executor,
    feeds: Sequence[dict[str, np.ndarray]],
    target: str,
    layers: dict[str, str],
) -> QuantPlan:
    """A plan from min-max ranges recorded on `feeds`."""
    points = quantization_points(
        model, Assignment(target=target, layers=layers), get_profile(target)
    )
    wanted = points.calibration_targets()
    ranges: dict[str, tuple[float, float]] = {}

    class Recorder:
        def weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
            return tensor

        def activation(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
            if name in wanted:
                low, high = float(tensor.min()), float(tensor.max())
                old = ranges.get(name, (low, high))
                ranges[name] = (min(old[0], low), max(old[1], high))
            return tensor

    with torch.inference_mode():
        for feed in feeds:
            executor.run(feed, hooks=Recorder())
    return build_plan(points, ranges, executor.weights, target)


@pytest.fixture(scope="module")
def cnn() -> tuple[ir.Model, Executor, Feeds]:
    model, _ = canonicalize(ir.serde.deserialize_model(small_cnn()), CanonicalizeOptions())
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    return model, Executor(model), feeds


def _check_export(
    model: ir.Model, executor: Executor, feeds: Feeds, plan: QuantPlan, path: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Export, check the file, and return the worst SNR per output without/with ORT fusions."""
    before = ir.serde.serialize_model(model).SerializeToString()
    export_qdq(model, plan, path)
    assert ir.serde.serialize_model(model).SerializeToString() == before, "model was mutated"
    onnx.checker.check_model(str(path), full_check=True)
    exported = onnx.load(str(path))
    assert [o.name for o in exported.graph.output] == executor.output_names
    meta = {p.key: p.value for p in exported.metadata_props}
    assert meta[TARGET_KEY] == plan.target and meta[VERSION_KEY]
    exact = agreement(executor, plan, path, feeds, optimize=False)
    fused = agreement(executor, plan, path, feeds, optimize=True)
    print(f"{plan.target}: SNR unoptimized {exact}, ORT-optimized {fused}")
    # Node by node, from ORT's own inputs: at most one step off (a tie flipped by float noise).
    steps = stepwise_code_error(executor, plan, path, feeds[0])
    assert max(e.max_steps for e in steps.values()) < 1.01, steps
    assert max(e.mismatched for e in steps.values()) < 0.01, steps
    return exact, fused


@pytest.mark.parametrize(("target", "layers"), CASES, ids=[f"{t}-{len(m)}" for t, m in CASES])
def test_small_cnn_export_agrees_with_emulator(
    cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path, target: str, layers: dict[str, str]
) -> None:
    model, executor, feeds = cnn
    plan = min_max_plan(model, executor, feeds, target, layers)
    exact, fused = _check_export(model, executor, feeds, plan, tmp_path / "q.onnx")
    assert min(exact.values()) >= MIN_SNR_DB, exact
    assert min(fused.values()) >= MIN_SNR_DB, fused


def _initializer_types(path: Path) -> dict[str, int]:
    return {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}


def test_weights_are_stored_as_codes_and_floats_as_low_precision(
    cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    model, executor, feeds = cnn
    layers = {"conv1": "a8_w4", "conv2": "a16_w16", "conv3": "fp32", "gemm": "fp32"}
    plan = min_max_plan(model, executor, feeds, "ort-cpu", layers)
    plan.weights.update(_float_weights())
    path = export_qdq(model, plan, tmp_path / "q.onnx")
    types = _initializer_types(path)
    assert types["w1_quantized"] == TensorProto.INT4
    assert types["w2_quantized"] == TensorProto.INT16
    assert types["b1_quantized"] == TensorProto.INT32
    assert types["w3_fp16"] == TensorProto.FLOAT16 and types["wg_bf16"] == TensorProto.BFLOAT16
    assert "w1" not in types and "wm_quantized" in types
    nodes = onnx.load(str(path)).graph.node
    dq_w2 = next(n for n in nodes if n.output[0] == "w2")
    assert dq_w2.domain == CONTRIB_DOMAIN and dq_w2.attribute[0].i == 0  # per-channel, axis 0
    assert min(agreement(executor, plan, path, feeds, optimize=False).values()) >= MIN_SNR_DB


def _float_weights() -> dict[str, TensorQuant]:
    """ORT-CPU has no fp16/bf16 mode; a plan for another target carries weights like these."""
    return {
        "w3": TensorQuant(name="w3", format=FloatFormat(name="fp16")),
        "wg": TensorQuant(name="wg", format=FloatFormat(name="bf16")),
    }


def test_opset_21_uses_standard_qdq_only(
    cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    model, executor, feeds = cnn
    plan = min_max_plan(model, executor, feeds, "qnn-htp", {"conv2": "a16_w16", "gemm": "a8_w4"})
    path = export_qdq(model, plan, tmp_path / "q.onnx", opset=21)
    exported = onnx.load(str(path))
    onnx.checker.check_model(exported, full_check=True)
    assert {o.domain: o.version for o in exported.opset_import}.get("", 0) == 21
    assert all(n.domain == "" for n in exported.graph.node)
    assert min(agreement(executor, plan, path, feeds, optimize=False).values()) >= MIN_SNR_DB


def test_graph_input_quantized_and_outputs_keep_names(
    cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    model, executor, feeds = cnn
    plan = min_max_plan(model, executor, feeds, "hailo8", {})
    assert "x" in plan.activations and "gate" in plan.activations
    path = export_qdq(model, plan, tmp_path / "q.onnx")
    graph = onnx.load(str(path)).graph
    producers = {out: n for n in graph.node for out in n.output}
    assert producers["gate"].op_type == "DequantizeLinear"
    readers = [n for n in graph.node if "x" in n.input]
    assert [n.op_type for n in readers] == ["QuantizeLinear"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["y", "gate"]


@pytest.mark.zoo
def test_zoo_classifier_export_agrees() -> None:
    from quantlens.api import prepare
    from quantlens.data import zoo
    from quantlens.data.preprocess import load_inputs
    from quantlens.data.render import write_samples

    entry = zoo.get_entry("pplcnet-orientation")
    with tempfile.TemporaryDirectory() as tmp:
        samples = write_samples("rotated-pages", 4, tmp, seed=1)
        feeds = [
            {k: np.asarray(v) for k, v in f.items()} for f in load_inputs(samples, entry.input)
        ]
        shapes = {k: list(v.shape) for k, v in feeds[0].items()}
        model = prepare(zoo.fetch("pplcnet-orientation"), shapes).model
        executor = Executor(model)
        convs = [n.name or "" for n in model.graph if n.op_type == "Conv"]
        cases = [
            ("ort-cpu", {}),
            ("qnn-htp", {convs[1]: "a16_w16", convs[2]: "a16_w8", convs[3]: "fp16"}),
            ("bm1684x", {convs[1]: "fp16", convs[2]: "bf16"}),
            ("hailo8", {convs[1]: "a16_w16", convs[0]: "a8_w8_a16", convs[4]: "a8_w4"}),
        ]
        for target, layers in cases:
            plan = min_max_plan(model, executor, feeds, target, layers)
            path = Path(tmp) / f"{target}.onnx"
            exact, _ = _check_export(model, executor, feeds, plan, path)
            _assert_same_classes(executor, plan, path, feeds)
            # End to end, one flipped tie early on cascades through ~30 int8 layers and a
            # 4-way softmax; measured 22-62 dB here, so only a loose floor is asserted.
            assert min(exact.values()) >= 20.0, (target, exact)


def _assert_same_classes(executor: Executor, plan: QuantPlan, path: Path, feeds: Feeds) -> None:
    # Exact integer kernels, as quantize's check runs them: on x86 without VNNI ORT's default
    # uint8 x int8 kernels saturate on full-range int8 weights (hailo8's).
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    hooks = QuantHooks(plan)
    for feed in feeds:
        (scores,) = session.run(None, feed)
        with torch.inference_mode():
            emulated = next(iter(executor.run(feed, hooks=hooks).values()))
        assert scores.argmax() == int(emulated.argmax())


def test_narrow_activation_grid_is_exported_exactly(
    cnn: tuple[ir.Model, Executor, Feeds], tmp_path: Path
) -> None:
    """No profile uses narrow activations today; a Max before QuantizeLinear supports them."""
    model, executor, feeds = cnn
    plan = min_max_plan(model, executor, feeds, "bm1684x", {})
    for name, spec in plan.activations.items():
        narrow = spec.format.model_copy(update={"narrow": True})
        plan.activations[name] = spec.model_copy(update={"format": narrow})
    path = export_qdq(model, plan, tmp_path / "q.onnx")
    assert sum(n.op_type == "Max" for n in onnx.load(str(path)).graph.node) == len(plan.activations)
    exact = agreement(executor, plan, path, feeds, optimize=False)
    assert min(exact.values()) >= MIN_SNR_DB, exact
