"""Fixes after the plan (bias correction, clip search) and `quantize --optimize` end to end, on
a model with deliberately unbalanced channel ranges and no BatchNorm."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from quantlens.api import prepare
from quantlens.calib import calibrate
from quantlens.cli import app
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.plan import QuantPoints, build_plan, quantization_points
from quantlens.fixes import apply_fix
from quantlens.fixes.bias_correction import BiasCorrectionOptions, bias_correction
from quantlens.fixes.clip_search import (
    ClipSearchOptions,
    activation_candidates,
    clip_search,
    score_candidates,
    weight_clip_search,
)
from quantlens.fixes.levels import FixGuard, settings_for
from quantlens.fixes.result import FixResult
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan
from tests.models import branchy_model, unbalanced_model

F32 = np.float32
Feeds = list[dict[str, np.ndarray]]


def _feeds(count: int, seed: int = 0) -> Feeds:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(0, 1, (1, 3, 16, 16)).astype(F32)} for _ in range(count)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fixes") / "unbalanced.onnx"
    onnx.save(unbalanced_model(), path)
    return path


def _setup(
    path: Path, level: int, feeds: Feeds, add_bias: bool = False, mode: str = "a8_w8"
) -> tuple[Executor, QuantPlan, QuantPoints]:
    """Float passes of `level`, hailo8 (per-tensor weights) plan from min-max calibration."""
    from quantlens.ir.passes.optimize import optimize_graph

    model = prepare(path, batch=1).model
    graph = settings_for(level).graph_options().model_copy(update={"add_bias": add_bias})
    optimize_graph(model, graph)
    profile = get_profile("hailo8")
    points = quantization_points(model, Assignment(target="hailo8", default=mode), profile)
    executor = Executor(model)
    stats = calibrate(executor, feeds, points.calibration_targets(), "minmax")
    ranges = {n: (t.clip_min, t.clip_max) for n, t in stats.tensors.items()}
    return executor, build_plan(points, ranges, executor.weights, "hailo8"), points


def _outputs(executor: Executor, plan: QuantPlan | None, feeds: Feeds) -> np.ndarray:
    hooks = QuantHooks(plan) if plan is not None else None
    with torch.inference_mode():
        return np.concatenate([executor.run(f, hooks=hooks)["y"].numpy() for f in feeds])


def _snr(reference: np.ndarray, quantized: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / ((reference - quantized) ** 2).sum()))


def test_equalization_raises_int8_snr(model_path: Path) -> None:
    calib, test = _feeds(16), _feeds(16, seed=1)
    plain, plain_plan, _ = _setup(model_path, 0, calib)
    equal, equal_plan, _ = _setup(model_path, 1, calib)
    reference = _outputs(plain, None, test)
    np.testing.assert_allclose(_outputs(equal, None, test), reference, rtol=1e-4, atol=1e-5)
    before = _snr(reference, _outputs(plain, plain_plan, test))
    after = _snr(reference, _outputs(equal, equal_plan, test))
    assert after > before + 6.0, (before, after)


def test_bias_correction_reduces_the_mean_output_shift(model_path: Path) -> None:
    calib = _feeds(24)
    executor, plan, _ = _setup(model_path, 0, calib, add_bias=True)
    assert "conv2.bias" in plan.weights  # added as zeros, quantized like any bias
    reference = _outputs(executor, None, calib)
    before = np.abs((reference - _outputs(executor, plan, calib)).mean(axis=0)).mean()
    progress: list[tuple[int, int]] = []
    result = bias_correction(executor, plan, calib, progress=lambda d, t: progress.append((d, t)))
    assert result.weights and result.changes and progress[-1][0] == progress[-1][1]
    assert executor.weights["conv2.bias"].abs().sum() == 0  # the executor is left alone
    apply_fix(executor, result)
    after = np.abs((reference - _outputs(executor, plan, calib)).mean(axis=0)).mean()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("builder", [unbalanced_model, branchy_model])
def test_bias_correction_in_one_sweep_equals_one_pass_per_layer(
    builder: Callable[[], onnx.ModelProto], tmp_path: Path
) -> None:
    """The default sweep (one quantized pass, going on from each layer's cut) moves every bias
    as far as the exact method that runs the model up to each layer again, also where branches
    (a Concat, a Split read later, two convs on the graph input) cross the cuts."""
    path = tmp_path / "model.onnx"
    onnx.save(builder(), path)
    calib = (
        [{"x": f["x"][..., :4, :4]} for f in _feeds(24)] if builder is branchy_model else _feeds(8)
    )
    executor, plan, _ = _setup(path, 0, calib, add_bias=True)
    layers = len([q for q in plan.weights.values() if q.bias_of is not None])
    swept = bias_correction(executor, plan, calib)
    exact = bias_correction(executor, plan, calib, BiasCorrectionOptions(max_passes=layers))
    assert swept.weights.keys() == exact.weights.keys() and len(exact.weights) >= 3
    for name, value in exact.weights.items():
        np.testing.assert_allclose(swept.weights[name], value, rtol=1e-4, atol=1e-6)
    assert any(np.abs(v).max() > 1e-3 for v in exact.weights.values())  # biases did move
    fast = bias_correction(executor, plan, calib, BiasCorrectionOptions(max_passes=1))
    assert any(not np.allclose(fast.weights[n], v, atol=1e-6) for n, v in exact.weights.items())


def test_clip_search_never_worse_than_minmax(model_path: Path) -> None:
    calib = _feeds(4)
    executor, plan, points = _setup(model_path, 0, calib)
    options = ClipSearchOptions(samples=4, score_samples=2)
    targets = {n: f for n, f in points.calibration_targets().items() if n in plan.activations}
    candidates = activation_candidates(executor, calib, targets, options)
    scores = score_candidates(executor, plan, calib[:2], candidates)
    result = clip_search(executor, plan, calib, points, options)
    assert result.plan is not None and len(result.changes) == len(scores)
    for name, found in scores.items():
        chosen = result.plan.activations[name]
        picked = (chosen.range_min[0], chosen.range_max[0])
        score = min(found[k] for k, r in candidates[name].items() if r == picked)
        assert score <= found["minmax"] and score == min(found.values())
    clipped = weight_clip_search(executor, plan)
    assert clipped.plan is not None
    for quant in clipped.plan.weights.values():
        if quant.bias_of is not None:  # bias grids follow input x weight scales
            act, weight = quant.bias_of
            expected = np.float32(clipped.plan.activations[act].scale[0]) * np.asarray(
                clipped.plan.weights[weight].scale, F32
            )
            np.testing.assert_array_equal(np.asarray(quant.scale, F32), expected)


def test_clip_search_candidates_in_one_pass_and_its_time_budget(model_path: Path) -> None:
    """Every method's candidate comes from one pass (min-max exactly what its own calibration
    chooses, the histogram methods within 1% of the range of theirs); a spent time budget scores
    nothing, keeps every range and says so."""
    calib = _feeds(4)
    executor, plan, points = _setup(model_path, 0, calib)
    targets = {n: f for n, f in points.calibration_targets().items() if n in plan.activations}
    runs: list[int] = []
    original = executor.run

    def counted(*args: object, **kwargs: object) -> object:
        if args or kwargs.get("feeds") is not None:  # a whole-sample run, not a single step
            runs.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    executor.run = counted  # type: ignore[method-assign]
    options = ClipSearchOptions(samples=4, score_samples=2)
    candidates = activation_candidates(executor, calib, targets, options)
    executor.run = original  # type: ignore[method-assign]
    assert len(runs) == 4  # one pass over 4 samples for all four methods
    for method in ("minmax", "percentile", "mse"):
        own = calibrate(executor, calib, targets, method).tensors
        for name, found in candidates.items():
            low, high = found[method]
            width = own[name].clip_max - own[name].clip_min
            tolerance = 0.0 if method == "minmax" else 0.01 * width  # finer histograms
            assert abs(low - own[name].clip_min) <= tolerance
            assert abs(high - own[name].clip_max) <= tolerance
    late = activation_candidates(executor, calib, targets, options, deadline=0.0)  # passed
    ratios = {f"minmax x{r:g}" for r in options.ratios}
    assert all(set(found) == {"minmax", *ratios} for found in late.values())
    bounded = clip_search(executor, plan, calib, points, ClipSearchOptions(time_budget_s=0.0))
    note = (
        f"time budget 0 s: 1 of 4 range methods, 0 of {len(targets)} tensors scored, 0 of 4 "
        "samples complete"
    )
    assert bounded.changes == [note] and bounded.plan is not None
    for name in targets:  # nothing scored: every range stays as it was
        assert bounded.plan.activations[name].scale == plan.activations[name].scale


def test_quantize_records_fixes_and_writes_the_float_model(
    model_path: Path, tmp_path: Path
) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(_feeds(8)):
        np.savez(calib / f"{i:03d}.npz", **feed)
    run = tmp_path / "run"
    report = quantize_model(
        model_path, QuantizeOptions(calib=calib, target="hailo8", run_dir=run, optimize=1)
    )
    assert report.optimize.enabled == ["fuse", "equalize", "bias_correction"]
    assert report.optimize.passes["equalize"] and report.optimize.fixes[0]["changes"]
    guard = report.optimize.passes_guard  # equalization balances conv1's wide channels
    assert guard is not None and guard.kept and guard.samples == 8
    assert guard.passes == ["div_to_mul", "fuse_affine", "equalize"]
    assert guard.snr_with_db >= guard.snr_without_db
    assert "fix:bias-correction" in report.seconds
    float_model = run / "model.float.onnx"
    assert report.files["float_model"] == str(float_model)
    ops = [n.op_type for n in onnx.load(str(float_model)).graph.node]
    assert "Div" not in ops and "Sub" in ops  # the shift before a padded conv stays
    quantize_model(model_path, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    assert not float_model.exists()  # level 0 leaves no stale optimized model


def test_graph_passes_that_add_output_noise_are_undone(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the quantized model is noisier with the passes than without (the OCR recognizer on
    hailo8), `quantize` plans the graph as it was: its export keeps the Div the passes fold."""
    from quantlens.pipeline import graph_guard

    measured = graph_guard._output_snr

    def passes_lose(session: Any, *args: Any) -> float:
        snr = measured(session, *args)
        return snr - 100.0 if session.graph.equalize else snr

    monkeypatch.setattr(graph_guard, "_output_snr", passes_lose)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(_feeds(4)):
        np.savez(calib / f"{i:03d}.npz", **feed)
    messages: list[str] = []
    options = QuantizeOptions(calib=calib, target="hailo8", run_dir=tmp_path / "run", optimize=1)
    report = quantize_model(model_path, options, say=messages.append)
    guard = report.optimize.passes_guard
    assert guard is not None and not guard.kept and guard.samples == 4
    assert guard.snr_with_db < guard.snr_without_db
    assert not {"equalize", "fuse-affine", "div-to-mul"} & set(report.optimize.passes)
    assert any(m.startswith("graph passes undone (output SNR") for m in messages)
    ops = [n.op_type for n in onnx.load(report.files["qdq_model"]).graph.node]
    assert "Div" in ops
    assert report.optimize.fixes[0]["name"] == "bias-correction"  # the fixes still run


