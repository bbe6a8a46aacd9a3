"""ONNX Runtime CPU latency, measured so that two models can be compared on a busy machine.

Models are timed *interleaved*: each round runs every model once on the same input, in an order
that rotates from round to round, so a load spike from another process lands on all of them
alike; after warm-up rounds (allocations, kernel selection, prepacked weights) the median of the
rounds is each model's latency. Sessions use a fixed intra-op thread count (default 2), one
inter-op thread and sequential execution, as a deployment would pin them.

Their pool threads do not spin-wait for work. ORT's default lets an idle session's threads spin
after each run, so in an interleaved round the next model runs against the previous one's
spinning threads: on 2 cores, pplcnet's float model timed 15.7 ms with spinning and 3.6 ms
without in the same run (int8 28.2 vs 5.1 ms), and the ratio moved from 1.80x to 1.44x. One
session alone spins harmlessly; timing several side by side, it measures the spinning.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from quantlens.artifacts.quantize import LatencyRecord
from quantlens.emulate.ort import session_options
from quantlens.errors import UserError

Feed = Mapping[str, np.ndarray]
DEFAULT_THREADS = 2
# ORT's integer kernels after its QDQ fusions, and the weighted ops it may leave in float.
INTEGER_PREFIXES = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize")
FLOAT_HEAVY_OPS = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "ConvTranspose")


@dataclass(frozen=True)
class LatencySettings:
    threads: int = DEFAULT_THREADS
    warmup: int = 3
    rounds: int = 20


def cpu_session(model: str | Path | bytes, threads: int = DEFAULT_THREADS) -> ort.InferenceSession:
    """A CPU session with ORT's default graph optimizations (the QDQ fusions included) and
    default integer kernels: what a user's deployment runs."""
    options = session_options(threads, exact_integers=False)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle threads of one session would spin on the cores the next timed session needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"ONNX Runtime cannot load {model!r} for timing: {first}", "") from exc


def interleaved_latency(
    models: Mapping[str, str | Path | bytes],
    feeds: Sequence[Feed],
    settings: LatencySettings | None = None,
) -> dict[str, float]:
    """Median seconds per inference of each model, timed round-robin on the same inputs."""
    times = interleaved_times(models, feeds, settings)
    return {name: statistics.median(values) for name, values in times.items()}


def interleaved_times(
    models: Mapping[str, str | Path | bytes],
    feeds: Sequence[Feed],
    settings: LatencySettings | None = None,
) -> dict[str, list[float]]:
    """Every timed round's seconds per model (warm-up left out), timed as `interleaved_latency`
    does. On a loaded machine the median moves with the load; the fastest round is the closest
    to an idle machine, since load only ever adds time."""
    settings = settings or LatencySettings()
    if not feeds:
        raise UserError("no inputs to time the models with", "give at least one sample")
    sessions = {name: cpu_session(path, settings.threads) for name, path in models.items()}
    inputs = [_inputs(s) for s in sessions.values()]
    names = list(sessions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(settings.warmup + settings.rounds):
        feed = feeds[index % len(feeds)]
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            wanted = inputs[names.index(name)]
            elapsed = _time_one(sessions[name], {k: feed[k] for k in wanted})
            if index >= settings.warmup:
                times[name].append(elapsed)
    return times


def _inputs(session: ort.InferenceSession) -> list[str]:
    return [i.name for i in session.get_inputs()]


def _time_one(session: ort.InferenceSession, feed: Feed) -> float:
    start = time.perf_counter()
    session.run(None, dict(feed))
    return time.perf_counter() - start


def fused_op_counts(model: str | Path, threads: int = 1) -> dict[str, int]:
    """Op types of the graph ORT actually runs (after its QDQ fusions), counted."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def export_latency(
    float_model: str | Path,
    qdq_model: str | Path,
    feeds: Sequence[Feed],
    settings: LatencySettings | None = None,
) -> LatencyRecord:
    """The float model against its QDQ export, interleaved, with what ORT fused."""
    settings = settings or LatencySettings()
    times = interleaved_latency({"float": float_model, "quantized": qdq_model}, feeds, settings)
    ops = fused_op_counts(qdq_model, settings.threads)
    return LatencyRecord(
        threads=settings.threads,
        rounds=settings.rounds,
        float_ms=round(times["float"] * 1e3, 3),
        quantized_ms=round(times["quantized"] * 1e3, 3),
        integer_kernels={k: v for k, v in ops.items() if k.startswith(INTEGER_PREFIXES)},
        float_weighted_ops={k: v for k, v in ops.items() if k in FLOAT_HEAVY_OPS},
    )
