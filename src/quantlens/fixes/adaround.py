"""AdaRound (Nagel et al. 2020): learned rounding of weights, layer by layer, on calibration data.

Nearest rounding minimises each weight's own error, not the layer's output error. AdaRound learns,
per weight element, whether to round down or up: w̃ = s·(clamp(⌊w/s⌋ + h(V) + zp, qmin, qmax) − zp)
with h a rectified sigmoid initialised at frac(w/s) (so training starts at nearest rounding),
minimising ‖W x − W̃ x̂‖² + λ·Σ(1 − |2h(V) − 1|^β) with β annealed from 20 to 2 after a warm-up.
x is the layer's input in the float model, x̂ in the quantized model with every earlier layer
already rounded ("asymmetric" reconstruction, so later layers compensate earlier ones' error;
`float_target=False` reconstructs W x̂ instead, the rounding error alone).

Every weighted layer becomes a matrix product on sampled rows: a Conv's input patches (im2col at
a random subset of output positions, so memory stays bounded whatever the resolution), a Gemm or
MatMul's input rows. Scale, zero point, axis and clamping are the plan's own, so the returned
weights lie exactly on the plan's grid: fake-quantizing them again with the plan is the identity.
A layer keeps nearest rounding when the learned one is not better on the sampled rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from quantlens.emulate.executor import Executor, Step
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.kernels.nn import _ints_attr, _pad_arg, _window_pads
from quantlens.fixes.result import FixResult
from quantlens.ir.layers import Layer, discover_layers
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan, TensorQuant

Tensor = torch.Tensor
Progress = Callable[[int, int], None]
Feeds = Sequence[dict[str, np.ndarray]]
# Stretch of the rectified sigmoid (the paper's ζ and γ): h reaches exactly 0 and 1.
ZETA, GAMMA = 1.1, -0.1


@dataclass
class AdaRoundOptions:
    iterations: int = 500
    # Rows drawn per iteration: `batch_size` samples' worth of `rows_per_sample` rows.
    batch_size: int = 8
    lr: float = 1e-2
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    time_budget_s: float | None = None
    device: str = "cpu"
    seed: int = 0
    # Output positions (Conv) or rows (Gemm/MatMul) sampled from each calibration sample.
    rows_per_sample: int = 512
    # Cap on the sampled rows held per layer (input rows plus float targets).
    memory_mb: float = 256.0
    # Wider weight grids are left alone: their rounding error is already negligible.
    max_bits: int = 8
    # Target W·x with x from the float model (also corrects earlier layers' noise), or W·x̂
    # with the quantized model's own input (rounding error only; less prone to overfit).
    float_target: bool = True


@dataclass
class _Target:
    """One layer to round: its node, weight quantizer and how it reads as a matrix product."""

    layer: Layer
    step: Step
    spec: TensorQuant
    fmt: IntFormat
    groups: int = 1
    weight_index: int = 1


class _OverrideHooks:
    """The plan's quantizers, with already-rounded weights in place of the originals."""

    def __init__(self, plan: QuantPlan, device: torch.device, overrides: dict[str, Tensor]):
        self.base = QuantHooks(plan, device)
        self.overrides = overrides

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        found = self.overrides.get(name)
        return found if found is not None else self.base.weight(name, tensor)

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        return self.base.activation(name, tensor)


# --- which layers ----------------------------------------------------------------------------


def find_targets(
    executor: Executor, plan: QuantPlan, max_bits: int = 8
) -> tuple[list[_Target], list[str]]:
    """Layers AdaRound can round, in graph order, and a reason for each one it cannot."""
    steps = {step.ctx.name: step for step in executor.steps}
    layers = discover_layers(executor.model).layers
    uses: dict[str, int] = {}
    for step in executor.steps:
        for name in step.inputs:
            if name is not None:
                uses[name] = uses.get(name, 0) + 1
    targets, skipped = [], []
    for layer in layers:
        target, reason = _as_target(layer, steps.get(layer.id), plan, uses, max_bits)
        if target is not None:
            targets.append(target)
        elif reason:
            skipped.append(f"{layer.id}: {reason}")
    return targets, skipped


