"""The search's evaluations on workers. The oracle (its cache and checkpoints) stays on the
driver and hands out only what its cache lacks:

- proxy SNRs of many candidates at once, one candidate per unit (one actor sums a candidate's
  noise over the proxy samples in order, as one process does);
- a full task-metric evaluation as sample shards, whose outputs the driver folds into the
  evaluator in sample order (the metric one process computes).

A unit lost with its actor is re-run on a fresh one and its result is taken once; the driver
writes each evaluation to the cache once, when it arrives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantlens.analysis.metrics import OutputNoise, channel_axes
from quantlens.data.preprocess import InputSpec, load_feed
from quantlens.emulate.executor import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.evaluate.agreement import as_reference
from quantlens.scale.calibrate import FeedSource, feed_source
from quantlens.scale.models import model_bytes, worker_executor
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.qparams import QuantPlan

Tensor = torch.Tensor
Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
# Evaluation samples per unit of a full evaluation.
SHARD = 8


class SearchWorker:
    def __init__(
        self,
        model: bytes,
        proxy: FeedSource,
        files: list[Path],
        spec: InputSpec | None,
        device: str,
        threads: int,
    ) -> None:
        self.executor = worker_executor(model, device, threads)
        self.proxy_feeds = proxy.feeds()
        self.files, self.spec, self.device = files, spec, device
        self._references: list[dict[str, Tensor]] | None = None

    def snr(self, plan: QuantPlan) -> float:
        """The candidate's balanced output SNR over the proxy samples (`output_noise`)."""
        hooks = QuantHooks(plan, self.device)
        noise = OutputNoise(axes=channel_axes(self.executor.model.graph.outputs))
        with torch.inference_mode():
            for feed, reference in zip(self.proxy_feeds, self.references()):
                noise.add(reference, self.executor.run(feed, hooks=hooks))
        return noise.snr_db

    def references(self) -> list[dict[str, Tensor]]:
        if self._references is None:
            with torch.inference_mode():
                self._references = [self.executor.run(feed) for feed in self.proxy_feeds]
        return self._references

    def outputs(self, indices: range, plan: QuantPlan | None) -> list[Outputs]:
        """The outputs of evaluation samples `indices` under `plan` (None: the float model)."""
        assert self.spec is not None
        hooks = QuantHooks(plan, self.device) if plan is not None else None
        found = []
        with torch.inference_mode():
            for index in indices:
                feed = load_feed(self.files[index], self.spec)
                found.append(as_reference(self.executor.run(feed, hooks=hooks)))
        return found


@dataclass
class SearchFarm:
    pool: Any
    samples: int  # evaluation samples

    def snr_many(self, plans: Sequence[QuantPlan]) -> Iterator[float]:
        """Each plan's proxy SNR, in order, each evaluated on one actor."""
        import ray

        yield from self.pool.run("snr", [(ray.put(plan),) for plan in plans])

    def outputs(self, plan: QuantPlan | None) -> Iterator[Outputs]:
        """Every evaluation sample's outputs under `plan`, in sample order."""
        import ray

        from quantlens.scale.cluster import shards

        ref = ray.put(plan)
        for shard in self.pool.run("outputs", [(s, ref) for s in shards(self.samples, SHARD)]):
            for outputs in shard:
                yield {name: np.array(value) for name, value in outputs.items()}

    def close(self) -> None:
        self.pool.close()


def search_farm(
    options: ScaleOptions,
    executor: Executor,
    proxy_feeds: Sequence[Feed],
    files: Sequence[Path] = (),
    spec: InputSpec | None = None,
) -> SearchFarm:
    """Actors holding the search's model, the proxy samples and the evaluation samples (files
    every worker can read, read through `spec`)."""
    from quantlens.scale.cluster import start_pool

    device = str(executor.device)
    args = [model_bytes(executor.model), feed_source(proxy_feeds), list(files), spec, device]
    return SearchFarm(start_pool(SearchWorker, options, device, args), len(files))
