"""AdaRound and the scale fine-tune on a small seeded conv net (and one zoo model under -m slow)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.api import prepare
from quantlens.calib import calibrate
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks, TensorQuantizer
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.fixes.adaround import AdaRoundOptions, adaround, find_targets
from quantlens.fixes.finetune import FinetuneOptions, finetune, learnable_scales
from quantlens.fixes.result import apply_to_executor
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan

Tensor = torch.Tensor
Feeds = list[dict[str, np.ndarray]]
TARGETS = ("hailo8", "ort-cpu")  # per-tensor and per-channel weights
FAST = AdaRoundOptions(iterations=100)


def small_net(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> depthwise Conv (stride 2) -> Relu -> 1x1 Conv -> Relu -> GAP -> Gemm."""
    rng = np.random.default_rng(seed)

    def he(shape: tuple[int, ...], fan_in: int, name: str) -> onnx.TensorProto:
        array = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(array.astype(np.float32), name)

    def bias(size: int, name: str) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(size) * 0.1).astype(np.float32), name)

    inits = [he((16, 3, 3, 3), 27, "w1"), bias(16, "b1"), he((16, 1, 3, 3), 9, "w2")]
    inits += [bias(16, "b2"), he((24, 16, 1, 1), 16, "w3"), bias(24, "b3")]
    inits += [he((10, 24), 24, "wg"), bias(10, "bg")]
    node = helper.make_node
    nodes = [
        node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"], name="relu1"),
        node(
            "Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4, strides=[2, 2], group=16
        ),
        node("Relu", ["c2"], ["r2"], name="relu2"),
        node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3"),
        node("Relu", ["c3"], ["r3"], name="relu3"),
        node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        node("Flatten", ["g"], ["flat"], name="flatten"),
        node("Gemm", ["flat", "wg", "bg"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@dataclass
class Case:
    executor: Executor
    plan: QuantPlan
    feeds: Feeds


def make_plan(executor: Executor, feeds: Feeds, target: str) -> QuantPlan:
    profile = get_profile(target)
    assignment = Assignment(target=target, default=profile.default_mode)
    points = quantization_points(executor.model, assignment, profile)
    stats = calibrate(executor, feeds, points.calibration_targets(), "minmax")
    ranges = {name: (t.clip_min, t.clip_max) for name, t in stats.tensors.items()}
    return build_plan(points, ranges, executor.weights, target)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tensors here are tiny: one thread is ~10x faster than two fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Feeds]:
    path = tmp_path_factory.mktemp("learned") / "small.onnx"
    onnx.save(small_net(), path)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(12)]
    return path, feeds


@pytest.fixture(scope="module", params=TARGETS)
def case(request: pytest.FixtureRequest, prepared: tuple[Path, Feeds]) -> Case:
    path, feeds = prepared
    executor = Executor(prepare(path, batch=1).model)
    return Case(executor, make_plan(executor, feeds, request.param), feeds)


@pytest.fixture(scope="module")
def rounded(case: Case) -> dict[str, np.ndarray]:
    return adaround(case.executor, case.plan, case.feeds, FAST).weights


class _Weights:
    """The plan's hooks with some weights replaced (already on the grid)."""

    def __init__(self, plan: QuantPlan, weights: Mapping[str, np.ndarray]) -> None:
        self.base = QuantHooks(plan)
        self.replaced = {name: torch.as_tensor(value) for name, value in weights.items()}

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        found = self.replaced.get(name)
        return found if found is not None else self.base.weight(name, tensor)

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        return self.base.activation(name, tensor)


def tensor_mse(case: Case, hooks: _Weights, names: Sequence[str]) -> dict[str, float]:
    """Mean squared error against the float model of `names`, over the calibration set."""
    totals = dict.fromkeys(names, 0.0)
    with torch.inference_mode():
        for feed in case.feeds:
            ref = case.executor.run(feed, outputs=names)
            got = case.executor.run(feed, outputs=names, hooks=hooks)
            for name in names:
                totals[name] += float((got[name] - ref[name]).double().pow(2).mean())
    return {name: total / len(case.feeds) for name, total in totals.items()}


# --- AdaRound ------------------------------------------------------------------------------------


def test_adaround_weights_lie_on_the_plan_grid(case: Case, rounded: dict[str, np.ndarray]) -> None:
    assert set(rounded) == {t.layer.weight for t in find_targets(case.executor, case.plan)[0]}
    flipped = 0
    for name, value in rounded.items():
        quantizer = TensorQuantizer(case.plan.weights[name], torch.device("cpu"))
        learned = torch.as_tensor(value)
        assert torch.equal(quantizer(learned), learned), f"{name} is not on the plan's grid"
        nearest = quantizer(case.executor.weights[name])
        flipped += int((learned != nearest).sum())
        # Learned rounding moves a weight by at most one step from nearest rounding.
        scale = torch.tensor(case.plan.weights[name].scale)
        steps = (learned - nearest).abs() / (scale.reshape(-1, *[1] * (learned.dim() - 1)))
        assert float(steps.max()) <= 1.0 + 1e-4
    assert flipped > 10


def test_adaround_lowers_layer_and_output_error(case: Case, rounded: dict[str, np.ndarray]) -> None:
    layers = [t.layer for t in find_targets(case.executor, case.plan)[0]]
    names = [layer.output for layer in layers]
    nearest = tensor_mse(case, _Weights(case.plan, {}), names)
    learned = tensor_mse(case, _Weights(case.plan, rounded), names)
    for name in names:  # each layer's output, every earlier layer rounded its own way
        assert learned[name] <= nearest[name] * 1.02, (name, learned[name], nearest[name])
    assert sum(learned.values()) < 0.97 * sum(nearest.values())
    assert learned["y"] < 0.8 * nearest["y"]


def test_adaround_respects_the_time_budget(case: Case) -> None:
    result = adaround(case.executor, case.plan, case.feeds, AdaRoundOptions(time_budget_s=0.0))
    assert result.weights == {}
    assert any("time budget" in line for line in result.changes)
    started = time.perf_counter()
    calls: list[tuple[int, int]] = []
    options = AdaRoundOptions(iterations=100_000, time_budget_s=0.5)
    result = adaround(
        case.executor, case.plan, case.feeds, options, progress=lambda i, n: calls.append((i, n))
    )
    assert time.perf_counter() - started < 3.0
    assert calls and calls[-1][1] == 4 and result.seconds < 3.0
    for name, value in result.weights.items():  # what finished is still on the grid
        quantizer = TensorQuantizer(case.plan.weights[name], torch.device("cpu"))
        assert torch.equal(quantizer(torch.as_tensor(value)), torch.as_tensor(value))


def test_adaround_skips_16_bit_weights(prepared: tuple[Path, Feeds]) -> None:
    path, feeds = prepared
    executor = Executor(prepare(path, batch=1).model)
    profile = get_profile("hailo8")
    assignment = Assignment(target="hailo8", default="a8_w8", layers={"conv3": "a16_w16"})
    points = quantization_points(executor.model, assignment, profile)
    stats = calibrate(executor, feeds[:4], points.calibration_targets(), "minmax")
    ranges = {name: (t.clip_min, t.clip_max) for name, t in stats.tensors.items()}
    plan = build_plan(points, ranges, executor.weights, "hailo8")
    result = adaround(executor, plan, feeds[:4], AdaRoundOptions(iterations=20))
    assert "w3" not in result.weights
    assert any("conv3: 16-bit weight" in line for line in result.changes)


# --- fine-tune -----------------------------------------------------------------------------------


def output_error(case: Case, plan: QuantPlan) -> float:
    return tensor_mse(case, _Weights(plan, {}), ["y"])["y"]


@pytest.fixture(scope="module")
def tuned(case: Case) -> QuantPlan | None:
    options = FinetuneOptions(steps=40, batch_size=4, lr=1e-2)
    return finetune(case.executor, case.plan, case.feeds, options).plan


def test_finetune_lowers_output_error(case: Case, tuned: QuantPlan | None) -> None:
    before = output_error(case, case.plan)
    if case.plan.target == "hailo8":  # every tensor quantized: scales have much to gain
        assert tuned is not None and output_error(case, tuned) < 0.9 * before
    # Only a plan that beats the starting one on the calibration set comes back.
    assert tuned is None or output_error(case, tuned) < before


def test_finetune_keeps_the_grid_consistent(case: Case, tuned: QuantPlan | None) -> None:
    old = case.plan
    if tuned is None:
        pytest.skip("no better plan learned for this target")
    assert tuned.activations["x"] == old.activations["x"]  # graph inputs keep their scale
    moved = [n for n, s in tuned.activations.items() if s.scale != old.activations[n].scale]
    assert moved
    for name, spec in tuned.activations.items():
        assert spec.zero_point == old.activations[name].zero_point
        assert spec.format == old.activations[name].format
        if name in moved and isinstance(spec.format, IntFormat):  # the range is the grid's
            low = (spec.format.qmin - spec.zero_point[0]) * spec.scale[0]
            assert spec.range_min[0] == pytest.approx(low, rel=1e-6)
    for spec in tuned.weights.values():
        if spec.bias_of is not None:  # bias scale = input scale x weight scale, in float32
            act, weight = tuned.activations[spec.bias_of[0]], tuned.weights[spec.bias_of[1]]
            expected = np.float32(act.scale[0]) * np.asarray(weight.scale, np.float32)
            assert spec.scale == expected.astype(np.float32).tolist()
    if "g" in tuned.activations:  # Flatten shares its input's parameters on Hailo
        assert tuned.activations["flat"].scale == tuned.activations["g"].scale


def test_finetune_respects_the_time_budget(case: Case) -> None:
    started = time.perf_counter()
    options = FinetuneOptions(steps=100_000, time_budget_s=0.5)
    result = finetune(case.executor, case.plan, case.feeds, options)
    assert time.perf_counter() - started < 3.0
    zero = finetune(case.executor, case.plan, case.feeds, FinetuneOptions(time_budget_s=0.0))
    assert zero.plan is None and any("time budget" in line for line in zero.changes)
    assert result.weights == {} and zero.weights == {}


def test_finetune_leaves_adarounded_weight_scales_alone(case: Case) -> None:
    executor = Executor(case.executor.model)
    options = FinetuneOptions()
    assert set(learnable_scales(executor, case.plan, options).weights) == {"w1", "w2", "w3", "wg"}
    rounded = adaround(executor, case.plan, case.feeds, AdaRoundOptions(iterations=30))
    apply_to_executor(executor, rounded)
    learned = learnable_scales(executor, case.plan, options)
    assert rounded.weights and not set(rounded.weights) & set(learned.weights)


def test_float_behaviour_is_unchanged(case: Case) -> None:
    executor = case.executor
    before = {name: value.clone() for name, value in executor.weights.items()}
    plan_before = case.plan.model_dump()
    with torch.inference_mode():
        reference = executor.run(case.feeds[0])["y"].clone()
    adaround(executor, case.plan, case.feeds[:4], AdaRoundOptions(iterations=20))
    finetune(executor, case.plan, case.feeds[:4], FinetuneOptions(steps=4, batch_size=2))
    assert all(torch.equal(before[name], executor.weights[name]) for name in before)
    assert case.plan.model_dump() == plan_before
    with torch.inference_mode():
        assert torch.equal(executor.run(case.feeds[0])["y"], reference)


# --- a zoo model ---------------------------------------------------------------------------------


def output_snr_db(executor: Executor, hooks: _Weights, feeds: Feeds) -> float:
    noise = signal = 0.0
    with torch.inference_mode():
        for feed in feeds:
            for name, ref in executor.run(feed).items():
                got = executor.run(feed, hooks=hooks)[name]
                noise += float((got.double() - ref.double()).pow(2).sum())
                signal += float(ref.double().pow(2).sum())
    return 10.0 * np.log10(signal / noise)


@pytest.mark.zoo
@pytest.mark.slow
def test_adaround_on_pplcnet_keeps_or_raises_snr(tmp_path: Path) -> None:
    from quantlens.data import zoo
    from quantlens.data.preprocess import load_inputs
    from quantlens.data.render import write_samples

    name = "pplcnet-orientation"
    spec = zoo.get_entry(name).input
    calib = load_inputs(write_samples("rotated-pages", 4, tmp_path / "calib", seed=1), spec)
    held_out = load_inputs(write_samples("rotated-pages", 4, tmp_path / "eval", seed=2), spec)
    executor = Executor(prepare(zoo.fetch(name), batch=1).model)
    plan = make_plan(executor, calib, "hailo8")
    result = adaround(executor, plan, calib, AdaRoundOptions(iterations=100, time_budget_s=300))
    assert len(result.weights) > 20
    before = output_snr_db(executor, _Weights(plan, {}), held_out)
    after = output_snr_db(executor, _Weights(plan, result.weights), held_out)
    assert after >= before - 0.2, (before, after)
