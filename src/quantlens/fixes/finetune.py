"""A short end-to-end fine-tune of quantization scales against the float model (distillation).

Like LSQ and Hailo's QFT, but only the quantization parameters move, never the weights: each
8-bit activation scale (and, optionally, each 8-bit weight scale, per channel where the plan is)
is learned as s = s₀·exp(δ), δ initialised at 0, so the starting point is the plan bit for bit.
Rounding passes gradients straight through; clamping is the plan's own, so clipped values give
the scale its gradient as in LSQ. The loss is the mean over model outputs of the relative error
‖y_q − y_f‖² / ‖y_f‖² over the calibration set, minimised with Adam.

Zero points are kept fixed: the grid is scaled about zero, so zero stays exactly representable
and a tensor's code range [qmin − zp, qmax − zp] is unchanged; range_min/range_max are updated to
the grid's new ends. Tensors that share parameters with their input (data movement on an NPU)
share one learned scale. 16-bit and float tensors keep the plan's parameters; so do weights
already on the plan's grid (rounded by AdaRound), whose rounding would otherwise be redone, and
graph inputs unless asked (see `learn_input_scales`).
Bias scales (input scale x weight scale) are recomputed, raising a weight scale if the int32 bias
would saturate. The plan is evaluated on the calibration set at a few checkpoints during training
and the best one is returned, only if it beats the starting plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks, TensorQuantizer
from quantlens.fixes.adaround import on_device
from quantlens.fixes.result import FixResult
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan, TensorQuant

Tensor = torch.Tensor
Progress = Callable[[int, int], None]
Feeds = Sequence[dict[str, np.ndarray]]


@dataclass
class FinetuneOptions:
    steps: int = 200
    # Calibration samples whose gradients are summed per Adam step.
    batch_size: int = 8
    lr: float = 1e-3
    time_budget_s: float | None = None
    device: str = "cpu"
    seed: int = 0
    learn_weight_scales: bool = True
    # Graph inputs are usually images with 256 levels that a min/max grid often holds exactly;
    # the straight-through gradient cannot see that, so their scales stay put by default.
    learn_input_scales: bool = False
    # Plans evaluated on the calibration set during training; the best one is kept.
    checkpoints: int = 4
    # Wider grids keep the plan's parameters: their noise is already small.
    max_bits: int = 8


class LearnedScale:
    """One learnable scale s₀·exp(δ) (per tensor or per channel) with the plan's fixed grid."""

    def __init__(self, spec: TensorQuant, fmt: IntFormat, device: torch.device) -> None:
        self.spec = spec
        self.qmin, self.qmax = float(fmt.qmin), float(fmt.qmax)
        self.base = torch.tensor(spec.scale, dtype=torch.float32, device=device)
        self.zero = torch.tensor(spec.zero_point, dtype=torch.float32, device=device)
        self.log_ratio = torch.zeros_like(self.base, requires_grad=True)

    def value(self) -> Tensor:
        return self.base * torch.exp(self.log_ratio)

    def quantize(self, x: Tensor) -> Tensor:
        scale, zero = _along(self.value(), x, self.spec.axis), _along(self.zero, x, self.spec.axis)
        scaled = x / scale
        rounded = scaled + (torch.round(scaled) - scaled).detach()
        return (torch.clamp(rounded + zero, self.qmin, self.qmax) - zero) * scale

    def learned(self) -> np.ndarray:
        """The float32 scales a plan stores."""
        return self.value().detach().cpu().numpy().astype(np.float32)


def _along(param: Tensor, x: Tensor, axis: int | None) -> Tensor:
    if axis is None or param.numel() <= 1:
        return param
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


class _LearnHooks:
    """The plan's quantizers, with learnable scales where there are some."""

    def __init__(
        self,
        base: QuantHooks,
        acts: Mapping[str, LearnedScale],
        weights: Mapping[str, LearnedScale],
    ) -> None:
        self.base, self.acts, self.weights = base, acts, weights

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        learned = self.acts.get(name)
        if learned is None or not tensor.is_floating_point():
            return self.base.activation(name, tensor)
        return learned.quantize(tensor.float()).to(tensor.dtype)

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        learned = self.weights.get(name)
        if learned is None or not tensor.is_floating_point():
            return self.base.weight(name, tensor)
        return learned.quantize(tensor.float()).to(tensor.dtype)


