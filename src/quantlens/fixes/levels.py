"""Optimization levels (`quantlens quantize --optimize LEVEL`) and the order fixes run in.

- 0: nothing.
- 1: graph passes before calibration (Div->Mul, affine fusion, RGB/BGR reorder removal,
  cross-layer equalization) and bias correction after the plan.
- 2: level 1 plus clip search (activation clip ranges, per-channel weight clips).
- 3: level 2 plus AdaRound and the fine-tune of quantization parameters.

Individual flags override the level either way.

The graph passes are guarded as a whole (`quantlens.pipeline.graph_guard`: the model planned
with and without them). Every fix after the plan is checked on up to `GUARD_SAMPLES` calibration
samples: the whole quantized model's output noise (per output channel, as the analysis measures
it) against the float outputs of the model before any fix. A fix that lowers that SNR is undone
and recorded as not kept: each fix scores its own small goal (a tensor's readers, a layer's mean
output, a layer's weights), which can win while the outputs lose (weight clipping halved the OCR
recognizer's output SNR on hailo8). The output SNR is itself only a proxy for the task metric
(see BENCHMARKS.md, "Fixes").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from quantlens.analysis.metrics import ErrorSums, OutputNoise, channel_axes
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.plan import QuantPoints
from quantlens.errors import UserError
from quantlens.fixes.result import FixResult, apply_fix
from quantlens.ir.passes.optimize import GraphOptions
from quantlens.schemes.qparams import QuantPlan

Progress = Callable[[int, int], None]
Say = Callable[[str], None]
MAX_LEVEL = 3


@dataclass
class FixSettings:
    """What runs; `None` in a request means "as the level says"."""

    fuse: bool = False
    equalize: bool = False
    bias_correction: bool = False
    clip_search: bool = False
    adaround: bool = False
    finetune: bool = False

    def graph_options(self) -> GraphOptions:
        return GraphOptions(
            div_to_mul=self.fuse,
            fuse_affine=self.fuse,
            channel_reorder=self.fuse,
            equalize=self.equalize,
            add_bias=self.bias_correction,
        )

    def enabled(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


def settings_for(level: int, overrides: Mapping[str, bool | None] | None = None) -> FixSettings:
    if not 0 <= level <= MAX_LEVEL:
        raise UserError(
            f"optimization level {level} does not exist", f"pick 0 to {MAX_LEVEL} (--optimize)"
        )
    settings = FixSettings(
        fuse=level >= 1,
        equalize=level >= 1,
        bias_correction=level >= 1,
        clip_search=level >= 2,
        adaround=level >= 3,
        finetune=level >= 3,
    )
    for name, value in (overrides or {}).items():
        if value is not None:
            if not hasattr(settings, name):
                names = ", ".join(f.name for f in fields(settings))
                raise UserError(f"unknown fix {name!r}", f"use one of: {names}")
            setattr(settings, name, value)
    return settings


def run_fixes(
    executor: Executor,
    plan: QuantPlan,
    points: QuantPoints,
    feeds: Sequence[Mapping[str, np.ndarray]],
    settings: FixSettings,
    say: Say | None = None,
    progress: Progress | None = None,
    budget_s: float | None = None,
    undo_worse: bool = True,
) -> tuple[QuantPlan, list[FixResult]]:
    """Run the enabled fixes in order, applying each to the executor and its model.
    `budget_s` caps each learned fix (AdaRound, fine-tune) and clip search's scoring. Without
    `undo_worse` a fix that lowers the output SNR is still measured but kept: a caller that
    scores the result on the task metric judges it (the SNR can fall where the metric rises)."""
    results: list[FixResult] = []
    steps = _steps(settings, points, budget_s)
    guard = FixGuard(executor, feeds[:GUARD_SAMPLES], undo_worse) if steps else None
    for name, make in steps:
        assert guard is not None
        if say is not None:
            say(f"fix: {name} on {len(feeds)} samples")
        start = time.perf_counter()
        result = make(executor, plan, feeds, progress)
        result.seconds = result.seconds or time.perf_counter() - start
        plan = guard.apply(plan, result)
        results.append(result)
        if say is not None and not result.kept:
            before, after = result.snr_before_db, result.snr_after_db
            say(f"fix: {name} undone (output SNR {before:.2f} -> {after:.2f} dB)")
    return plan, results


GUARD_SAMPLES = 8


class FixGuard:
    """Applies a fix, measures what it did, and undoes it when the outputs got noisier.

    Measured on the guard's samples against the float model as it was before any fix (a second
    executor keeps those weights: bias correction changes the float model on purpose): the output
    SNR per output channel, and the SNR of every weighted layer's output, so each fix reports
    which layers it helped."""

    def __init__(
        self,
        executor: Executor,
        feeds: Sequence[Mapping[str, np.ndarray]],
        undo_worse: bool = True,
    ) -> None:
        self.executor = executor
        self.undo_worse = undo_worse
        self.original = Executor(executor.model, device=executor.device)
        self.feeds = list(feeds)
        self.current: tuple[float, dict[str, float]] | None = None

    def measure(self, plan: QuantPlan) -> tuple[float, dict[str, float]]:
        """Output SNR (dB) and per-layer output SNR of the quantized model under `plan`."""
        layers = _layer_outputs(self.executor, plan)
        return quantized_noise(self.original, self.executor, plan, self.feeds, layers)

    def apply(self, plan: QuantPlan, result: FixResult) -> QuantPlan:
        if not result.weights and result.plan is None:
            return plan
        before = self.current if self.current is not None else self.measure(plan)
        old = {n: self.executor.weights[n].detach().cpu().numpy() for n in result.weights}
        new_plan = apply_fix(self.executor, result) or plan
        after = self.measure(new_plan)
        result.snr_before_db, result.snr_after_db = before[0], after[0]
        result.layer_snr_db = {
            name: (before[1][name], after[1][name]) for name in before[1] if name in after[1]
        }
        if self.undo_worse and after[0] < before[0]:
            apply_fix(self.executor, FixResult(name=f"undo {result.name}", weights=old))
            result.kept = False
            self.current = before
            return plan
        self.current = after
        return new_plan


def quantized_noise(
    reference: Executor,
    executor: Executor,
    plan: QuantPlan,
    feeds: Sequence[Mapping[str, np.ndarray]],
    layers: Sequence[str] = (),
) -> tuple[float, dict[str, float]]:
    """The output SNR (dB, per output channel as the analysis measures it) of `executor`'s model
    quantized by `plan` against `reference`'s float model on `feeds`, and the SNR of each of
    `layers` (tensors both graphs have). Both graphs must have the same outputs."""
    noise = OutputNoise(axes=channel_axes(executor.model.graph.outputs))
    sums = {name: ErrorSums() for name in layers}
    hooks = QuantHooks(plan, executor.device)
    keep = list(layers)
    with torch.inference_mode():
        for feed in feeds:
            # Re-run, not cached: every layer output of every guard sample would be
            # gigabytes on a 1024 px detector, and the layers follow the plan.
            floats = reference.run(feed, keep=keep)
            quantized = executor.run(feed, keep=keep, hooks=hooks)
            outputs = executor.output_names
            noise.add({o: floats[o] for o in outputs}, {o: quantized[o] for o in outputs})
            for name, acc in sums.items():
                acc.add(floats[name], quantized[name])
    return noise.snr_db, {name: acc.snr_db for name, acc in sums.items()}


def _layer_outputs(executor: Executor, plan: QuantPlan) -> list[str]:
    """The first output of every node that reads an integer-quantized weight (not a bias)."""
    names = []
    for step in executor.steps:
        weights = [plan.weights.get(n) for n in step.inputs if n in executor.weights]
        if step.outputs and any(q is not None and q.is_int and q.bias_of is None for q in weights):
            names.append(step.outputs[0])
    return names


Fix = Callable[
    [Executor, QuantPlan, Sequence[Mapping[str, np.ndarray]], Progress | None], FixResult
]


@dataclass(frozen=True)
class FixStep:
    """A fix after the plan: its recorded name, the `FixSettings` switch that turns it on, and
    how to make it for a run (quantization points, time budget of the learned fixes)."""

    name: str
    setting: str
    make: Callable[[QuantPoints, float | None], Fix]


# In run order. A new fix is one module that calls `register_fix`.
_FIXES: list[FixStep] = []


def register_fix(step: FixStep) -> FixStep:
    if step.setting not in {f.name for f in fields(FixSettings)}:
        raise ValueError(f"fix {step.name!r}: no switch {step.setting!r} in FixSettings")
    _FIXES.append(step)
    return step


def fix_names() -> list[str]:
    return [step.name for step in _FIXES]


def _steps(
    settings: FixSettings, points: QuantPoints, budget_s: float | None
) -> list[tuple[str, Fix]]:
    return [
        (step.name, step.make(points, budget_s))
        for step in _FIXES
        if getattr(settings, step.setting)
    ]


# Imports inside: the heavier fixes load only when asked for.
def _clip_search(points: QuantPoints, budget_s: float | None) -> Fix:
    from quantlens.fixes.clip_search import ClipSearchOptions, clip_search

    options = ClipSearchOptions(time_budget_s=budget_s)
    return lambda e, p, f, pr: clip_search(e, p, f, points, options, progress=pr)


def _weight_clip(points: QuantPoints, budget_s: float | None) -> Fix:
    from quantlens.fixes.clip_search import weight_clip_search

    return lambda e, p, f, pr: weight_clip_search(e, p)


def _adaround(points: QuantPoints, budget_s: float | None) -> Fix:
    from quantlens.fixes.adaround import AdaRoundOptions, adaround

    return lambda e, p, f, pr: adaround(
        e,
        p,
        [dict(x) for x in f],
        AdaRoundOptions(device=str(e.device), time_budget_s=budget_s),
        progress=pr,
    )


def _bias_correction(points: QuantPoints, budget_s: float | None) -> Fix:
    from quantlens.fixes.bias_correction import bias_correction

    return lambda e, p, f, pr: bias_correction(e, p, f, progress=pr)


def _finetune(points: QuantPoints, budget_s: float | None) -> Fix:
    from quantlens.fixes.finetune import FinetuneOptions, finetune

    return lambda e, p, f, pr: finetune(
        e,
        p,
        [dict(x) for x in f],
        FinetuneOptions(device=str(e.device), time_budget_s=budget_s),
        progress=pr,
    )


register_fix(FixStep("clip-search", "clip_search", _clip_search))
register_fix(FixStep("weight-clip", "clip_search", _weight_clip))
register_fix(FixStep("adaround", "adaround", _adaround))
register_fix(FixStep("bias-correction", "bias_correction", _bias_correction))
register_fix(FixStep("finetune", "finetune", _finetune))
