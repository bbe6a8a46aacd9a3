"""Free fixes before promotions: the search tries bias correction and clip search (or the fixes
`--optimize` asks for) on the all-int8 point before it buys any 16-bit layer.

A fix costs nothing on the chip (new biases, new clip ranges), so a fixed all-int8 that meets the
goal beats every promotion (issue #22: on hailo8 a detector's all-int8 F1 went from 0.000 to
0.864 with bias correction alone, where the search had bought 197 16-bit nodes). The fixes run
through the quantize stage's guard (each one undone when it lowers the output SNR); what they
changed carries over to every candidate: new float weights live in the executor, new clip
ranges and weight grids overlay each candidate's plan wherever a tensor keeps its int8 format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

from quantlens.artifacts.search import FixRecord
from quantlens.emulate.executor import Executor
from quantlens.emulate.plan import QuantPoints
from quantlens.fixes.clip_search import refresh_biases
from quantlens.fixes.levels import FixSettings, run_fixes
from quantlens.fixes.result import FixResult, apply_fix
from quantlens.ir.layers import discover_layers
from quantlens.ir.passes.optimize import GraphOptions
from quantlens.schemes.qparams import QuantPlan, TensorQuant
from quantlens.search.units import Unit

Say = Callable[[str], None]
Progress = Callable[[int, int], None]
Range = tuple[float, float]

# Fixes that run after the plan (the others are graph passes before calibration).
POST_PLAN = ("bias_correction", "clip_search", "adaround", "finetune")
# Tried by default: cheap, and free on the chip. Equalization is a graph pass that needs its own
# calibration, and AdaRound / fine-tune take minutes: those run when `--optimize` asks.
FREE = ("bias_correction", "clip_search")
# Seconds each fix may take in a search unless `fix_budget_s` says otherwise (clip search's
# scoring, AdaRound, fine-tune): the full evaluations are what the search's time is for.
SEARCH_FIX_BUDGET_S = 120.0


def trial_settings(
    settings: FixSettings, overrides: Mapping[str, bool | None], try_free: bool
) -> FixSettings:
    """The fixes the search tries on all-int8: those `--optimize` or a flag enables; when none
    is enabled, the free ones (unless `try_free` is off or a flag turns one off)."""
    if not try_free or any(getattr(settings, name) for name in POST_PLAN):
        return settings
    free = {name: True for name in FREE if overrides.get(name) is None}
    return replace(settings, **free)


def tries_fixes(settings: FixSettings) -> bool:
    return any(getattr(settings, name) for name in POST_PLAN)


def trial_variants(
    settings: FixSettings, overrides: Mapping[str, bool | None], try_free: bool
) -> list[FixSettings]:
    """The sets of fixes to try on all-int8, in order: what `--optimize` or a flag asks, as one
    set; by default the free fixes added one at a time, bias correction alone first (on hailo8
    it alone rescued a collapsed detector and the OCR recognizer, where clip search lowered the
    recognizer's metric while raising its output SNR: BENCHMARKS.md, "Fixes")."""
    full = trial_settings(settings, overrides, try_free)
    if full is settings or not tries_fixes(full):
        return [full] if tries_fixes(full) else []
    free = [name for name in FREE if overrides.get(name) is None]
    return [
        replace(settings, **dict.fromkeys(free[:count], True)) for count in range(1, len(free) + 1)
    ]


def search_graph(
    settings: FixSettings, overrides: Mapping[str, bool | None], try_free: bool, model: Path
) -> GraphOptions:
    """The graph passes the search's session runs: `--optimize`'s, plus a zero bias on every
    Conv and Gemm when the trial tries bias correction and the model has such a layer without
    a bias: bias correction has nowhere to put a correction otherwise (PP-OCR's convs carry
    none: without it the search's bias correction changed nothing where `quantize
    --bias-correction` rescued the model). A zero bias is exact on every grid, so the plain
    all-int8 point is unchanged; a model that needs none keeps quantize's calibration."""
    graph = settings.graph_options()
    variants = trial_variants(settings, overrides, try_free)
    if any(v.bias_correction for v in variants) and not graph.add_bias and _lacks_bias(model):
        graph = graph.model_copy(update={"add_bias": True})
    return graph


def _lacks_bias(model: Path) -> bool:
    """Whether a Conv or Gemm of the model file (what add_missing_bias fills) has no bias."""
    proto = onnx.load(str(model), load_external_data=False)
    layers = ("Conv", "Gemm")
    nodes = proto.graph.node
    return any(n.op_type in layers and (len(n.input) < 3 or not n.input[2]) for n in nodes)


@dataclass
class FixedParams:
    """What the fixes changed in the all-int8 plan, to overlay on every candidate's plan."""

    ranges: dict[str, Range] = field(default_factory=dict)  # 8-bit activation clip ranges
    weights: dict[str, TensorQuant] = field(default_factory=dict)  # weight grids (no biases)
    # Float initializers the fixes changed (bias correction's biases, AdaRound's weights):
    # name -> what it was and is, the (input, weight) names of the layer that reads it, and
    # that layer's formats in the fixed all-int8 plan. A fix is measured against int8 noise:
    # a layer a candidate promotes gets its value from before (picodet on ort-cpu: biases
    # corrected for int8 noise held all-16-bit at an output SNR of 8.6 dB, mAP 0.7397
    # against float 0.7620).
    values: dict[str, FixedValue] = field(default_factory=dict)

    @classmethod
    def between(cls, before: QuantPlan, after: QuantPlan) -> FixedParams:
        ranges = {
            name: (q.range_min[0], q.range_max[0])
            for name, q in after.activations.items()
            if q.is_int and q.range_min and q.range_max and q != before.activations.get(name)
        }
        weights = {
            name: q
            for name, q in after.weights.items()
            if q.bias_of is None and q != before.weights.get(name)
        }
        return cls(ranges, weights)

    def ranges_for(self, grids: Mapping[str, int]) -> dict[str, Range]:
        """The fixed clip ranges of the tensors a plan quantizes on the 8-bit grid."""
        return {n: self.ranges[n] for n, bits in grids.items() if bits == 8 and n in self.ranges}

    def overlay(self, plan: QuantPlan) -> QuantPlan:
        """`plan` with the fixed weight grids where a weight keeps its format and axis (a
        promoted weight keeps its own grid); bias grids follow the weights they multiply."""
        changed = False
        for name, quant in self.weights.items():
            current = plan.weights.get(name)
            if current is not None and (current.format, current.axis) == (quant.format, quant.axis):
                plan.weights[name] = quant
                changed = True
        return refresh_biases(plan) if changed else plan

    def track_values(
        self, model: ir.Model, int8: QuantPlan, before: Mapping[str, np.ndarray], executor: Executor
    ) -> None:
        """Record the float initializers of weighted layers that differ from `before` now."""
        for layer in discover_layers(model).layers:
            for name in (layer.weight, layer.bias):
                old = before.get(name) if name else None
                if name is None or old is None:
                    continue
                new = executor.weights[name].detach().cpu().numpy()
                if not np.array_equal(old, new):
                    reads = (layer.input, layer.weight)
                    self.values[name] = FixedValue(old, new.copy(), reads, _formats(int8, reads))

    def place_values(self, plan: QuantPlan, executor: Executor) -> bool:
        """Put each fixed value into the executor and model where `plan` keeps its layer's int8
        formats, the value from before the fixes elsewhere; returns whether anything changed."""
        wanted: dict[str, np.ndarray] = {}
        for name, fixed in self.values.items():
            keeps = _formats(plan, fixed.layer) == fixed.formats
            wanted[name] = fixed.after if keeps else fixed.before
        return place(executor, wanted)

    def unit_values(
        self, units: Sequence[Unit], executor: Executor
    ) -> dict[str, dict[str, torch.Tensor]]:
        """unit id -> the fixed float values of the layer the unit owns, as the executor holds
        its weights: what the unit's weights run on while it stays int8."""
        found: dict[str, dict[str, torch.Tensor]] = {}
        for unit in units:
            for name, fixed in self.values.items():
                if fixed.layer[1] in unit.weights:
                    old = executor.weights[name]
                    value = torch.as_tensor(fixed.after, dtype=old.dtype).to(old.device)
                    found.setdefault(unit.id, {})[name] = value
        return found

    @contextmanager
    def unfixed(self, executor: Executor) -> Iterator[None]:
        """The executor and model on the float values from before the fixes (the float model's)
        inside the block; the values it held are put back after it."""
        held = {n: executor.weights[n].detach().cpu().numpy().copy() for n in self.values}
        apply_fix(
            executor,
            FixResult("values before the fixes", {n: v.before for n, v in self.values.items()}),
        )
        try:
            yield
        finally:
            apply_fix(executor, FixResult("values the plan runs on", held))


def place(executor: Executor, values: Mapping[str, np.ndarray]) -> bool:
    """Put `values` into the executor and model where they differ from what it holds; returns
    whether anything changed."""
    wanted = {
        name: value
        for name, value in values.items()
        if not np.array_equal(executor.weights[name].detach().cpu().numpy(), value)
    }
    if wanted:
        apply_fix(executor, FixResult("fixes where the layer stays int8", wanted))
    return bool(wanted)


# A layer's (input activation, weight) formats, as the plan quantizes them (None: float).
LayerFormats = tuple[object, object]


@dataclass
class FixedValue:
    before: np.ndarray
    after: np.ndarray
    layer: tuple[str, str]  # the (input, weight) names of the layer that reads it
    formats: LayerFormats  # that layer's formats in the fixed all-int8 plan


def _formats(plan: QuantPlan, layer: tuple[str, str]) -> LayerFormats:
    act, weight = plan.activations.get(layer[0]), plan.weights.get(layer[1])
    return (act.format if act else None, weight.format if weight else None)


@dataclass
class FixTrialResult:
    """The fixed all-int8 plan, the fixes' results, and the weights before them (to undo)."""

    plan: QuantPlan
    results: list[FixResult]
    params: FixedParams
    saved: dict[str, np.ndarray]

    def kept(self) -> list[FixResult]:
        return [r for r in self.results if r.kept and (r.weights or r.plan is not None)]

    def weights_after(self, executor: Executor) -> dict[str, np.ndarray]:
        """The float weights the kept fixes changed, as they are now (to apply them again)."""
        changed = {name for result in self.kept() for name in result.weights}
        return {name: executor.weights[name].detach().cpu().numpy().copy() for name in changed}

    def undo(self, executor: Executor) -> None:
        """Put back the float weights the kept fixes changed (bias correction's biases)."""
        changed = {name for result in self.kept() for name in result.weights}
        if changed:
            apply_fix(executor, FixResult("undo fixes", {n: self.saved[n] for n in changed}))

    def records(self) -> list[FixRecord]:
        return [
            FixRecord(
                name=r.name,
                kept=r.kept,
                changes=len(r.changes),
                output_snr_db=(_rounded(r.snr_before_db), _rounded(r.snr_after_db)),
                seconds=round(r.seconds, 2),
            )
            for r in self.results
        ]


def fix_int8(
    executor: Executor,
    int8: QuantPlan,
    points: QuantPoints,
    feeds: Sequence[Mapping[str, np.ndarray]],
    settings: FixSettings,
    say: Say | None = None,
    progress: Progress | None = None,
    budget_s: float | None = None,
    by_metric: bool = False,
) -> FixTrialResult:
    """Run `settings`' fixes on the all-int8 plan (changing the executor's weights); each
    fix's time is capped at `budget_s`, `SEARCH_FIX_BUDGET_S` when None. With `by_metric` the
    caller scores the fixed point on the task metric, so no fix is undone for lowering the
    output SNR (on hailo8 bias correction took the OCR recognizer's output SNR from 4.24 to
    3.56 dB, and the SNR guard undid it, where it raises character accuracy: BENCHMARKS.md)."""
    budget_s = SEARCH_FIX_BUDGET_S if budget_s is None else budget_s
    saved = {name: t.detach().cpu().numpy().copy() for name, t in executor.weights.items()}
    plan = int8.model_copy(deep=True)
    fixed, results = run_fixes(
        executor, plan, points, feeds, settings, say, progress, budget_s, undo_worse=not by_metric
    )
    params = FixedParams.between(int8, fixed)
    params.track_values(executor.model, fixed, saved, executor)
    return FixTrialResult(fixed, results, params, saved)


def _rounded(value: float | None) -> float | None:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 3)
