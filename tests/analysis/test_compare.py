"""`quantlens compare`: dumps made by ONNX Runtime and by our own emulator, and bad dumps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch

from quantlens.artifacts.compare import CompareReport
from quantlens.artifacts.folder import RunFolder
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.errors import UserError
from quantlens.pipeline.compare import compare_dumps
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan
from tests.export.vendor_helpers import make_run
from tests.helpers import one_error_line, quantlens


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("compare")
    run_dir, _ = make_run(folder, "bm1684x", Assignment(target="bm1684x"))
    return run_dir


def _inputs(path: Path, count: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {"x": rng.standard_normal((count, 3, 8, 8)).astype(np.float32)}
    np.savez(path, **arrays)
    return arrays


class _OneStepUp:
    """Our emulation's hooks with every `every`-th code of `tensor` one step up: a runtime
    whose op differs there, the ops after it computing from what it wrote."""

    def __init__(self, plan: QuantPlan, tensor: str, every: int) -> None:
        self.inner, self.tensor, self.every = QuantHooks(plan), tensor, every
        self.step = plan.activations[tensor].scale[0]
        self.kernels = self.inner.kernels

    def weight(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return self.inner.weight(name, tensor)

    def activation(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = self.inner.activation(name, tensor)
        if name != self.tensor:
            return tensor
        codes = torch.round(tensor.contiguous() / self.step)
        codes.view(-1)[:: self.every] += 1
        return codes * self.step


def _emulator_dump(
    run_dir: Path,
    inputs: dict[str, np.ndarray],
    path: Path,
    hooks: object | None = None,
    with_inputs: bool = True,
) -> list[str]:
    """Every tensor our emulation computes, per sample, stacked: a dump of ourselves."""
    model = ir.load(RunFolder(run_dir).canonical_model)
    plan = RunFolder(run_dir).require(QuantPlan)
    executor = Executor(model)
    names = executor.activation_names()
    stacked: dict[str, list[np.ndarray]] = {}
    for i in range(len(inputs["x"])):
        with torch.inference_mode():
            result = executor.run(
                {"x": inputs["x"][i : i + 1]},
                outputs=[],
                keep=names,
                hooks=hooks or QuantHooks(plan),  # type: ignore[arg-type]
            )
        for name in names:
            stacked.setdefault(name, []).append(result[name].numpy())
    given = {"x": inputs["x"]} if with_inputs else {}
    np.savez(path, **given, **{k: np.concatenate(v) for k, v in stacked.items()})
    return names


def test_a_dump_of_our_emulation_agrees_everywhere(run: Path, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in.npz")
    names = _emulator_dump(run, inputs, tmp_path / "ours.npz")
    report = compare_dumps(run, tmp_path / "ours.npz", "npz", output=tmp_path / "out")
    assert report.samples == 3
    assert {t.tensor for t in report.tensors} >= set(names)
    computed = [t for t in report.tensors if t.op_type != "input"]
    assert all(math.isinf(t.vs_emulation.snr_db) for t in computed)
    assert all(t.codes_equal == 1.0 for t in computed if t.quantized_here)
    assert report.first_divergence is None
    saved = CompareReport.load(tmp_path / "out" / "compare.json")
    assert saved.tensors[0].tensor == report.tensors[0].tensor


def test_onnx_runtime_dump_is_float_and_parts_where_we_quantize(run: Path, tmp_path: Path) -> None:
    _inputs(tmp_path / "in.npz")
    canonical = RunFolder(run).canonical_model
    report = compare_dumps(
        run, canonical, "onnx-outputs", inputs=tmp_path / "in.npz", output=tmp_path / "out"
    )
    assert report.tensors, "ORT's tensors align by name"
    # ORT runs the float model: it agrees with our float run, not with the emulation.
    assert min(t.vs_float.snr_db for t in report.tensors) > 80
    first = report.first_divergence
    assert first is not None
    entry = next(t for t in report.tensors if t.tensor == first.tensor)
    assert entry.quantized_here and entry.dump_step is None
    assert "no integer grid" in first.cause
    # Replayed from ORT's own (float) inputs, our op still quantizes: local, the grid.
    assert first.kind == "local" and first.replay is not None and first.replay.cause == "grid"


def test_bad_dumps_are_one_clear_error(run: Path, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in.npz")
    _emulator_dump(run, inputs, tmp_path / "ours.npz")
    data = dict(np.load(tmp_path / "ours.npz"))
    tensor = next(k for k in data if k != "x")
    # A name no tensor has is skipped and listed with the closest; only unknown names: error.
    np.savez(tmp_path / "extra.npz", **data, **{"typo_" + tensor: data[tensor]})
    report = compare_dumps(run, tmp_path / "extra.npz", "npz", output=tmp_path / "out")
    assert tensor in report.skipped["typo_" + tensor]
    np.savez(tmp_path / "unknown.npz", x=data["x"], **{"typo_" + tensor: data[tensor]})
    with pytest.raises(UserError, match=f"closest: {tensor}"):
        compare_dumps(run, tmp_path / "unknown.npz", "npz")
    np.savez(tmp_path / "shape.npz", **{**data, tensor: data[tensor][..., :1]})
    with pytest.raises(UserError, match="values"):
        compare_dumps(run, tmp_path / "shape.npz", "npz")
    np.savez(tmp_path / "noinput.npz", **{k: v for k, v in data.items() if k != "x"})
    with pytest.raises(UserError, match="graph input 'x'"):
        compare_dumps(run, tmp_path / "noinput.npz", "npz")
    (tmp_path / "map.json").write_text(json.dumps({"a": "nope"}))
    with pytest.raises(UserError, match="name map"):
        compare_dumps(run, tmp_path / "ours.npz", "npz", name_map=tmp_path / "map.json")


def test_cli_prints_the_table_and_one_error_line(run: Path, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path / "in.npz")
    _emulator_dump(run, inputs, tmp_path / "ours.npz")
    done = quantlens("compare", str(run), "--dumps", str(tmp_path / "ours.npz"), "--top", "3")
    assert done.returncode == 0, done.stderr
    assert "all within 40 dB of our emulation" in done.stdout.splitlines()[-1]
    (tmp_path / "empty.npz").write_bytes(b"not a zip")
    bad = quantlens("compare", str(run), "--dumps", str(tmp_path / "empty.npz"))
    assert "cannot read" in one_error_line(bad)


def test_the_report_gets_a_compare_section(run: Path, tmp_path: Path) -> None:
    from quantlens.report.render import render_html
    from quantlens.report.run import load_run

    inputs = _inputs(tmp_path / "in.npz")
    _emulator_dump(run, inputs, tmp_path / "ours.npz")
    out = tmp_path / "out"
    compare_dumps(run, tmp_path / "ours.npz", "npz", output=out)
    html, sections = render_html(load_run(out))
    assert "compare" in sections and "Against another runtime" in html


def test_snpe_raw_folders_and_tpu_mlir_op_names_align(run: Path, tmp_path: Path) -> None:
    """The same emulator dump written as SNPE's per-sample .raw files (sanitized names) and
    keyed by TPU-MLIR's op names reads back to the same tensors."""
    from quantlens.ir.index import ModelIndex
    from quantlens.ir.vendors.tpu_mlir_ops import graph_facts, tpu_ops

    inputs = _inputs(tmp_path / "in.npz", count=2)
    _emulator_dump(run, inputs, tmp_path / "ours.npz")
    data = dict(np.load(tmp_path / "ours.npz"))
    for sample in range(2):
        folder = tmp_path / "raw" / f"Result_{sample}"
        folder.mkdir(parents=True)
        for name, array in data.items():
            safe = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
            array[sample].astype(np.float32).tofile(folder / f"{safe}.raw")
    raw = compare_dumps(
        run, tmp_path / "raw", "snpe-raw", inputs=tmp_path / "in.npz", output=tmp_path / "o1"
    )
    assert raw.first_divergence is None and len(raw.tensors) >= len(data) - 1
    model = ir.load(RunFolder(run).canonical_model)
    ops = tpu_ops(ModelIndex.from_model(model), graph_facts(model))
    by_tensor = {op.output: op.name for op in ops}
    renamed = {by_tensor.get(k, k): v for k, v in data.items() if k in by_tensor or k == "x"}
    renamed["x_Conv_si8"] = data["x"]  # a cast TPU-MLIR's lowering adds: skipped
    np.savez(tmp_path / "tpu.npz", **renamed)
    tpu = compare_dumps(run, tmp_path / "tpu.npz", "tpu-mlir", output=tmp_path / "o2")
    assert "x_Conv_si8" in tpu.skipped
    assert {t.dump_name for t in tpu.tensors} >= set(renamed) - {"x_Conv_si8"}
    assert tpu.first_divergence is None


