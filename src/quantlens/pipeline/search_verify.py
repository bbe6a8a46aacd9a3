"""The chosen point checked where it will run: its exported QDQ model scored in ONNX Runtime.

The search scores candidates in the emulator; for an ONNX Runtime target the exported model is
the deliverable, and the two can differ by a few samples (issue #22: the search said 0.9970 and
met its goal, the export scored 0.9966 in ONNX Runtime and missed it). So for those targets the
goal is judged on ONNX Runtime's score of the export; a vendor chip does not run QDQ models, and
there the emulator's metric is the judged one, with the export's ONNX Runtime score beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from quantlens.artifacts.search import RuntimeCheck, SearchReport
from quantlens.emulate.ort import OrtRunner
from quantlens.pipeline.tasks import TaskScorer
from quantlens.schemes.profiles import ORT_VENDOR, TargetProfile

Progress = Callable[[int, int], None]
ORT = ORT_VENDOR


def score_in_onnxruntime(
    scorer: TaskScorer, model: Path, progress: Progress | None = None, optimize: bool = True
) -> dict[str, float]:
    """Every metric of the scorer's task on `model` run by ONNX Runtime over the same samples
    and with the same evaluator as the emulator's scores (`optimize`: ORT's graph fusions on;
    a simulation, `quantlens.export.simulation`, runs without them)."""
    runner = OrtRunner(model, threads=torch.get_num_threads(), optimize=optimize)
    outputs = ((sample, runner.run(feed)) for sample, feed in scorer.samples)
    return scorer.evaluate(outputs, progress)


def runtime_check(
    report: SearchReport,
    profile: TargetProfile,
    scorer: TaskScorer | None,
    qdq_model: Path,
    progress: Progress | None = None,
    key: str | None = None,
) -> RuntimeCheck:
    """The chosen point's (or point `key`'s) metric as the search scored it and of its export
    in ONNX Runtime; the goal is judged on the export's score on an ONNX Runtime target, on the
    emulator's where the chip runs no QDQ model (the export is still scored there: a plan the QDQ
    file does not carry shows up as a gap between the two)."""
    point = report.point(key or report.chosen)
    scored = point.metric if point is not None else None
    if scorer is None or scored is None:
        note = "no task metric (no --data): quantize.json compares the point's outputs"
        return RuntimeCheck(search_metric=scored, note=note)
    # A Python float: evaluators may return numpy scalars, which search.json cannot hold.
    found = float(score_in_onnxruntime(scorer, qdq_model, progress)[scorer.primary])
    check = RuntimeCheck(runtime="onnxruntime", search_metric=scored, runtime_metric=found)
    if profile.vendor != ORT:
        check = _judged(report, check, scored)
        judged = "the emulator's" if report.engine == "emulator" else "its ONNX simulation's"
        check.note = (
            f"{profile.name} does not run QDQ models: the goal is judged on {judged} "
            f"metric {scored:.4f}; the QDQ export scores {found:.4f} in ONNX Runtime"
            f"{_export_verdict(report, found)}; check the vendor's build (`quantlens export`)"
        )
        return check
    check = _judged(report, check, found)
    where = "ONNX Runtime" if report.engine == "onnxruntime" else "the emulator"
    check.note = (
        f"the export scores {found:.4f} in ONNX Runtime; the search scored {scored:.4f} in {where}"
    )
    if check.goal_met is False and _meets(report, scored):
        check.note += "; the goal is met as the search scored it, not by the export"
    return check


def _export_verdict(report: SearchReport, metric: float) -> str:
    met = _meets(report, metric)
    return "" if met is None else (" (meets the goal)" if met else " (misses the goal)")


def _judged(report: SearchReport, check: RuntimeCheck, metric: float) -> RuntimeCheck:
    check.judged_metric = metric
    check.goal_met = _meets(report, metric)
    return check


def _meets(report: SearchReport, metric: float) -> bool | None:
    if report.float_metric is None or report.goal.max_drop is None:
        return None
    return bool(metric >= report.float_metric - report.goal.max_drop)
