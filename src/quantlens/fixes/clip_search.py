"""Clipping search: per activation, the clip range that hurts its consumers least; per weight
channel, the clip with the least squared error.

Activations: candidates are the ranges the calibration observers choose (min-max, percentile,
MSE, entropy; all from one pass over the data) and a small grid of fractions of the min-max
range. Each is scored by the error it causes in the outputs of the nodes that read the tensor
(their weights quantized as planned, everything else float), summed over a few calibration
samples relative to those outputs' energy. Min-max is always a candidate, so the pick is never
worse than min-max on the scored data. With a time budget, scoring stops once it is spent; the
tensors not scored by then keep their ranges.

Weights: per output channel (or per tensor where the profile has per-tensor weights), the clip
fraction of the min-max range with the least squared weight error on the plan's grid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from quantlens.calib.collect import observe_shard, stats_from_observation
from quantlens.calib.observers import ObserverSettings, make_observer
from quantlens.emulate.executor import Executor, Step
from quantlens.emulate.fakequant import QuantHooks, fake_quantize
from quantlens.emulate.plan import QuantPoints, build_plan
from quantlens.fixes.result import FixResult
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan, TensorQuant, int_qparams

Tensor = torch.Tensor
Progress = Callable[[int, int], None]
Range = tuple[float, float]


@dataclass
class ClipSearchOptions:
    methods: tuple[str, ...] = ("minmax", "percentile", "mse", "entropy")
    ratios: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5)
    # Calibration samples for the observers, and samples the candidates are scored on.
    samples: int = 32
    score_samples: int = 8
    # Only grids this coarse or coarser are searched (16-bit grids rarely need clipping).
    max_bits: int = 8
    weight_ratios: tuple[float, ...] = field(
        default_factory=lambda: tuple(float(r) for r in np.linspace(0.5, 1.0, 51))
    )
    # Seconds for the whole activation search; None: no limit. Scoring stops once it is spent,
    # between tensors (under load a search spent 877 s here on the OCR recognizer's first sample).
    time_budget_s: float | None = None


def activation_candidates(
    executor: Executor,
    feeds: Sequence[Mapping[str, np.ndarray]],
    targets: Mapping[str, IntFormat],
    options: ClipSearchOptions,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> dict[str, dict[str, Range]]:
    """tensor -> {candidate label -> (low, high)}; min-max comes first. One pass over the data
    serves every method: its histograms have the most bins any method reads, and each method
    chooses its range from them (a pass per method was most of the search's time). Past
    `deadline` (a `time.perf_counter()` value) the methods not yet computed are left out:
    MSE alone took 27 s over picodet's 496 activations on an idle machine, and a search under
    load spent 1,180 s of its 120 s clip-search budget here before scoring anything."""
    data = list(feeds)[: options.samples]
    methods = _methods(options)
    observation = observe_shard(executor, data, targets, _finest(methods, targets))
    candidates: dict[str, dict[str, Range]] = {name: {} for name in targets}
    for index, method in enumerate(methods):
        if index > 0 and _passed(deadline):
            break  # min-max, the baseline every score is measured against, is always there
        stats = stats_from_observation(observation, targets, method, str(executor.device))
        for name, t in stats.tensors.items():
            candidates[name][method] = (t.clip_min, t.clip_max)
        if progress is not None:
            progress(index + 1, len(methods))
    for found in candidates.values():
        low, high = found.get("minmax", (0.0, 0.0))
        for ratio in options.ratios:
            found[f"minmax x{ratio:g}"] = (low * ratio, high * ratio)
    return candidates


def _methods(options: ClipSearchOptions) -> tuple[str, ...]:
    return ("minmax", *[m for m in options.methods if m != "minmax"])


def _finest(methods: Sequence[str], targets: Mapping[str, IntFormat]) -> str:
    """The method whose histograms have the most bins (entropy's |x| one on signed data)."""

    def bins(method: str) -> int:
        observer = make_observer(method, ObserverSettings())
        if not observer.needs_histogram:
            return 0
        return max((observer.histogram_range(-1.0, 1.0, f)[2] for f in targets.values()), default=0)

    return max(methods, key=bins)


def score_candidates(
    executor: Executor,
    plan: QuantPlan,
    feeds: Sequence[Mapping[str, np.ndarray]],
    candidates: Mapping[str, Mapping[str, Range]],
    progress: Progress | None = None,
    deadline: float | None = None,
) -> dict[str, dict[str, float]]:
    """tensor -> {candidate -> error of its readers' outputs relative to their energy}; with a
    `deadline` (a `time.perf_counter()` value) scoring stops when it passes, between samples or
    between tensors (one sample of the OCR recognizer took minutes), and the tensors not scored
    on any sample are left out (they keep their ranges)."""
    readers = {
        name: [s for s in executor.steps if name in s.inputs and s.outputs] for name in candidates
    }
    wanted = {n for steps in readers.values() for s in steps for n in _io(s)}
    keep = sorted(wanted - set(executor.weights) - set(executor.input_names))
    errors = {name: dict.fromkeys(found, 0.0) for name, found in candidates.items()}
    energy = dict.fromkeys(candidates, 0.0)
    weight_hooks = QuantHooks(plan, executor.device, only=set(plan.weights))
    with torch.inference_mode():
        for index, feed in enumerate(feeds):
            if _passed(deadline):
                break
            env = executor.run(feed, keep=keep)
            env.update({k: torch.as_tensor(v).to(executor.device) for k, v in feed.items()})
            for name, found in candidates.items():
                if _passed(deadline):
                    break
                for step in readers[name]:
                    err, signal = _score_step(executor, step, name, found, env, plan, weight_hooks)
                    energy[name] += signal
                    for label, value in err.items():
                        errors[name][label] += value
            if progress is not None:
                progress(index + 1, len(feeds))
    return {
        name: {label: err / max(energy[name], 1e-30) for label, err in found.items()}
        for name, found in errors.items()
        if energy[name] > 0 or not _passed(deadline)
    }


def _passed(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def _io(step: Step) -> list[str]:
    return [*(n for n in step.inputs if n is not None), *step.outputs]


def _score_step(
    executor: Executor,
    step: Step,
    name: str,
    found: Mapping[str, Range],
    env: Mapping[str, Tensor],
    plan: QuantPlan,
    hooks: QuantHooks,
) -> tuple[dict[str, float], float]:
    """Squared error of `step`'s outputs per candidate, and the outputs' energy."""
    inputs = [n for n in step.inputs if n is not None and n not in executor.weights]
    outputs = list(step.outputs)
    start = {n: env[n] for n in inputs}
    reference = [env[o].to(torch.float64) for o in outputs]
    fmt = plan.activations[name].format
    assert isinstance(fmt, IntFormat)
    errors = {}
    for label, (low, high) in found.items():
        start[name] = _quantize_range(env[name], low, high, fmt)
        got = executor.run(start=start, outputs=outputs, hooks=hooks)
        errors[label] = sum(
            float(((got[o].to(torch.float64) - r) ** 2).sum()) for o, r in zip(outputs, reference)
        )
    return errors, sum(float((r * r).sum()) for r in reference)


def _quantize_range(x: Tensor, low: float, high: float, fmt: IntFormat) -> Tensor:
    scale, zero = int_qparams(np.array([low]), np.array([high]), fmt)
    s = torch.tensor(scale, dtype=torch.float32, device=x.device)
    z = torch.tensor(zero, dtype=torch.float32, device=x.device)
    return fake_quantize(x.float(), s, z, fmt.qmin, fmt.qmax)


def clip_search(
    executor: Executor,
    plan: QuantPlan,
    feeds: Sequence[Mapping[str, np.ndarray]],
    points: QuantPoints,
    options: ClipSearchOptions | None = None,
    progress: Progress | None = None,
) -> FixResult:
    """Pick every searched activation's clip range; returns a new plan (weights unchanged)."""
    opts = options or ClipSearchOptions()
    start = time.perf_counter()
    targets = {
        name: fmt
        for name, fmt in points.calibration_targets().items()
        if fmt.bits <= opts.max_bits and name in plan.activations
    }
    result = FixResult(name="clip-search")
    if not targets:
        result.seconds = time.perf_counter() - start
        return result
    deadline = None if opts.time_budget_s is None else start + opts.time_budget_s
    candidates = activation_candidates(executor, feeds, targets, opts, deadline=deadline)
    scored = list(feeds)[: opts.score_samples]
    done: list[int] = []

    def tick(count: int, total: int) -> None:
        done.append(count)
        if progress is not None:
            progress(count, total)

    computed = len(next(iter(candidates.values()))) - len(opts.ratios)
    scores = score_candidates(executor, plan, scored, candidates, tick, deadline)
    if len(done) < len(scored) or len(scores) < len(candidates):
        result.changes.append(
            f"time budget {opts.time_budget_s:g} s: {computed} of {len(_methods(opts))} range "
            f"methods, {len(scores)} of {len(candidates)} tensors scored, {len(done)} of "
            f"{len(scored)} samples complete"
        )
    ranges = _current_ranges(plan)
    for name, found in scores.items():
        best = min(found, key=lambda label: found[label])
        baseline = found.get("minmax", found[best])
        ranges[name] = candidates[name][best]
        gain = 10 * np.log10(baseline / found[best]) if found[best] > 0 and baseline > 0 else 0.0
        result.changes.append(f"{name}: {best} ({gain:.2f} dB less reader error than minmax)")
    new_plan = build_plan(points, ranges, executor.weights, plan.target)
    # Keep the weight parameters of the given plan (a weight fix may have set them).
    new_plan.weights.update({k: v for k, v in plan.weights.items() if v.bias_of is None})
    result.plan = refresh_biases(new_plan)
    result.seconds = time.perf_counter() - start
    return result


def _current_ranges(plan: QuantPlan) -> dict[str, Range]:
    return {
        name: (q.range_min[0], q.range_max[0])
        for name, q in plan.activations.items()
        if q.is_int and q.range_min and q.range_max
    }


def refresh_biases(plan: QuantPlan) -> QuantPlan:
    """Int32 bias scales follow the input and weight scales they multiply (zero point 0)."""
    for name, bias in list(plan.weights.items()):
        if bias.bias_of is None:
            continue
        act, weight = plan.activations.get(bias.bias_of[0]), plan.weights.get(bias.bias_of[1])
        if act is None or weight is None or not act.scale or not weight.scale:
            continue
        scale = (np.float32(act.scale[0]) * np.asarray(weight.scale, np.float32)).astype(np.float32)
        plan.weights[name] = bias.model_copy(
            update={
                "scale": scale.tolist(),
                "zero_point": [0] * len(scale),
                "axis": 0 if len(scale) > 1 else None,
            }
        )
    return plan


# --- weights ----------------------------------------------------------------------------------


def weight_clip_search(
    executor: Executor,
    plan: QuantPlan,
    options: ClipSearchOptions | None = None,
) -> FixResult:
    """MSE-optimal clip per weight channel (per tensor on per-tensor grids); a new plan."""
    opts = options or ClipSearchOptions()
    start = time.perf_counter()
    result = FixResult(name="weight-clip")
    new_plan = plan.model_copy(deep=True)
    bias_limits = _bias_limits(plan, executor)
    for name, quant in plan.weights.items():
        if not quant.is_int or quant.bias_of is not None or name not in executor.weights:
            continue
        fitted, note = _clip_weight(executor.weights[name], quant, opts.weight_ratios)
        if fitted is None or not _bias_fits(fitted, bias_limits.get(name)):
            continue
        new_plan.weights[name] = fitted
        result.changes.append(f"{name}: {note}")
    result.plan = refresh_biases(new_plan)
    result.seconds = time.perf_counter() - start
    return result


def _clip_weight(
    weight: Tensor, quant: TensorQuant, ratios: Sequence[float]
) -> tuple[TensorQuant | None, str]:
    fmt = quant.format
    assert isinstance(fmt, IntFormat)
    data = weight.detach().to(torch.float64)
    axis = quant.axis
    if axis is not None:
        flat = data.movedim(axis, 0).reshape(data.shape[axis], -1)
    else:
        flat = data.reshape(1, -1)
    low, high = flat.min(dim=1).values.cpu().numpy(), flat.max(dim=1).values.cpu().numpy()
    errors, params = [], []
    for ratio in ratios:
        scale, zero = int_qparams(low * ratio, high * ratio, fmt)
        s = torch.tensor(scale, dtype=torch.float32).to(data.device)
        z = torch.tensor(zero, dtype=torch.float32).to(data.device)
        q = fake_quantize(flat.float(), s, z, fmt.qmin, fmt.qmax, axis=0)
        errors.append(((q.double() - flat) ** 2).sum(dim=1).cpu().numpy())
        params.append((scale, zero, low * ratio, high * ratio))
    table = np.stack(errors)  # ratios x channels
    best = table.argmin(axis=0)
    full = len(ratios) - 1 if ratios[-1] == 1.0 else None
    if full is not None and np.all(table[best, np.arange(table.shape[1])] >= table[full]):
        return None, ""
    pick = np.arange(table.shape[1])
    fitted = quant.model_copy(
        update={
            "scale": [float(params[b][0][c]) for c, b in zip(pick, best)],
            "zero_point": [int(params[b][1][c]) for c, b in zip(pick, best)],
            "range_min": [float(params[b][2][c]) for c, b in zip(pick, best)],
            "range_max": [float(params[b][3][c]) for c, b in zip(pick, best)],
        }
    )
    chosen = np.asarray(ratios)[best]
    return fitted, f"clipped to {chosen.min():.2f}-{chosen.max():.2f} of its range"


def _bias_limits(plan: QuantPlan, executor: Executor) -> dict[str, tuple[np.ndarray, float, int]]:
    """weight -> (|bias|, input scale, int32 qmax) for weights whose bias is quantized."""
    limits = {}
    for name, bias in plan.weights.items():
        if bias.bias_of is None or name not in executor.weights:
            continue
        act = plan.activations.get(bias.bias_of[0])
        fmt = bias.format
        if act is None or not act.scale or not isinstance(fmt, IntFormat):
            continue
        values = executor.weights[name].detach().abs().to(torch.float64).cpu().numpy().reshape(-1)
        limits[bias.bias_of[1]] = (values, float(act.scale[0]), fmt.qmax)
    return limits


def _bias_fits(weight: TensorQuant, limit: tuple[np.ndarray, float, int] | None) -> bool:
    """A smaller weight scale shrinks the int32 bias grid; refuse clips that would saturate it."""
    if limit is None:
        return True
    values, s_in, qmax = limit
    scales = np.asarray(weight.scale, np.float64)
    return bool(np.all(values <= s_in * scales * qmax))