# --- what is learned -----------------------------------------------------------------------------


@dataclass
class Learnables:
    acts: dict[str, LearnedScale] = field(default_factory=dict)
    weights: dict[str, LearnedScale] = field(default_factory=dict)

    def parameters(self) -> list[Tensor]:
        unique = {id(s): s for s in (*self.acts.values(), *self.weights.values())}
        return [s.log_ratio for s in unique.values()]


def _learnable_format(spec: TensorQuant, max_bits: int) -> IntFormat | None:
    fmt = spec.format
    if not isinstance(fmt, IntFormat) or fmt.bits > max_bits or spec.bias_of is not None:
        return None
    return fmt


def shared_sources(executor: Executor, plan: QuantPlan) -> dict[str, str]:
    """Activation -> the earliest tensor it shares parameters with (data movement outputs)."""
    roots: dict[str, str] = {}
    for name in executor.activation_names():
        spec, step = plan.activations.get(name), executor.producer.get(name)
        source = step.inputs[0] if step is not None and step.inputs else None
        if spec is None or source is None or source not in plan.activations:
            continue
        if _same_grid(plan.activations[source], spec):
            roots[name] = roots.get(source, source)
    return roots


def _same_grid(a: TensorQuant, b: TensorQuant) -> bool:
    return (a.format, a.scale, a.zero_point, a.axis) == (b.format, b.scale, b.zero_point, b.axis)


def learnable_scales(runner: Executor, plan: QuantPlan, opts: FinetuneOptions) -> Learnables:
    found, device = Learnables(), runner.device
    roots = shared_sources(runner, plan)
    fixed = set() if opts.learn_input_scales else set(runner.input_names)
    for name in sorted(plan.activations, key=lambda n: n in roots):  # roots first
        fmt = _learnable_format(plan.activations[name], opts.max_bits)
        if name in fixed or roots.get(name) in fixed:
            continue
        if fmt is not None and name in roots:
            found.acts[name] = found.acts[roots[name]]
        elif fmt is not None:
            found.acts[name] = LearnedScale(plan.activations[name], fmt, device)
    if not opts.learn_weight_scales:
        return found
    for name, spec in plan.weights.items():
        fmt = _learnable_format(spec, opts.max_bits)
        weight = runner.weights.get(name)
        if fmt is not None and weight is not None and not _on_grid(spec, weight):
            found.weights[name] = LearnedScale(spec, fmt, device)
    return found


def _on_grid(spec: TensorQuant, weight: Tensor) -> bool:
    quantizer = TensorQuantizer(spec, weight.device)
    return bool(torch.equal(quantizer(weight.detach()), weight))


# --- loss and training -------------------------------------------------------------------------


def relative_error(reference: Mapping[str, Tensor], outputs: Mapping[str, Tensor]) -> Tensor:
    """Mean over outputs of ‖y_q − y_f‖² / ‖y_f‖² (1 / linear SNR)."""
    terms = [
        (outputs[name].float() - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-20)
        for name, ref in reference.items()
        if ref.is_floating_point()
    ]
    return torch.stack(terms).mean()


def _references(runner: Executor, feeds: Feeds) -> list[dict[str, Tensor]]:
    with torch.no_grad():
        return [{k: v.float() for k, v in runner.run(feed).items()} for feed in feeds]


def _evaluate(
    runner: Executor, plan: QuantPlan, feeds: Feeds, references: Sequence[Mapping[str, Tensor]]
) -> float:
    hooks = QuantHooks(plan, runner.device)
    with torch.no_grad():
        errors = [
            float(relative_error(ref, runner.run(f, hooks=hooks)))
            for f, ref in zip(feeds, references)
        ]
    return float(np.mean(errors))


