"""The guard of `--optimize`'s graph passes: kept only when the quantized model gets no noisier.

The passes before calibration (Div->Mul, affine fusion, reorder removal, equalization) keep the
float outputs, but they change what is quantized: a fused Conv+Mul has one weight grid where there
were two ops, equalization moves range between layers. Each fix after the plan has a guard
(`FixGuard`); the passes had none, and on `hailo8` they cost the OCR recognizer 0.18 of character
accuracy (level 1: fusion and equalization together; BENCHMARKS.md, "Fixes"). So `quantize` plans
the model both ways, each on its own calibration, and measures the whole quantized model's output
SNR against the float model without the passes on the fixes' guard samples; the passes are kept
when they do not lower it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from quantlens.artifacts.quantize import PassesGuard
from quantlens.fixes.levels import GUARD_SAMPLES, quantized_noise
from quantlens.ir.passes.optimize import GraphOptions
from quantlens.pipeline.closure import close_assignment
from quantlens.pipeline.session import CalibrationOptions, Session, open_session
from quantlens.schemes.qparams import QuantPlan

Feed = dict[str, np.ndarray]
Say = Callable[[str], None]
Progress = Callable[[int, int], None]

# The passes that change what is quantized (a zero bias is exact on every grid, and HardSwish's
# split is the target's own kernel choice: neither is guarded).
GUARDED = ("div_to_mul", "fuse_affine", "channel_reorder", "equalize")


def guarded(graph: GraphOptions) -> list[str]:
    """The enabled passes the guard judges."""
    return [name for name in GUARDED if getattr(graph, name)]


def guard_passes(
    session: Session,
    path: Path,
    opts: CalibrationOptions,
    assignment: Path | None,
    say: Say | None = None,
    progress: Progress | None = None,
) -> Session:
    """`session` (opened with the passes) when they do not lower the quantized model's output
    SNR, else a session on the same folder without them, with the verdict as `passes_guard`
    (left None when no guarded pass changed the graph). Both calibrations stay in the folder's
    cache, so the chosen one is not redone."""
    changed = {r.name for r in session.graph_reports if r.changed}
    passes = [name for name in guarded(session.graph) if _report_name(name) in changed]
    if not passes:
        return session
    plain_graph = session.graph.model_copy(update=dict.fromkeys(GUARDED, False))
    plain = open_session(path, opts, session.folder.path, assignment=assignment, graph=plain_graph)
    feeds = list(plain.feeds[:GUARD_SAMPLES])
    if say is not None:
        say(f"guarding the graph passes ({', '.join(passes)}) on {len(feeds)} samples")
    without = _output_snr(plain, plain, progress, feeds)
    with_passes = _output_snr(session, plain, progress, feeds)
    kept = with_passes >= without
    verdict = PassesGuard(
        passes=passes,
        snr_without_db=without,
        snr_with_db=with_passes,
        kept=kept,
        samples=len(feeds),
    )
    if say is not None and not kept:
        say(
            f"graph passes undone (output SNR {with_passes:.2f} dB with them, {without:.2f} dB "
            "without): quantizing the graph as it was"
        )
    chosen = session if kept else plain
    chosen.passes_guard = verdict
    return chosen


def _report_name(option: str) -> str:
    """The PassReport name of a GraphOptions switch."""
    names = {"channel_reorder": "remove-channel-reorder"}
    return names.get(option, option.replace("_", "-"))


def _output_snr(
    session: Session, reference: Session, progress: Progress | None, feeds: list[Feed]
) -> float:
    return quantized_noise(reference.executor, session.executor, _plan(session, progress), feeds)[0]


def _plan(session: Session, progress: Progress | None) -> QuantPlan:
    """The session's plan of its own assignment, closed under the target's rules as `quantize`
    closes it, on its own calibration."""
    assignment, _ = close_assignment(session.model, session.assignment, session.profile)
    points = session.points(assignment)
    stats, _ = session.calibrate(points, progress)
    return session.plan(points, stats)