def test_replay_finds_the_op_that_differs(run: Path, tmp_path: Path) -> None:
    """A runtime whose second Conv writes other codes: that Conv, fed the runtime's own
    inputs, still disagrees (local); the ops after it, fed its output, agree (inherited)."""
    inputs = _inputs(tmp_path / "in.npz")
    plan = RunFolder(run).require(QuantPlan)
    _emulator_dump(run, inputs, tmp_path / "local.npz", _OneStepUp(plan, "c2", 3))
    report = compare_dumps(run, tmp_path / "local.npz", "npz", output=tmp_path / "out")
    first = report.first_divergence
    assert first is not None and first.tensor == "c2" and first.kind == "local"
    assert first.replay is not None and first.replay.inputs == ["r1"]
    assert first.replay.cause == "op-differs" and first.replay.max_code_diff == 1
    assert first.cause.startswith("local (op-differs)")
    after = [r for r in report.replays if r.tensor != "c2"]
    assert after and all(r.cause == "inherited" for r in after)
    assert after[0].worst_input == "c2" and "c2" in after[0].detail
    saved = CompareReport.load(tmp_path / "out" / "compare.json")
    assert saved.first_divergence == first and saved.replays == report.replays
    from quantlens.report.render import render_html
    from quantlens.report.run import load_run

    html, _ = render_html(load_run(tmp_path / "out"))
    assert "Each diverging op" in html and "op-differs" in html
    done = quantlens("compare", str(run), "--dumps", str(tmp_path / "local.npz"), "--top", "1")
    assert done.returncode == 0, done.stderr
    assert "op-differs" in done.stdout and "inherited" in done.stdout  # the replayed rows
    # A dump without the Relu's output: the Conv is replayed through our Relu, and says so.
    data = {k: v for k, v in np.load(tmp_path / "local.npz").items() if k != "r1"}
    np.savez(tmp_path / "fused.npz", **data)
    fused = compare_dumps(run, tmp_path / "fused.npz", "npz").first_divergence
    assert fused is not None and fused.replay is not None
    assert fused.replay.inputs == ["bn1"] and fused.replay.fused == ["Relu"]
    assert "through 1 ops the dump lacks: Relu" in fused.cause


