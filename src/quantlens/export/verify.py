"""Does the exported QDQ model compute what the emulator computed?

The emulator with the plan's hooks and ONNX Runtime on the exported file see the same inputs;
the worst SNR per output (ORT as the reference) says how far apart they are. With graph
optimizations on, ORT fuses Q/DQ pairs into integer kernels whose requantization rounds a little
differently, so `optimize=False` is the way to see the exported arithmetic itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.helper import make_empty_tensor_value_info

from quantlens.analysis.metrics import ErrorSums
from quantlens.artifacts.measures import AgreementStats
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.ort import session_options
from quantlens.errors import UserError
from quantlens.evaluate.distance import snr_db
from quantlens.schemes.qparams import QuantPlan

Feed = Mapping[str, np.ndarray | torch.Tensor]


def qdq_session(path: str | Path, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session over an exported model, with or without ORT's graph optimizations, its
    integer kernels exact on every CPU (`session_options`)."""
    options = session_options()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"ONNX Runtime cannot load the exported model {path}: {first}",
            "report this with the plan; the export should always load",
        ) from exc


def qdq_view(plan: QuantPlan) -> QuantPlan:
    """The plan as a QDQ model carries it: its grids, not a vendor's integer arithmetic
    (`QuantPlan.requant`, e.g. TPU-MLIR's Add), which ONNX Runtime runs in float, nor a
    vendor simulator's float bias and rounding (qnn-htp as AIMET's sim): ONNX Runtime adds the
    int32 bias the file holds and rounds half to even."""
    onnx_way = {"requant": {}, "float_bias": False, "quantizer_rounding": "half-to-even"}
    if all(getattr(plan, key) == value for key, value in onnx_way.items()):
        return plan
    return plan.model_copy(update=onnx_way)


def agreement_stats(
    executor: Executor,
    plan: QuantPlan,
    qdq_path: str | Path,
    feeds: Iterable[Feed],
    *,
    optimize: bool = True,
) -> dict[str, AgreementStats]:
    """Per output: worst and pooled SNR, and argmax agreement, ORT on `qdq_path` vs emulator."""
    session = qdq_session(qdq_path, optimize)
    other = qdq_session(qdq_path, not optimize)
    names = [o.name for o in session.get_outputs()]
    hooks = QuantHooks(qdq_view(plan), device=executor.device)
    acc = {name: _Accumulator() for name in names}
    drift = {name: ErrorSums() for name in names}
    for feed in feeds:
        with torch.inference_mode():
            emulated = executor.run(feed, outputs=names, hooks=hooks)
        arrays = {name: _numpy(value) for name, value in feed.items()}
        others = other.run(names, arrays)
        for name, reference, alternative in zip(names, session.run(names, arrays), others):
            ref = torch.from_numpy(np.asarray(reference))
            acc[name].add(ref, emulated[name].cpu())
            drift[name].add(ref.double(), torch.from_numpy(np.asarray(alternative)).double())
    return {
        name: a.result().model_copy(update={"onnxruntime_self_db": drift[name].snr_db})
        for name, a in acc.items()
    }


def agreement(
    executor: Executor,
    plan: QuantPlan,
    qdq_path: str | Path,
    feeds: Iterable[Feed],
    *,
    optimize: bool = True,
) -> dict[str, float]:
    """Worst SNR (dB) per output between ORT on `qdq_path` and the emulator under `plan`."""
    stats = agreement_stats(executor, plan, qdq_path, feeds, optimize=optimize)
    return {name: s.worst_snr_db for name, s in stats.items()}