@dataclass
class _Trainer:
    runner: Executor
    hooks: _LearnHooks
    feeds: Feeds
    references: Sequence[Mapping[str, Tensor]]
    opts: FinetuneOptions
    optimizer: torch.optim.Optimizer
    order: list[int] = field(default_factory=list)

    def next_batch(self, rng: np.random.Generator) -> list[int]:
        size = min(self.opts.batch_size, len(self.feeds))
        while len(self.order) < size:
            self.order.extend(rng.permutation(len(self.feeds)).tolist())
        batch, self.order = self.order[:size], self.order[size:]
        return batch

    def step(self, batch: Sequence[int], deadline: float | None) -> bool:
        """One Adam step over `batch`; False (and no step) if the deadline comes first."""
        self.optimizer.zero_grad()
        for index in batch:
            if deadline is not None and time.perf_counter() >= deadline:
                return False
            outputs = self.runner.run(self.feeds[index], hooks=self.hooks, grad=True)
            loss = relative_error(self.references[index], outputs) / len(batch)
            loss.backward()
        self.optimizer.step()
        return True


def _train(
    trainer: _Trainer,
    deadline: float | None,
    progress: Progress | None,
    checkpoint: Callable[[int], None],
) -> int:
    """Adam steps until done or out of time; `checkpoint(steps)` runs every `every` steps and
    after the last one. Returns the steps taken."""
    opts = trainer.opts
    every = max(1, math.ceil(opts.steps / max(opts.checkpoints, 1)))
    rng, done, started = np.random.default_rng(opts.seed), 0, time.perf_counter()
    for step in range(opts.steps):
        per_step = (time.perf_counter() - started) / max(done, 1)
        if deadline is not None and time.perf_counter() + (per_step if done else 0.0) > deadline:
            break
        if not trainer.step(trainer.next_batch(rng), deadline):
            break
        done += 1
        if done % every == 0:
            checkpoint(done)
        if progress is not None:
            progress(step + 1, opts.steps)
    if done % every:
        checkpoint(done)
    return done


# --- the new plan --------------------------------------------------------------------------------


def _with_scale(spec: TensorQuant, scale: np.ndarray) -> TensorQuant:
    fmt = spec.format
    assert isinstance(fmt, IntFormat)
    zero = np.asarray(spec.zero_point, np.float64)
    wide = scale.astype(np.float64)
    return spec.model_copy(
        update={
            "scale": scale.astype(np.float32).tolist(),
            "range_min": ((fmt.qmin - zero) * wide).tolist(),
            "range_max": ((fmt.qmax - zero) * wide).tolist(),
        }
    )


def _bias_grid(
    bias: TensorQuant, plan: QuantPlan, values: Tensor | None
) -> tuple[TensorQuant, TensorQuant | None]:
    """The bias on (input scale x weight scale); the weight, scales raised, if int32 saturates."""
    assert bias.bias_of is not None and isinstance(bias.format, IntFormat)
    act, weight = plan.activations[bias.bias_of[0]], plan.weights[bias.bias_of[1]]
    s_in = np.float32(act.scale[0])
    s_w = np.asarray(weight.scale, np.float32)
    raised = None
    if values is not None:
        needed = np.abs(values.detach().double().cpu().numpy().reshape(-1)) / (
            s_in * bias.format.qmax
        )
        needed = needed if len(s_w) > 1 else np.array([needed.max(initial=0.0)])
        if np.any(needed > s_w):
            s_w = np.maximum(s_w, np.nextafter(needed.astype(np.float32), np.float32(np.inf)))
            raised = _with_scale(weight, s_w)
    scale = (s_in * s_w).astype(np.float32)
    return bias.model_copy(update={"scale": scale.tolist()}), raised


def learned_plan(plan: QuantPlan, found: Learnables, weights: Mapping[str, Tensor]) -> QuantPlan:
    new = plan.model_copy(deep=True)
    for name, learned in found.acts.items():
        new.activations[name] = _with_scale(new.activations[name], learned.learned())
    for name, learned in found.weights.items():
        new.weights[name] = _with_scale(new.weights[name], learned.learned())
    for name, spec in list(new.weights.items()):
        if spec.bias_of is None or spec.bias_of[0] not in new.activations:
            continue
        new.weights[name], raised = _bias_grid(spec, new, weights.get(name))
        if raised is not None:
            new.weights[spec.bias_of[1]] = raised
            new.notes.append(f"{spec.bias_of[1]}: weight scale raised so that bias {name} fits")
    return new