def test_replay_calls_an_inherited_divergence_inherited(run: Path, tmp_path: Path) -> None:
    """A few codes off at the Relu (still above 40 dB) put the next Conv below 40 dB; fed the
    runtime's Relu output, our Conv reproduces it: inherited, and the Relu is named."""
    inputs = _inputs(tmp_path / "in.npz")
    plan = RunFolder(run).require(QuantPlan)
    _emulator_dump(run, inputs, tmp_path / "early.npz", _OneStepUp(plan, "r1", 50))
    report = compare_dumps(run, tmp_path / "early.npz", "npz", output=tmp_path / "out")
    relu = next(t for t in report.tensors if t.tensor == "r1")
    assert relu.vs_emulation.snr_db > report.threshold_db  # the Relu has not parted yet
    first = report.first_divergence
    assert first is not None and first.tensor == "c2" and first.kind == "inherited"
    assert first.replay is not None and first.replay.cause == "inherited"
    assert first.replay.worst_input == "r1" and first.replay.codes_equal == 1.0
    assert first.origin is not None and first.origin.tensor == "r1"
    assert first.origin.cause == "op-differs" and first.upstream_local == 1
    assert first.upstream_causes == {"op-differs": 1}
    assert "inherited" in first.cause and "enter at r1" in first.cause


def test_replay_tells_float_summation_from_other_arithmetic(run: Path, tmp_path: Path) -> None:
    """Codes flipped only where our Conv's value sits within 0.005 steps of a rounding
    boundary are what another float summation order does: `arithmetic`, not `op-differs`."""
    inputs = _inputs(tmp_path / "in.npz")
    plan = RunFolder(run).require(QuantPlan)
    _emulator_dump(run, inputs, tmp_path / "ours.npz", with_inputs=False)
    data = dict(np.load(tmp_path / "ours.npz"))
    step = plan.activations["c2"].scale[0]
    quotient = _float_conv(run, inputs)["c2"] / np.float32(step)
    ours = np.round(data["c2"] / step)
    near = np.abs(quotient - np.floor(quotient) - 0.5) < 0.005
    assert near.any()
    other = np.where(quotient > ours, ours + 1, ours - 1)  # the other neighbour of the value
    data["c2"] = (np.where(near, other, ours) * step).astype(np.float32)
    np.savez(tmp_path / "summed.npz", **data)
    report = compare_dumps(
        run, tmp_path / "summed.npz", "npz", inputs=tmp_path / "in.npz", threshold_db=80
    )
    first = report.first_divergence
    assert first is not None and first.tensor == "c2" and first.replay is not None
    assert first.replay.cause == "arithmetic" and "summation order" in first.cause
    assert first.replay.boundary_steps is not None and first.replay.boundary_steps < 0.005


