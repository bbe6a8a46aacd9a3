"""An explicit assignment means what it says on every target (#17 item 4): `quantize` closes it
under the profile's rules, reports each change and why, or refuses it in one line; the vendor
files then read back as the closed assignment."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from quantlens.emulate import Executor
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.errors import UserError
from quantlens.pipeline.closure import close_assignment
from quantlens.pipeline.export import export_vendor, import_vendor
from quantlens.pipeline.quantize import QuantizeOptions, quantize_model
from quantlens.pipeline.session import prepare
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.profiles import get_profile
from quantlens.search.groups import build_rules
from quantlens.search.units import find_units
from tests.helpers import npz_folder, one_error_line, quantlens
from tests.models import unbalanced_model

# unbalanced_model: sub, div, conv1, relu1, conv2, relu2, conv3, pool, flatten, fc


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("closure") / "unbalanced.onnx"
    onnx.save(unbalanced_model(), path)
    return path


@pytest.fixture(scope="module")
def model(model_path: Path) -> ir.Model:
    return prepare(model_path, batch=1).model


def _close(model: ir.Model, target: str, **layers: str) -> tuple[Assignment, list]:
    assignment = Assignment(target=target, layers=layers)  # type: ignore[arg-type]
    return close_assignment(model, assignment, get_profile(target))


def _bits(model: ir.Model, assignment: Assignment, tensor: str) -> int:
    fmt = quantization_points(model, assignment, get_profile(assignment.target)).activations[tensor]
    assert isinstance(fmt, IntFormat)
    return fmt.bits


def test_qnn_a16_w8_gets_a_16_bit_input(model: ir.Model) -> None:
    """The issue's case: without the closure conv2 reads relu1's output at 8 bits."""
    asked = Assignment(target="qnn-htp", layers={"conv2": "a16_w8"})
    assert _bits(model, asked, "r1") == 8
    closed, changes = _close(model, "qnn-htp", conv2="a16_w8")
    # Conv+Relu is one HTP supergroup with one quantizer: relu1's output, now 16 bits, and
    # relu2's, which writes conv2's 16 bits.
    assert closed.layers == {
        "conv2": "a16_w8",
        "relu2": "a16_w8",
        "conv1": "a8_w8_a16",
        "relu1": "a8_w8_a16",
    }
    assert _bits(model, closed, "r1") == 16 and _bits(model, closed, "r2") == 16
    assert [c.node for c in changes] == ["conv1", "relu1", "relu2"]
    assert all("conv2 (a16_w8)" in c.reason for c in changes[:2])
    assert "one op on qnn-htp" in changes[2].reason


def test_hailo_closure_is_the_search_group(model: ir.Model) -> None:
    """Promoting a layer by hand drags exactly what the search's rules drag."""
    profile = get_profile("hailo8")
    base = Assignment(target="hailo8")
    points = quantization_points(model, base, profile)
    ranges = {n: (-1.0, 1.0) for n in points.calibration_targets()}
    executor = Executor(model)
    plan = build_plan(points, ranges, executor.weights, "hailo8")
    rules = build_rules(find_units(model, executor, plan, profile), profile)
    for unit in ("conv2", "conv3"):
        group = rules.node_modes(rules.group(unit))
        closed, _ = _close(model, "hailo8", **{unit: "a16_w16"})
        assert closed.layers == group, unit
    closed, changes = _close(model, "hailo8", conv2="a16_w16")
    assert {c.node: c.mode for c in changes} == {
        "conv1": "a8_w8_a16",
        "relu1": "a8_w8_a16",
        "relu2": "a16_w16",
    }


def test_data_movement_reads_what_it_writes_on_hailo(model: ir.Model) -> None:
    # fc reads flatten's output, and a Flatten outputs the precision it receives: flatten
    # goes 16-bit in and out, so the pool before it writes 16 bits (from its 8-bit input).
    closed, _ = _close(model, "hailo8", fc="a16_w16")
    assert closed.layers == {"fc": "a16_w16", "flatten": "a16_w16", "pool": "a8_w8_a16"}
    assert _bits(model, closed, "p") == 16 and _bits(model, closed, "c3") == 8


