"""Evaluation on workers: sample shards run through the float and quantized models on actors;
the driver folds the per-sample outputs into the evaluators in sample order.

Evaluators stay on the driver (built-ins and plug-ins alike): each sees exactly the `update`
calls, in exactly the order, of a single-process run, so COCO mAP, OCR accuracy, a
classification top-1 or a plug-in's metric are the same numbers whatever the worker count.
What crosses the network per sample is the model's outputs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from quantlens.data.preprocess import InputSpec, load_feed
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.ort import OrtRunner
from quantlens.evaluate.agreement import as_reference
from quantlens.scale.cluster import Pool, shards, start_pool
from quantlens.scale.models import model_bytes, model_from_bytes, worker_executor
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.qparams import QuantPlan

Outputs = dict[str, np.ndarray]
# Samples per unit of work: small enough to balance, large enough to amortize a round trip.
SHARD = 8


class EvalWorker:
    """Holds the float model (emulator and ONNX Runtime) and reads its samples itself."""

    def __init__(
        self,
        files: Sequence[Path],
        spec: InputSpec,
        model: bytes,
        source: bytes,
        device: str,
        threads: int,
    ) -> None:
        self.files, self.spec, self.device = list(files), spec, device
        self.executor = worker_executor(model, device, threads)
        self.reference = OrtRunner(source, threads=threads)
        self._quantized: tuple[str, Executor, QuantHooks, OrtRunner | None] | None = None

    def float_shard(self, indices: range) -> list[tuple[Outputs, Outputs]]:
        """(emulator, ONNX Runtime) float outputs of every sample in `indices`."""
        found = []
        for index in indices:
            feed = load_feed(self.files[index], self.spec)
            found.append((_run(self.executor, feed), self.reference.run(feed)))
        return found

    def quantized_shard(
        self, indices: range, key: str, plan: QuantPlan, model: bytes | None, qdq: bytes | None
    ) -> list[tuple[Outputs, Outputs, Outputs | None]]:
        """(float, quantized emulator, QDQ in ONNX Runtime or None) outputs per sample."""
        _, executor, hooks, runner = self._quantized_for(key, plan, model, qdq)
        found = []
        for index in indices:
            feed = load_feed(self.files[index], self.spec)
            exported = runner.run(feed) if runner is not None else None
            found.append((_run(self.executor, feed), _run(executor, feed, hooks), exported))
        return found

    def _quantized_for(
        self, key: str, plan: QuantPlan, model: bytes | None, qdq: bytes | None
    ) -> tuple[str, Executor, QuantHooks, OrtRunner | None]:
        # Built once per plan; the key says when the plan changed.
        if self._quantized is None or self._quantized[0] != key:
            executor = self.executor
            if model is not None:
                executor = Executor(model_from_bytes(model), device=self.device)
            runner = OrtRunner(qdq, threads=torch.get_num_threads()) if qdq else None
            self._quantized = (key, executor, QuantHooks(plan, self.device), runner)
        return self._quantized


def _run(
    executor: Executor, feed: dict[str, np.ndarray], hooks: QuantHooks | None = None
) -> Outputs:
    with torch.inference_mode():
        return as_reference(executor.run(feed, hooks=hooks))


def _writable(outputs: Outputs) -> Outputs:
    """Arrays from the object store are read-only views; evaluators get their own copies, as
    in one process."""
    return {name: np.array(value) for name, value in outputs.items()}


@dataclass
class EvalFarm:
    """The evaluation's actors; records come back in sample order."""

    pool: Pool
    count: int

    def float_records(self) -> Iterator[tuple[Outputs, Outputs]]:
        units = [(s,) for s in shards(self.count, SHARD)]
        for shard in self.pool.run("float_shard", units):
            for emulated, expected in shard:
                yield _writable(emulated), _writable(expected)

    def quantized_records(
        self, plan: QuantPlan, model: ir.Model | None, qdq: Path | None
    ) -> Iterator[tuple[Outputs, Outputs, Outputs | None]]:
        import ray

        key = uuid.uuid4().hex  # tells the actors' cached hooks that the plan changed
        shared: list[Any] = [
            ray.put(plan),
            ray.put(model_bytes(model)) if model is not None else None,
            ray.put(qdq.read_bytes()) if qdq is not None else None,
        ]
        units = [(s, key, *shared) for s in shards(self.count, SHARD)]
        for shard in self.pool.run("quantized_shard", units):
            for reference, candidate, exported in shard:
                copy = _writable(exported) if exported is not None else None
                yield _writable(reference), _writable(candidate), copy

    def close(self) -> None:
        self.pool.close()


def eval_farm(
    options: ScaleOptions,
    device: str,
    files: Sequence[Path],
    spec: InputSpec,
    model: ir.Model,
    source: Path,
) -> EvalFarm:
    """Actors holding `model` (the prepared float model) and `source` (the file ONNX Runtime
    checks it against); `files` must be readable on every worker (a shared path)."""
    args = [list(files), spec, model_bytes(model), source.read_bytes(), device]
    return EvalFarm(start_pool(EvalWorker, options, device, args), len(files))