class _Accumulator:
    """Worst per-feed SNR, pooled SNR (the analysis layer's ErrorSums) and argmax agreement."""

    def __init__(self) -> None:
        self.worst = math.inf
        self.sums = ErrorSums()
        self.matches = self.positions = 0

    def add(self, reference: torch.Tensor, emulated: torch.Tensor) -> None:
        ref, emu = reference.to(torch.float64), emulated.to(torch.float64)
        self.worst = min(self.worst, snr_db(ref, emu))
        self.sums.add(ref, emu)
        if ref.dim() > 0 and ref.numel() > 0:
            self.matches += int((ref.argmax(-1) == emu.argmax(-1)).sum())
            self.positions += ref.argmax(-1).numel()

    def result(self) -> AgreementStats:
        match = self.matches / self.positions if self.positions else 1.0
        return AgreementStats(
            worst_snr_db=self.worst, pooled_snr_db=self.sums.snr_db, argmax_match=match
        )


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class StepError(NamedTuple):
    """One node's disagreement: the largest, in grid steps, and the share of values off."""

    max_steps: float
    mismatched: float


def stepwise_code_error(
    executor: Executor, plan: QuantPlan, qdq_path: str | Path, feed: Feed
) -> dict[str, StepError]:
    """Per quantized node output: how far ORT and the emulator are apart, in grid steps, when
    the emulator recomputes that one node from ORT's own (already rounded) inputs.

    End-to-end SNR mixes export errors with the cascade of one-step flips that float kernel
    differences cause at rounding ties; this isolates each node: a correct export is at most
    1 step off anywhere (a tie flipped by float noise) and 0 almost everywhere. Per-tensor
    integer activations written by a node are checked; graph inputs and float layers are not.
    """
    names = [n for n in executor.activation_names() if _per_tensor_int(plan, n)]
    present = _tensor_names(qdq_path)
    inputs = {n: _ort_inputs(executor, n, present) for n in names}
    needed = {i for group in inputs.values() for i in group} | set(names)
    tensors = _ort_tensors(qdq_path, sorted(needed - set(executor.input_names)), feed)
    hooks = QuantHooks(qdq_view(plan), device=executor.device)
    errors = {}
    for name in names:
        feeds = {i: feed[i] for i in inputs[name] if i in executor.input_names}
        start = {i: torch.from_numpy(tensors[i]) for i in inputs[name] if i not in feeds}
        with torch.inference_mode():
            value = executor.run(feeds, start=start, outputs=[name], hooks=hooks)[name]
        diff = (value.cpu().double() - torch.from_numpy(tensors[name]).double()).abs()
        steps = float(diff.max()) / plan.activations[name].scale[0]
        errors[name] = StepError(steps, float((diff > 0).double().mean()))
    return errors


def _activation_inputs(executor: Executor, name: str) -> list[str]:
    step = executor.producer[name]
    return [i for i in step.inputs if i is not None and i not in executor.weights]


def _ort_inputs(executor: Executor, name: str, present: set[str]) -> list[str]:
    """The activations `name`'s node reads, where ORT's graph has them; one an export rewrite
    fused away (a GELU's inner tensors in `qdq_lower`) is replaced by what its node reads, so
    the emulator recomputes the fused op from ORT's own inputs."""
    found: list[str] = []
    pending = _activation_inputs(executor, name)
    while pending:
        tensor = pending.pop()
        if tensor in found:
            continue
        if tensor in present or tensor not in executor.producer:
            found.append(tensor)
        else:
            pending.extend(_activation_inputs(executor, tensor))
    return found


def _tensor_names(path: str | Path) -> set[str]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name for v in graph.input} | {o for node in graph.node for o in node.output}


def _per_tensor_int(plan: QuantPlan, name: str) -> bool:
    spec = plan.activations.get(name)
    return spec is not None and spec.is_int and len(spec.scale) == 1


def _ort_tensors(path: str | Path, names: list[str], feed: Feed) -> dict[str, np.ndarray]:
    """Every graph tensor in `names` as ORT computes it (fusions off, so each one exists)."""
    model = onnx.load(str(path))
    public = {o.name for o in model.graph.output}
    model.graph.output.extend(make_empty_tensor_value_info(n) for n in names if n not in public)
    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    wanted = [o.name for o in session.get_outputs()]
    arrays = {name: _numpy(value) for name, value in feed.items()}
    return dict(zip(wanted, (np.asarray(t) for t in session.run(wanted, arrays))))
