"""Runs of several stages: where one stage's result feeds another.

Stages never import each other; compositions live here. `search_model` searches and then
quantizes the chosen point on the same session (same graph, same calibrations, same fixes);
`evaluate_three_way` lets the evaluate stage quantize the model itself when asked to.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.journal import writing
from quantlens.artifacts.quantize import QuantizeReport
from quantlens.artifacts.search import RuntimeCheck, SearchReport
from quantlens.errors import UserError
from quantlens.pipeline import evaluate
from quantlens.pipeline.closure import close_assignment
from quantlens.pipeline.quantize import QuantizeOptions, quantize, quantize_model
from quantlens.pipeline.search import (
    SearchOptions,
    Setup,
    check_options,
    chosen_assignment,
    prepare_search,
    record_measured_cost,
    run_search,
)
from quantlens.pipeline.search_verify import runtime_check
from quantlens.pipeline.session import OptimizeOptions, open_session
from quantlens.pipeline.tasks import EvalOptions, QuantizeRequest
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.cost import get_cost_model, latency

Say = Callable[[str], None]
Progress = Callable[[int, int], None]
# The cheapest gain's quantize run, inside the search's folder.
CHEAPEST_GAIN = "cheapest-gain"


def quantize_options(opts: OptimizeOptions, run_dir: Path) -> QuantizeOptions:
    """`quantize` with the calibration and optimization settings of another stage's options."""
    shared = {f.name: getattr(opts, f.name) for f in dataclasses.fields(OptimizeOptions)}
    return QuantizeOptions(**shared, run_dir=run_dir)


def search_model(
    path: Path, opts: SearchOptions, say: Say | None = None, progress: Progress | None = None
) -> SearchReport:
    """Search; search.json, assignment.json and (with `export`) the chosen point's quantize run
    (same graph passes and fixes as `--optimize` asks) go to run_dir. The search and the export
    commit one after the other: an export that fails undoes its own files only, so the search's
    results stay (a search of half an hour whose export failed used to leave only its caches)."""
    check_options(opts)
    with writing(opts.run_dir, "search"):
        setup = prepare_search(path, opts, say, progress)
        report = run_search(setup, opts, say, progress)
        _save(setup, opts, report)
    if not opts.export or (report.chosen is None and report.cheapest_gain is None):
        return report
    try:
        with writing(opts.run_dir, "search"):
            _export_points(setup, opts, report, say, progress)
            _save(setup, opts, report)
    except UserError as exc:
        kept = f"the search's results are kept in {opts.run_dir} (search.json, assignment.json)"
        problem = f"exporting the searched points failed: {exc.problem}; {kept}"
        raise UserError(problem, exc.fix) from exc
    except Exception as exc:
        exc.add_note(f"quantlens: exporting the searched points failed; {opts.run_dir} keeps them")
        raise
    return report


def _save(setup: Setup, opts: SearchOptions, report: SearchReport) -> None:
    # Wall time of the whole command: loading, calibrating, searching and exporting.
    report.seconds = round(time.perf_counter() - setup.started, 2)
    RunFolder(opts.run_dir).write(report)


def _export_points(
    setup: Setup,
    opts: SearchOptions,
    report: SearchReport,
    say: Say | None,
    progress: Progress | None,
) -> None:
    """The cheapest gain and the chosen point exported and scored in the target runtime."""
    if report.cheapest_gain is not None:
        # First: the chosen point's plan must be the last one built (its weights stay).
        report.cheapest_gain_check = _export_cheapest_gain(setup, opts, report, say, progress)
    if report.chosen is None:
        return
    quantized = _export(setup, opts, report, say, progress)
    if get_cost_model(opts.cost_model).measured_after_export:
        _measured_costs(setup, opts, report, quantized)
    if say is not None and setup.scorer is not None:
        say("scoring the chosen point's export in the target runtime")
    qdq = Path(quantized.files["qdq_model"])
    report.runtime_check = runtime_check(report, setup.profile, setup.scorer, qdq, progress)