def _float_conv(run: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The second Conv's value before its output quantizer, in float, from our quantized r1."""
    model = ir.load(RunFolder(run).canonical_model)
    plan = RunFolder(run).require(QuantPlan)
    hooks = QuantHooks(plan, only=set(plan.activations) - {"c2"} | set(plan.weights))
    hooks.kernels = {}
    executor = Executor(model)
    values = []
    for i in range(len(inputs["x"])):
        with torch.inference_mode():
            result = executor.run({"x": inputs["x"][i : i + 1]}, outputs=["c2"], hooks=hooks)
        values.append(result["c2"].numpy())
    return {"c2": np.concatenate(values)}


def test_one_step_codes_at_exact_ties_are_rounding() -> None:
    """The verdict on a replay's numbers: ties, a hair from the boundary, or further."""
    from quantlens.analysis.compare import Sums
    from quantlens.analysis.replay import ReplayStats, describe

    def verdict(ties: int, boundary: float, max_diff: int = 1, equal: int = 990) -> str:
        agreement = Sums(signal=1.0, noise=1e-3, dot=1.0, candidate=1.0)
        stats = ReplayStats(agreement, 1, 1000, equal, 1000 - equal, max_diff, ties, boundary)
        return describe("t", "Conv", ["a"], stats, 40.0, None, {"a": 50.0}, local_only=True).cause

    assert verdict(ties=8, boundary=0.0) == "rounding-ties"
    assert verdict(ties=0, boundary=0.004) == "arithmetic"
    assert verdict(ties=0, boundary=0.05) == "arithmetic"  # F16 or a rounded bias
    assert verdict(ties=0, boundary=0.2) == "op-differs"
    assert verdict(ties=0, boundary=0.004, max_diff=3) == "op-differs"
    agreement = Sums(signal=1.0, noise=1e-6, dot=1.0, candidate=1.0)
    stats = ReplayStats(agreement, 1, 1000, 999, 1, 1, 0, 0.001)
    reproduced = describe("t", "Conv", ["a"], stats, 40.0, None, {"a": 35.0})
    assert reproduced.cause == "inherited" and reproduced.worst_input == "a"


def test_replay_feeds_a_float_dump_through_our_quantizer(tmp_path: Path) -> None:
    """A runtime that dumps a tensor before its own cast to int8 (float values that round to
    our codes): the op after it, fed those values through our quantizer as our emulation reads
    them, reproduces our output exactly, while the tensor itself parts on the grid."""
    from quantlens.analysis.replay import Replayer
    from quantlens.pipeline.compare import emulated_grids

    run_dir, _ = make_run(tmp_path, "ort-cpu", Assignment(target="ort-cpu"))
    inputs = _inputs(tmp_path / "in.npz")
    _emulator_dump(run_dir, inputs, tmp_path / "ours.npz", with_inputs=False)
    data = dict(np.load(tmp_path / "ours.npz"))
    plan = RunFolder(run_dir).require(QuantPlan)
    step = plan.activations["r1"].scale[0]
    jitter = np.random.default_rng(3).uniform(-0.3, 0.3, data["r1"].shape) * step
    data["r1"] = (data["r1"] + jitter).astype(np.float32)  # the same codes, off the grid
    np.savez(tmp_path / "precast.npz", **data)
    report = compare_dumps(
        run_dir, tmp_path / "precast.npz", "npz", inputs=tmp_path / "in.npz", threshold_db=80
    )
    first = report.first_divergence
    assert first is not None and first.tensor == "r1" and first.kind == "local"
    assert first.replay is not None and first.replay.cause == "grid"
    # The float Conv after it (the dump's c2 is ours) from the jittered r1.
    model = ir.load(RunFolder(run_dir).canonical_model)
    executor = Executor(model)
    feeds = [{"x": inputs["x"][i : i + 1]} for i in range(len(inputs["x"]))]
    shapes = {"r1": ((1, 8, 8, 8), torch.float32), "c2": ((1, 4, 8, 8), torch.float32)}
    grids = emulated_grids(model, plan)
    replayer = Replayer(executor, QuantHooks(plan), grids, data, feeds, shapes)
    found = replayer.stats("c2")
    assert found is not None and found[0] == ["r1"]
    assert found[1].samples == 3 and found[1].agreement.noise == 0.0


def test_replay_names_a_layout_when_only_the_order_differs(run: Path, tmp_path: Path) -> None:
    """A runtime that dumps the second Conv's output in another layout (its rows reversed):
    from the same inputs our op gives the same values in another order."""
    inputs = _inputs(tmp_path / "in.npz")
    _emulator_dump(run, inputs, tmp_path / "ours.npz")
    data = dict(np.load(tmp_path / "ours.npz"))
    data["c2"] = np.ascontiguousarray(data["c2"][:, :, ::-1])
    np.savez(tmp_path / "layout.npz", **data)
    report = compare_dumps(run, tmp_path / "layout.npz", "npz", output=tmp_path / "out")
    first = report.first_divergence
    assert first is not None and first.tensor == "c2" and first.replay is not None
    assert first.replay.cause == "layout" and "another order" in first.cause


def test_a_replay_that_fails_is_a_note_not_an_error(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel refusing the dump's values costs the replay, not the comparison."""
    from quantlens.analysis import replay

    def refuse(*args: object) -> None:
        raise RuntimeError("a kernel refused\nmore")

    inputs = _inputs(tmp_path / "in.npz")
    plan = RunFolder(run).require(QuantPlan)
    _emulator_dump(run, inputs, tmp_path / "local.npz", _OneStepUp(plan, "c2", 3))
    monkeypatch.setattr(replay.Replayer, "_replayed", refuse)
    report = compare_dumps(run, tmp_path / "local.npz", "npz", output=tmp_path / "out")
    first = report.first_divergence
    assert first is not None and first.tensor == "c2" and first.kind is None
    assert report.replays == [] and "op of c2 not replayed: RuntimeError: a kernel refused" in (
        report.notes
    )


def test_a_float16_dump_where_we_quantize_is_named(run: Path, tmp_path: Path) -> None:
    """A runtime that runs the Relu in F16 (TPU-MLIR's F16 LayerNorm): said so, not a fusion."""
    inputs = _inputs(tmp_path / "in.npz")
    _emulator_dump(run, inputs, tmp_path / "ours.npz")
    data = dict(np.load(tmp_path / "ours.npz"))
    model = ir.load(RunFolder(run).canonical_model)
    with torch.inference_mode():
        floats = [Executor(model).run({"x": x[None]}, outputs=["r1"])["r1"] for x in inputs["x"]]
    data["r1"] = np.concatenate([f.numpy() for f in floats]).astype(np.float16).astype(np.float32)
    np.savez(tmp_path / "f16.npz", **data)
    report = compare_dumps(run, tmp_path / "f16.npz", "npz", output=tmp_path / "out")
    first = report.first_divergence
    assert first is not None and first.tensor == "r1" and first.replay is not None
    assert first.replay.cause == "grid" and "float16" in first.cause


def test_tpu_mlir_float_op_is_compared_through_its_int8_cast(run: Path, tmp_path: Path) -> None:
    """TPU-MLIR dumps a float op's output (its F16 LayerNorm) and, as a lowering op, the cast
    to int8 its consumer reads (`<op><consumer>_si8`): the cast is what is compared."""
    from quantlens.ir.index import ModelIndex
    from quantlens.ir.vendors.tpu_mlir_ops import graph_facts, tpu_ops

    inputs = _inputs(tmp_path / "in.npz", count=2)
    _emulator_dump(run, inputs, tmp_path / "ours.npz")
    data = dict(np.load(tmp_path / "ours.npz"))
    model = ir.load(RunFolder(run).canonical_model)
    ops = tpu_ops(ModelIndex.from_model(model), graph_facts(model))
    by_tensor = {op.output: op.name for op in ops}
    renamed = {by_tensor.get(k, k): v for k, v in data.items() if k in by_tensor or k == "x"}
    relu, conv = by_tensor["r1"], by_tensor["c2"]
    step = RunFolder(run).require(QuantPlan).activations["r1"].scale[0]
    jitter = np.random.default_rng(5).uniform(-0.3, 0.3, data["r1"].shape) * step
    renamed[relu] = (data["r1"] + jitter).astype(np.float32)  # float, before the cast
    renamed[f"{relu}{conv}_si8"] = data["r1"]  # the cast: our codes
    renamed["x_Conv_si8"] = data["x"]  # the input's own cast stays skipped
    np.savez(tmp_path / "tpu.npz", **renamed)
    report = compare_dumps(run, tmp_path / "tpu.npz", "tpu-mlir", output=tmp_path / "out")
    entry = next(t for t in report.tensors if t.tensor == "r1")
    assert entry.dump_name == f"{relu}{conv}_si8" and math.isinf(entry.vs_emulation.snr_db)
    assert "before TPU-MLIR's cast" in report.skipped[relu] and "x_Conv_si8" in report.skipped
    assert report.first_divergence is None