def test_bm1684x_fused_relu_follows_its_float_conv(model: ir.Model) -> None:
    closed, changes = _close(model, "bm1684x", conv2="fp16")
    assert closed.layers == {"conv2": "fp16", "relu2": "fp16"}
    assert "one op on bm1684x" in changes[0].reason
    assert _close(model, "bm1684x", fc="fp16")[1] == []  # a float layer reads any input


def test_ort_needs_no_closure(model: ir.Model) -> None:
    closed, changes = _close(model, "ort-cpu", conv2="a16_w8")
    assert changes == [] and closed.layers == {"conv2": "a16_w8"}


def test_unrealizable_assignments_are_refused_and_views_of_one_quantizer_are_not(
    model: ir.Model,
) -> None:
    with pytest.raises(UserError, match=r"conv1 \(a8_w4\).*no hailo8 mode writes 16 bits"):
        _close(model, "hailo8", conv1="a8_w4", conv2="a16_w16")
    with pytest.raises(UserError, match="one fused op"):
        _close(model, "hailo8", conv2="a16_w16", relu2="a8_w8")
    # Named from each node's side, one 16-bit quantizer is one quantizer (as read back).
    closed, _ = _close(model, "qnn-htp", conv1="a8_w8_a16", relu1="a16_w16", conv2="a16_w8")
    assert closed.layers["conv1"] == "a8_w8_a16" and closed.layers["relu1"] == "a16_w16"