def _export(
    setup: Setup,
    opts: SearchOptions,
    report: SearchReport,
    say: Say | None,
    progress: Progress | None,
    key: str | None = None,
) -> QuantizeReport:
    """The chosen point (or point `key`, into the session's folder as it is given) quantized
    as the search scored it."""
    assignment = chosen_assignment(report, setup.profile, key)
    assert assignment is not None
    if say is not None:
        what = "chosen" if key is None else "cheapest gain's"
        say(f"exporting the {what} assignment ({len(assignment.layers)} nodes promoted)")
    qopts = quantize_options(opts, setup.session.folder.path)
    assignment, plan = _named_as_the_chip_does(setup, assignment, say)
    # The plan the search scored, on the weights its fixes left: exported as it is.
    fixes = setup.fix_trial.kept() if setup.fix_trial is not None else []
    planned = (plan, fixes)
    return quantize(setup.session, qopts, say, progress, assignment=assignment, planned=planned)


def _export_cheapest_gain(
    setup: Setup,
    opts: SearchOptions,
    report: SearchReport,
    say: Say | None,
    progress: Progress | None,
) -> RuntimeCheck:
    """The cheapest point that beats every free fix, exported to its own folder and scored in
    the target runtime: the goal may price the chosen point far above it (issue #22: picodet on
    hailo8 chose 2x while 1.10x already beat the best fix by 0.1 mAP)."""
    key = report.cheapest_gain
    assert key is not None
    folder = RunFolder(opts.run_dir / CHEAPEST_GAIN)
    session = dataclasses.replace(setup.session, folder=folder)
    quantized = _export(
        dataclasses.replace(setup, session=session), opts, report, say, progress, key
    )
    if say is not None and setup.scorer is not None:
        say("scoring the cheapest gain's export in the target runtime")
    qdq = Path(quantized.files["qdq_model"])
    return runtime_check(report, setup.profile, setup.scorer, qdq, progress, key)


def _named_as_the_chip_does(
    setup: Setup, assignment: Assignment, say: Say | None
) -> tuple[Assignment, QuantPlan]:
    """The chosen assignment closed under the target's rules where that leaves its plan as
    scored, and that plan: on hailo8 a fused Conv+Add+Relu has one quantizer, so a point
    that promotes the Relu's output realizes the Conv's and Add's modes too (the OCR
    recognizer's export listed dozens of such "not applied" changes). A closure that changes
    the plan is left to `quantize`, which exports the scored plan and says what the chip
    would change."""
    closed, changes = close_assignment(setup.session.model, assignment, setup.profile)
    if not changes:
        return assignment, setup.plan_for(assignment.layers)
    realized = setup.plan_for(closed.layers)
    scored = setup.plan_for(assignment.layers)  # built last: its weights stay in the executor
    if (realized.activations, realized.weights) != (scored.activations, scored.weights):
        return assignment, scored
    if say is not None:
        say(f"{len(changes)} node modes follow the target's rules (the same quantizers)")
    return closed, scored


def _measured_costs(
    setup: Setup, opts: SearchOptions, report: SearchReport, quantized: QuantizeReport
) -> None:
    """ONNX Runtime latency of the chosen export against the all-int8 export."""
    feeds = setup.feeds[:4]
    chosen = latency(Path(quantized.files["qdq_model"]), feeds)
    int8_dir = RunFolder(opts.run_dir).search_cache / "int8"
    # A fresh session: fixes may have changed the search session's weights; its calibrations
    # carry over, so the int8 export calibrates nothing.
    # The search session's graph: its passes as the guard left them.
    fresh = open_session(setup.path, opts, int8_dir, graph=setup.session.graph)
    fresh.calibrations.adopt(setup.session.calibrations)
    quantize(fresh, quantize_options(opts, int8_dir))
    base = latency(RunFolder(int8_dir).qdq_model, feeds)
    record_measured_cost(report, RunFolder(opts.run_dir), chosen, base)


def _quantize_request(request: QuantizeRequest) -> QuantizeReport:
    return quantize_model(
        request.model,
        QuantizeOptions(
            calib=request.calib,
            target=request.target,
            run_dir=request.run_dir,
            assignment=request.assignment,
            input_shapes=request.input_shapes,
            spec=request.spec,
            device=request.device,
            scale=request.scale,
        ),
    )


def evaluate_three_way(
    model: str | Path,
    data: str | Path,
    task: str,
    options: EvalOptions | None = None,
    progress: Progress | None = None,
) -> evaluate.EvalReport:
    """The evaluate stage, able to quantize the model itself (assignment or target given)."""
    opts = options or EvalOptions()
    if opts.quantizer is None:
        opts = dataclasses.replace(opts, quantizer=_quantize_request)
    return evaluate.evaluate_three_way(model, data, task, opts, progress)