@pytest.mark.parametrize("passes_lose", [False, True])
def test_the_search_session_keeps_the_passes_the_guard_keeps(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passes_lose: bool
) -> None:
    """`search --optimize` opens its session through the same guard: the passes it keeps are
    the graph every candidate is planned on."""
    from quantlens.pipeline import graph_guard
    from quantlens.pipeline.search import prepare_search
    from quantlens.search_run import SearchOptions

    if passes_lose:
        measured = graph_guard._output_snr
        monkeypatch.setattr(
            graph_guard,
            "_output_snr",
            lambda s, *a: measured(s, *a) - (100.0 if s.graph.equalize else 0.0),
        )
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(_feeds(4)):
        np.savez(calib / f"{i:03d}.npz", **feed)
    opts = SearchOptions(calib=calib, target="hailo8", run_dir=tmp_path / "s", optimize=1)
    session = prepare_search(model_path, opts).session
    guard = session.passes_guard
    assert guard is not None and guard.kept is not passes_lose
    assert session.graph.equalize is not passes_lose
    assert ("Div" in {n.op_type for n in session.model.graph}) is passes_lose


@pytest.mark.parametrize("level", [0, 1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_cli_optimize_levels_export_runs_in_onnxruntime(
    model_path: Path, tmp_path: Path, level: int
) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feed in enumerate(_feeds(6)):
        np.savez(calib / f"{i:03d}.npz", **feed)
    run = tmp_path / f"O{level}"
    args = ["quantize", str(model_path), "--calib", str(calib), "--target", "hailo8"]
    args += ["-o", str(run), "--optimize", str(level)]
    if level == 1:
        args.append("--no-equalize")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((run / "quantize.json").read_text())
    assert data["optimize"]["level"] == level
    assert ("equalize" in data["optimize"]["enabled"]) == (level >= 2)
    assert ("graph passes div_to_mul, fuse_affine" in result.output) == (level >= 1)
    assert (data["optimize"]["passes_guard"] is None) == (level == 0)
    session = ort.InferenceSession(str(run / "model.qdq.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, _feeds(1)[0])[0].shape == (1, 4)


def test_a_guard_that_does_not_undo_keeps_a_noisier_fix(model_path: Path) -> None:
    """Without `undo_worse` (the search, which scores the fix on the task metric) a fix that
    lowers the output SNR is measured and kept."""
    calib = _feeds(4)
    executor, plan, _ = _setup(model_path, 0, calib)
    guard = FixGuard(executor, calib, undo_worse=False)
    scaled = executor.weights["w1"].numpy() * 1.5
    worse = FixResult(name="scale w1", weights={"w1": scaled})
    guard.apply(plan, worse)
    assert worse.kept and worse.snr_after_db is not None and worse.snr_before_db is not None
    assert worse.snr_after_db < worse.snr_before_db
    np.testing.assert_array_equal(executor.weights["w1"].numpy(), scaled)


def test_a_fix_that_adds_output_noise_is_undone(model_path: Path) -> None:
    """The guard keeps a fix that lowers the output noise and undoes one that raises it, in the
    executor, the model and the plan alike."""
    calib = _feeds(4)
    executor, plan, _ = _setup(model_path, 0, calib)
    guard = FixGuard(executor, calib)
    original = executor.weights["w1"].clone()
    worse = FixResult(name="scale w1", weights={"w1": original.numpy() * 1.5})
    assert guard.apply(plan, worse) is plan
    assert not worse.kept and worse.snr_after_db is not None and worse.snr_before_db is not None
    assert worse.snr_after_db < worse.snr_before_db
    torch.testing.assert_close(executor.weights["w1"], original)
    init = executor.model.graph.initializers["w1"].const_value
    assert init is not None
    np.testing.assert_array_equal(init.numpy(), original.numpy())
    sixteen = _setup(model_path, 0, calib, mode="a16_w16")[1]
    better = FixResult(name="16-bit", plan=sixteen)
    assert guard.apply(plan, better) is sixteen and better.kept
    record = better.as_record()
    assert record["kept"] is True
    # Every weighted layer's output SNR is reported; 16 bits raise all of them.
    assert set(better.layer_snr_db) == {"c1", "c2", "c3", "y"}
    assert better.layers_changed() == (4, 0) and record["layers_better_worse"] == [4, 0]