def test_quantize_reports_changes_and_aimet_reads_back_the_assignment(
    model_path: Path, tmp_path: Path
) -> None:
    calib = npz_folder(tmp_path / "calib", 4, (1, 3, 16, 16))
    given = tmp_path / "assignment.json"
    given.write_text(Assignment(target="qnn-htp", layers={"conv2": "a16_w8"}).to_json())
    run = tmp_path / "run"
    result = quantlens(
        "quantize", str(model_path), "--calib", str(calib), "--target", "qnn-htp",
        "--assignment", str(given), "-o", str(run),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "changed conv1: a8_w8 -> a8_w8_a16 (feeds conv2 (a16_w8)" in result.stdout
    assert "changed relu1: a8_w8 -> a8_w8_a16" in result.stdout
    record = json.loads((run / "quantize.json").read_text())["mode_changes"]
    assert [(c["node"], c["mode"]) for c in record] == [
        ("conv1", "a8_w8_a16"),
        ("relu1", "a8_w8_a16"),
        ("relu2", "a16_w8"),
    ]
    exported = export_vendor(run, "aimet", run / "model.encodings")
    assert exported.dropped == []
    back = import_vendor(run / "model.encodings", "aimet", run / "model.canonical.onnx")
    closed = Assignment.load(run / "assignment.json")
    for layer in ("conv1", "conv2", "conv3", "fc"):
        assert back.mode_name(layer) == closed.mode_name(layer), layer
    assert back.mode_name("conv2") == "a16_w8"


def test_quantize_refuses_in_one_line(model_path: Path, tmp_path: Path) -> None:
    calib = npz_folder(tmp_path / "calib", 2, (1, 3, 16, 16))
    given = tmp_path / "assignment.json"
    layers = {"conv1": "a8_w4", "conv2": "a16_w16"}
    given.write_text(Assignment(target="hailo8", layers=layers).to_json())  # type: ignore[arg-type]
    result = quantlens(
        "quantize", str(model_path), "--calib", str(calib), "--target", "hailo8",
        "--assignment", str(given), "-o", str(tmp_path / "run"),
    )  # fmt: skip
    line = one_error_line(result)
    assert "cannot be realized on hailo8" in line and "conv1 (a8_w4)" in line


@pytest.mark.slow
def test_pplcnet_qnn_encodings_read_back_as_assigned(tmp_path: Path) -> None:
    """On the zoo classifier: `a16_w8` on one conv, exported as AIMET encodings, reads back
    as `a16_w8` (it read back as `a8_w8_a16` before the closure)."""
    from quantlens.data import zoo

    path = zoo.fetch("pplcnet-orientation")
    calib = npz_folder(tmp_path / "calib", 2, (1, 3, 224, 224))
    given = tmp_path / "assignment.json"
    given.write_text(Assignment(target="qnn-htp", layers={"Conv.5": "a16_w8"}).to_json())
    run = tmp_path / "run"
    opts = QuantizeOptions(calib=calib, target="qnn-htp", run_dir=run, assignment=given)
    report = quantize_model(path, opts)
    assert [(c.node, c.mode) for c in report.mode_changes] == [("HardSwish.4", "a8_w8_a16")]
    assert export_vendor(run, "aimet", run / "m.encodings").dropped == []
    back = import_vendor(run / "m.encodings", "aimet", path)
    assert back.mode_name("Conv.5") == "a16_w8"
    assert back.mode_name("HardSwish.4") == "a8_w8_a16"


def test_a_planned_export_keeps_the_plan_it_scored(model_path: Path, tmp_path: Path) -> None:
    """The search hands `quantize` the plan it scored: assignment and plan stay that plan's,
    and what the chip's rules would change is said in the notes, not silently half-applied."""
    from quantlens.pipeline.quantize import quantize
    from quantlens.pipeline.session import open_session

    calib = npz_folder(tmp_path / "calib", 2, (1, 3, 16, 16))
    opts = QuantizeOptions(calib=calib, target="qnn-htp", run_dir=tmp_path / "run")
    session = open_session(model_path, opts, opts.run_dir)
    scored = Assignment(target="qnn-htp", layers={"conv2": "a16_w8", "relu2": "a16_w8"})
    points = session.points(scored)
    stats, _ = session.calibrate(points)
    plan = session.plan(points, stats)
    report = quantize(session, opts, assignment=scored, planned=(plan, []))
    assert report.mode_changes == []
    assert Assignment.load(opts.run_dir / "assignment.json").layers == scored.layers
    assert any(n.startswith("not applied") and "conv1" in n for n in report.notes)


def test_analyze_measures_the_closed_assignment(model_path: Path, tmp_path: Path) -> None:
    """`analyze --assignment` measures what `quantize` realizes: the same changes, said and
    kept in analysis.json, and conv2's input quantized at 16 bits."""
    calib = npz_folder(tmp_path / "calib", 2, (1, 3, 16, 16))
    given = tmp_path / "assignment.json"
    given.write_text(Assignment(target="qnn-htp", layers={"conv2": "a16_w8"}).to_json())
    run = tmp_path / "run"
    result = quantlens(
        "analyze", str(model_path), "--calib", str(calib), "--target", "qnn-htp",
        "--assignment", str(given), "--mode", "accumulated", "-o", str(run),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "changed conv1: a8_w8 -> a8_w8_a16" in result.stdout
    record = json.loads((run / "analysis.json").read_text())["mode_changes"]
    assert [(c["node"], c["mode"]) for c in record] == [
        ("conv1", "a8_w8_a16"),
        ("relu1", "a8_w8_a16"),
        ("relu2", "a16_w8"),
    ]
    plan = json.loads((run / "calibration.json").read_text())
    assert plan["tensors"]["r1"]  # the 16-bit tensor was calibrated for the closed plan


def test_a_searched_point_is_exported_under_the_chips_mode_names(tmp_path: Path) -> None:
    """hailo8 fuses Conv+Relu into one op with one quantizer: a point that gives the Relu a
    16-bit output realizes the Conv's too, so the export names both (the same quantizers);
    a point whose closure would change the plan keeps its modes for `quantize` to report."""
    from quantlens.pipeline.flows import _named_as_the_chip_does
    from quantlens.pipeline.search import prepare_search
    from quantlens.search_run import SearchOptions
    from tests.models import outlier_model

    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), model)
    calib = npz_folder(tmp_path / "calib", 2, (1, 3, 8, 8))
    opts = SearchOptions(calib=calib, target="hailo8", run_dir=tmp_path / "run", samples=2)
    setup = prepare_search(model, opts)
    said: list[str] = []

    def point(layers: dict[str, str]) -> Assignment:
        return Assignment(target="hailo8", default="a8_w8", layers=layers)  # type: ignore[arg-type]

    same, plan = _named_as_the_chip_does(setup, point({"relu2": "a8_w8_a16"}), said.append)
    assert same.layers == {"relu2": "a8_w8_a16", "conv2": "a8_w8_a16"}
    assert plan == setup.plan_for(same.layers)
    assert said == ["1 node modes follow the target's rules (the same quantizers)"]
    assert close_assignment(setup.session.model, same, setup.profile)[1] == []
    other = point({"conv2": "a8_w8_a16"})  # closing it quantizes relu2's output at 16 bits
    assert _named_as_the_chip_does(setup, other, said.append)[0] == other and len(said) == 1