def _scale_changes(old: QuantPlan, new: QuantPlan) -> list[str]:
    """One line per tensor whose scale moved, largest relative move first."""
    moves: list[tuple[float, str]] = []
    for table_old, table_new in ((old.activations, new.activations), (old.weights, new.weights)):
        for name, spec in table_new.items():
            before, after = np.asarray(table_old[name].scale), np.asarray(spec.scale)
            if spec.bias_of is not None or before.size == 0 or np.array_equal(before, after):
                continue
            logs = np.log(np.maximum(after, 1e-30) / np.maximum(before, 1e-30))
            worst = float(logs.flat[np.argmax(np.abs(logs))])
            if before.size == 1:
                line = f"{name}: scale {before[0]:.4g} -> {after[0]:.4g} (x{math.exp(worst):.3f})"
            else:
                line = f"{name}: {before.size} channel scales, largest move x{math.exp(worst):.3f}"
            moves.append((abs(worst), line))
    moves.sort(key=lambda move: -move[0])
    return [line for _, line in moves]


# --- the fix -------------------------------------------------------------------------------------


def _snr(error: float) -> float:
    return math.inf if error <= 0 else -10.0 * math.log10(error)


@dataclass
class _Best:
    """The best plan seen so far and its calibration error."""

    error: float
    plan: QuantPlan | None = None
    step: int = 0


def finetune(
    executor: Executor,
    plan: QuantPlan,
    feeds: Feeds,
    options: FinetuneOptions | None = None,
    progress: Progress | None = None,
) -> FixResult:
    """Learned scales for the plan's 8-bit tensors; the executor and the weights are not changed."""
    opts = options or FinetuneOptions()
    started = time.perf_counter()
    deadline = None if opts.time_budget_s is None else started + opts.time_budget_s
    runner = on_device(executor, opts.device)
    result = FixResult(name="finetune")
    with torch.inference_mode(False):
        found = learnable_scales(runner, plan, opts)
        if not found.parameters() or not feeds:
            result.changes.append("nothing to learn: no 8-bit scales or no calibration data")
            return _finish(result, started)
        references = _references(runner, feeds)
        clock = time.perf_counter()
        best = before = _Best(_evaluate(runner, plan, feeds, references))
        # Keep time for the last checkpoint, which costs what this first evaluation did.
        train_deadline = None if deadline is None else deadline - (time.perf_counter() - clock)

        def checkpoint(step: int) -> None:
            nonlocal best
            candidate = learned_plan(plan, found, runner.weights)
            error = _evaluate(runner, candidate, feeds, references)
            if error < best.error:
                best = _Best(error, candidate, step)

        hooks = _LearnHooks(QuantHooks(plan, runner.device), found.acts, found.weights)
        optimizer = torch.optim.Adam(found.parameters(), lr=opts.lr)
        trainer = _Trainer(runner, hooks, feeds, references, opts, optimizer)
        with torch.enable_grad():
            steps = _train(trainer, train_deadline, progress, checkpoint)
    return _finish(_report(result, plan, before, best, steps, len(feeds), opts), started)


def _report(
    result: FixResult,
    plan: QuantPlan,
    before: _Best,
    best: _Best,
    steps: int,
    samples: int,
    opts: FinetuneOptions,
) -> FixResult:
    if steps == 0:
        result.changes.append(f"time budget of {opts.time_budget_s:g} s spent before a step")
        return result
    if best.plan is None:
        result.changes.append(
            f"plan kept: no learned scales beat it (output SNR {_snr(before.error):.2f} dB on "
            f"{samples} calibration samples, {steps}/{opts.steps} steps)"
        )
        return result
    result.plan = best.plan
    result.changes.append(
        f"output SNR {_snr(before.error):.2f} -> {_snr(best.error):.2f} dB on {samples} "
        f"calibration samples (best of {steps}/{opts.steps} steps: step {best.step})"
    )
    result.changes += _scale_changes(plan, best.plan)
    return result


def _finish(result: FixResult, started: float) -> FixResult:
    result.seconds = time.perf_counter() - started
    return result
