"""The compare stage: another runtime's per-layer dump against the run's float model and its
emulation, on the inputs the dump was made from.

The run folder gives the canonical model and the plan; the dump (`quantlens.analysis.dumps`)
gives per-tensor values and, usually, the graph inputs (else `--inputs`). Our executor runs
every sample twice (float, then with the plan's quantizers) keeping the aligned tensors; the
report lists them in graph order with SNR, cosine, max error and code agreement, and names the
first tensor below the threshold with its likely cause: its op (and the next few diverging
ones) replayed from the dump's own inputs (`quantlens.analysis.replay`) says whether the op
itself differs or inherits its inputs' differences. `compare.json` goes to the output run
folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from quantlens.analysis.compare import TensorSums, accumulate, compared, first_divergence
from quantlens.analysis.dumps import Dump, read_dump, read_name_map
from quantlens.analysis.replay import Replayer, explain
from quantlens.artifacts.compare import CompareReport
from quantlens.artifacts.folder import RunFolder
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.errors import UserError
from quantlens.pipeline.session import prepare
from quantlens.schemes.qparams import QuantPlan, TensorQuant

Progress = Callable[[int, int], None]
DEFAULT_THRESHOLD_DB = 40.0


def compare_dumps(
    run_dir: Path,
    dumps: Path,
    fmt: str = "npz",
    *,
    name_map: Path | None = None,
    inputs: Path | None = None,
    output: Path | None = None,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    device: str = "cpu",
    progress: Progress | None = None,
) -> CompareReport:
    """Compare `dumps` with the run in `run_dir`; writes compare.json into `output` (or
    `run_dir`) and returns the report."""
    folder = RunFolder(run_dir)
    plan = folder.require(QuantPlan)
    if not folder.canonical_model.is_file():
        raise UserError(f"{folder.canonical_model} is missing", "re-run `quantlens quantize`")
    model = prepare(folder.canonical_model, None, batch=1).model
    given = _read_inputs(inputs) if inputs is not None else None
    dump = read_dump(dumps, fmt, model, read_name_map(name_map), given)
    feeds = _feeds(model, given or dump.inputs)
    report = _compare(model, plan, dump, feeds, threshold_db, device, progress)
    report.dumps, report.format = str(dumps), fmt
    RunFolder(output or run_dir).write(report)
    return report


def _read_inputs(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read inputs {path}: {exc}", "pass an .npz of the inputs") from exc


def _feeds(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed per sample (the canonical model has batch 1)."""
    names = [v.name or "" for v in model.graph.inputs]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise UserError(
            f"the dump has no values for graph input {missing[0]!r}",
            "dump the inputs too, or pass them with --inputs FILE.npz",
        )
    counts = {len(inputs[n]) for n in names}
    if len(counts) != 1:
        raise UserError("the inputs hold different numbers of samples", "one per sample each")
    count = counts.pop()
    return [{n: np.asarray(inputs[n][i : i + 1], np.float32) for n in names} for i in range(count)]


def emulated_grids(model: ir.Model, plan: QuantPlan) -> dict[str, TensorQuant]:
    """The grid each tensor's emulated values lie on: its own quantizer's, or, for an op the
    vendor computes on integer codes inside a fused op (a Conv before its Relu), the grid it is
    requantized to (`plan.requant`)."""
    grids = dict(plan.activations)
    made_by = {node.name: node.outputs[0].name for node in model.graph if node.outputs}
    for node, requant in plan.requant.items():
        tensor = made_by.get(node)
        out = plan.activations.get(requant.output)
        if requant.kind != "cast" and tensor and tensor not in grids and out is not None:
            grids[tensor] = out
    return grids


def _compare(
    model: ir.Model,
    plan: QuantPlan,
    dump: Dump,
    feeds: list[dict[str, np.ndarray]],
    threshold_db: float,
    device: str,
    progress: Progress | None,
) -> CompareReport:
    executor = Executor(model, device=device)
    order = [name for name in executor.activation_names() if name in dump.arrays]
    order = [*(n for n in dump.inputs if n in dump.arrays), *order]
    types = {out: step.ctx.op_type for step in executor.steps for out in step.outputs}
    hooks = QuantHooks(plan, device=device)
    grids = emulated_grids(model, plan)
    sums = {name: TensorSums.empty() for name in order}
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for index, feed in enumerate(feeds):
        with torch.inference_mode():
            floats = executor.run(feed, outputs=[], keep=order)
            emulated = executor.run(feed, outputs=[], keep=order, hooks=hooks)
        shapes = shapes or {n: (tuple(t.shape), t.dtype) for n, t in floats.items()}
        for name in order:
            values = _sample(dump, name, index, len(feeds), floats[name])
            accumulate(sums[name], values, floats[name], emulated[name], grids.get(name))
        if progress is not None:
            progress(index + 1, len(feeds))
    tensors = [
        compared(n, dump.names[n], types.get(n, "input"), sums[n], grids.get(n)) for n in order
    ]
    first = first_divergence(tensors, sums, threshold_db)
    replays, notes = [], []
    if first is not None:
        # The vendor's own inputs of the diverging ops through our emulation of each op.
        replayer = Replayer(executor, hooks, grids, dump.arrays, feeds, shapes)
        replays = explain(first, tensors, sums, replayer, threshold_db)
        notes = [f"op of {t} not replayed: {why}" for t, why in replayer.failures.items()]
    return CompareReport(
        dumps="",
        format="",
        target=plan.target,
        samples=len(feeds),
        threshold_db=threshold_db,
        tensors=tensors,
        first_divergence=first,
        replays=replays,
        skipped=dump.skipped,
        notes=notes,
    )


def _sample(dump: Dump, name: str, index: int, count: int, ours: torch.Tensor) -> np.ndarray:
    """Sample `index` of the dump's `name`, checked against our tensor's size."""
    array = dump.arrays[name]
    size = ours.numel()
    if array.size == size * count:
        return array.reshape(count, -1)[index]
    if array.size == size:  # one sample dumped, compared with the first input
        if index == 0:
            return array.reshape(-1)
        raise UserError(
            f"dump tensor {dump.names[name]!r} holds one sample, the inputs {count}",
            "dump every sample, or pass only the matching inputs",
        )
    raise UserError(
        f"dump tensor {dump.names[name]!r} has {array.size} values ({list(array.shape)}), "
        f"our {name!r} has {size} per sample ({list(ours.shape)}) x {count} samples",
        "check that the dump is of this model and these inputs (or --name-map)",
    )