def _as_target(
    layer: Layer, step: Step | None, plan: QuantPlan, uses: dict[str, int], max_bits: int
) -> tuple[_Target | None, str]:
    spec = plan.weights.get(layer.weight)
    if spec is None or step is None:
        return None, ""  # not quantized: nothing to round
    if not isinstance(spec.format, IntFormat):
        return None, f"weight is {spec.format.describe()}"
    if spec.format.bits > max_bits:
        return None, f"{spec.format.bits}-bit weight (rounding error already negligible)"
    if uses.get(layer.weight, 0) > 1:
        return None, "weight shared by several nodes"
    rank = len(layer.weight_shape)
    if layer.op_type == "Conv" and rank in (3, 4):
        groups = int(step.ctx.attr("group", 1))
        return _Target(layer, step, spec, spec.format, groups=groups), ""
    if layer.op_type in ("Gemm", "MatMul") and rank == 2:
        index = 1 if step.inputs[1] == layer.weight else 0
        return _Target(layer, step, spec, spec.format, weight_index=index), ""
    return None, f"{layer.op_type} with a {rank}-D weight is not supported by AdaRound"


# --- the layer as a matrix product on sampled rows --------------------------------------------


def weight_matrix(target: _Target, w: Tensor) -> Tensor:
    """The weight as [out, in] (per group for a grouped Conv: [groups, out/groups, in])."""
    if target.layer.op_type == "Conv":
        return w.reshape(target.groups, w.shape[0] // target.groups, -1)
    if target.layer.op_type == "Gemm":
        return w if target.step.ctx.attr("transB", 0) else w.t()
    return w.t() if target.weight_index == 1 else w


def apply_rows(target: _Target, rows: Tensor, matrix: Tensor) -> Tensor:
    """rows [P, in] times the weight matrix: [P, out]."""
    if target.layer.op_type != "Conv":
        return rows @ matrix.t()
    grouped = rows.reshape(rows.shape[0], target.groups, -1)
    return torch.einsum("pgk,gok->pgo", grouped, matrix).reshape(rows.shape[0], -1)


def _row_count(target: _Target, x: Tensor) -> int:
    if target.layer.op_type != "Conv":
        return _dense_rows(target, x).shape[0]
    return _conv_positions(target, x)[0]


def _dense_rows(target: _Target, x: Tensor) -> Tensor:
    if target.layer.op_type == "Gemm" and target.step.ctx.attr("transA", 0):
        x = x.t()
    elif target.layer.op_type == "MatMul" and target.weight_index == 0:
        x = x.movedim(-1, -2)
    return x.reshape(-1, x.shape[-1])


def _conv_geometry(target: _Target, x: Tensor) -> tuple[Tensor, list[int], list[int], list[int]]:
    """x padded as the kernel pads it (as 2-D), kernel extents, strides and dilations."""
    ctx, shape = target.step.ctx, target.layer.weight_shape
    nd = x.dim() - 2
    strides = _ints_attr(ctx, "strides", nd, 1)
    dilations = _ints_attr(ctx, "dilations", nd, 1)
    kernel = shape[2:]
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    begins, ends = _window_pads(ctx, list(x.shape[2:]), extents, strides)
    padded = F.pad(x, _pad_arg(begins, ends))
    if nd == 1:  # a 1-D conv is a 2-D one with height 1
        return padded.unsqueeze(2), [1, *kernel], [1, *strides], [1, *dilations]
    return padded, kernel, strides, dilations


def _conv_positions(target: _Target, x: Tensor) -> tuple[int, int, int]:
    """(count, output height, output width) of a Conv's output positions over the batch."""
    padded, kernel, strides, dilations = _conv_geometry(target, x)
    sizes = [
        (size - (k - 1) * d - 1) // s + 1
        for size, k, s, d in zip(padded.shape[2:], kernel, strides, dilations, strict=True)
    ]
    return padded.shape[0] * sizes[0] * sizes[1], sizes[0], sizes[1]


def conv_patches(target: _Target, x: Tensor, index: Tensor) -> Tensor:
    """Input patches [P, C·kh·kw] (im2col order) at flat output positions `index`."""
    padded, kernel, strides, dilations = _conv_geometry(target, x)
    _, height, width = _conv_positions(target, x)
    sample, rest = index // (height * width), index % (height * width)
    out_y, out_x = rest // width, rest % width
    columns = [
        padded[
            sample, :, out_y * strides[0] + i * dilations[0], out_x * strides[1] + j * dilations[1]
        ]
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]
    return torch.stack(columns, dim=2).reshape(index.shape[0], -1)


def sample_rows(target: _Target, x: Tensor, index: Tensor) -> Tensor:
    if target.layer.op_type == "Conv":
        return conv_patches(target, x, index)
    return _dense_rows(target, x)[index]


# --- rows from the calibration set -----------------------------------------------------------


@dataclass
class _Rows:
    """Sampled layer inputs from the quantized model and the float layer's outputs there."""

    inputs: Tensor
    targets: Tensor
    per_sample: int


def _collect(
    runner: Executor,
    hooks: _OverrideHooks,
    feeds: Feeds,
    target: _Target,
    opts: AdaRoundOptions,
    generator: torch.Generator,
    deadline: float | None = None,
) -> _Rows:
    """Rows from each sample in turn; past the deadline, what was gathered (one sample at least)."""
    name, device = target.layer.input, torch.device(opts.device)
    matrix = weight_matrix(target, runner.weights[target.layer.weight].float())
    width_in = matrix.shape[-1] * (target.groups if target.layer.op_type == "Conv" else 1)
    width_out = matrix.shape[-2] * (target.groups if target.layer.op_type == "Conv" else 1)
    cap = int(opts.memory_mb * 2**20) // (4 * (width_in + width_out))
    per_sample = max(1, min(opts.rows_per_sample, cap // max(len(feeds), 1)))
    inputs: list[Tensor] = []
    targets: list[Tensor] = []
    with torch.no_grad():
        for feed in feeds:
            if inputs and deadline is not None and time.perf_counter() >= deadline:
                break
            x_float = runner.run(feed, outputs=[name])[name].float()
            x_quant = runner.run(feed, outputs=[name], hooks=hooks)[name].float()
            total = _row_count(target, x_float)
            index = torch.randperm(total, generator=generator)[:per_sample].to(x_float.device)
            source = x_float if opts.float_target else x_quant
            rows = apply_rows(target, sample_rows(target, source, index), matrix)
            targets.append(rows.to(device))
            inputs.append(sample_rows(target, x_quant, index).to(device))
    return _Rows(torch.cat(inputs), torch.cat(targets), per_sample)


# --- learning the rounding -------------------------------------------------------------------


@dataclass
class _Grid:
    """The plan's grid for one weight, shaped to broadcast against it."""

    scale: Tensor
    zero: Tensor
    qmin: float
    qmax: float

    @classmethod
    def of(cls, spec: TensorQuant, fmt: IntFormat, weight: Tensor) -> _Grid:
        shape = [1] * weight.dim()
        if spec.axis is not None and len(spec.scale) > 1:
            shape[spec.axis] = -1
        kwargs = {"dtype": torch.float32, "device": weight.device}
        scale = torch.tensor(spec.scale, **kwargs).reshape(shape)  # type: ignore[arg-type]
        zero = torch.tensor(spec.zero_point, **kwargs).reshape(shape)  # type: ignore[arg-type]
        return cls(scale, zero, float(fmt.qmin), float(fmt.qmax))

    def dequantize(self, levels: Tensor) -> Tensor:
        """(clamp(levels + zp, qmin, qmax) − zp)·s; exact on the grid for integer levels."""
        return (torch.clamp(levels + self.zero, self.qmin, self.qmax) - self.zero) * self.scale

    def nearest(self, weight: Tensor) -> Tensor:
        return self.dequantize(torch.round(weight / self.scale))


def rectified_sigmoid(v: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(frac: Tensor) -> Tensor:
    """V with rectified_sigmoid(V) = frac, for frac in [0, 1)."""
    return -torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)


def _beta(iteration: int, warm: int, total: int, beta: tuple[float, float]) -> float:
    """Linear decay from beta[0] at the end of the warm-up to beta[1] at the last iteration."""
    progress = (iteration - warm) / max(total - warm, 1)
    return beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - progress)


def _layer_mse(target: _Target, rows: _Rows, weight: Tensor) -> float:
    out = apply_rows(target, rows.inputs, weight_matrix(target, weight))
    return float((out - rows.targets).pow(2).sum(1).mean())


def _learn(
    target: _Target,
    rows: _Rows,
    weight: Tensor,
    opts: AdaRoundOptions,
    deadline: float | None,
    generator: torch.Generator,
) -> tuple[Tensor, int]:
    """Hard-rounded weight after up to `opts.iterations` Adam steps, and the steps taken."""
    grid = _Grid.of(target.spec, target.fmt, weight)
    floor = torch.floor(weight / grid.scale)
    v = _initial_v(weight / grid.scale - floor).requires_grad_(True)
    optimizer = torch.optim.Adam([v], lr=opts.lr)
    count, batch = (
        rows.inputs.shape[0],
        min(rows.inputs.shape[0], opts.batch_size * rows.per_sample),
    )
    warm, done = int(opts.warmup * opts.iterations), 0
    for iteration in range(opts.iterations):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        index = torch.randint(0, count, (batch,), generator=generator).to(v.device)
        h = rectified_sigmoid(v)
        out = apply_rows(
            target, rows.inputs[index], weight_matrix(target, grid.dequantize(floor + h))
        )
        loss = (out - rows.targets[index]).pow(2).sum(1).mean()
        if iteration >= warm:
            beta = _beta(iteration, warm, opts.iterations, opts.beta)
            loss = loss + opts.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        done += 1
    with torch.no_grad():
        hard = grid.dequantize(floor + (rectified_sigmoid(v) >= 0.5).float())
    return hard, done


def _round_layer(
    runner: Executor,
    hooks: _OverrideHooks,
    feeds: Feeds,
    target: _Target,
    opts: AdaRoundOptions,
    deadline: float | None,
    generator: torch.Generator,
) -> tuple[Tensor | None, str]:
    """The layer's rounded weight (None: nearest rounding stays) and a line for the report."""
    layer = target.layer
    rows = _collect(runner, hooks, feeds, target, opts, generator, deadline)
    weight = runner.weights[layer.weight].float().to(opts.device)
    nearest = _Grid.of(target.spec, target.fmt, weight).nearest(weight)
    with torch.enable_grad():
        learned, steps = _learn(target, rows, weight, opts, deadline, generator)
    with torch.no_grad():
        before, after = _layer_mse(target, rows, nearest), _layer_mse(target, rows, learned)
    flipped = int((learned != nearest).sum())
    if steps == 0 or flipped == 0 or after >= before:
        why = "no time left" if steps == 0 else f"learned rounding not better ({after:.3g})"
        return None, f"{layer.id}: nearest rounding kept, {why}; layer MSE {before:.3g}"
    share = 100.0 * flipped / learned.numel()
    return learned, (
        f"{layer.id}: {flipped} weights ({share:.1f}%) rounded away from nearest, "
        f"layer output MSE {before:.3g} -> {after:.3g} ({steps} iterations)"
    )


# --- the fix -----------------------------------------------------------------------------------


def on_device(executor: Executor, device: str) -> Executor:
    """The executor itself, or a copy on `device` carrying the same (possibly fixed) weights."""
    wanted = torch.device(device)
    here = executor.device
    if here.type == wanted.type and (wanted.index is None or here.index == wanted.index):
        return executor
    moved = executor.to(wanted)
    moved.weights = {name: value.to(wanted) for name, value in executor.weights.items()}
    return moved


def adaround(
    executor: Executor,
    plan: QuantPlan,
    feeds: Feeds,
    options: AdaRoundOptions | None = None,
    progress: Progress | None = None,
) -> FixResult:
    """Learned rounding for every 8-bit (or narrower) weight; the executor is not modified."""
    opts = options or AdaRoundOptions()
    started = time.perf_counter()
    deadline = None if opts.time_budget_s is None else started + opts.time_budget_s
    runner = on_device(executor, opts.device)
    targets, skipped = find_targets(runner, plan, opts.max_bits)
    result = FixResult(name="adaround")
    if skipped:
        result.changes.append(f"{len(skipped)} layer(s) not rounded: " + "; ".join(skipped))
    hooks = _OverrideHooks(plan, runner.device, {})
    generator = torch.Generator().manual_seed(opts.seed)
    with torch.inference_mode(False):
        for index, target in enumerate(targets):
            now, left = time.perf_counter(), len(targets) - index
            if deadline is not None and now >= deadline:
                result.changes.append(
                    f"time budget of {opts.time_budget_s:g} s spent: "
                    f"{left} layer(s) kept nearest rounding"
                )
                break
            layer_deadline = None if deadline is None else now + (deadline - now) / left
            learned, line = _round_layer(
                runner, hooks, feeds, target, opts, layer_deadline, generator
            )
            result.changes.append(line)
            if learned is not None:
                name = target.layer.weight
                hooks.overrides[name] = learned.to(runner.device)
                dtype = runner.weights[name].dtype
                result.weights[name] = learned.to(dtype).cpu().numpy()
            if progress is not None:
                progress(index + 1, len(targets))
    result.seconds = time.perf_counter() - started
    return result
