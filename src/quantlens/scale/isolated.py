"""Isolated analysis on workers: the layers are cut into groups handed to actors; each actor
holds the model, the plan and its samples, and keeps the float tensors of every batch at every
layer's cut between groups while they fit its memory budget (else it recomputes them).

A layer's noise is summed over the batches in sample order by one actor, exactly as in one
process; the driver only joins the per-layer results, so they do not depend on the number of
workers or on how the layers were grouped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from quantlens.analysis.batching import batches
from quantlens.analysis.isolated import Evaluator, IsolatedResult, IsolatedUnit, run_isolated
from quantlens.emulate.executor import Executor
from quantlens.scale.calibrate import FeedSource, feed_source
from quantlens.scale.models import model_bytes, worker_executor
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.qparams import QuantPlan

Tensor = torch.Tensor
Feed = dict[str, np.ndarray]
Tick = Callable[[], None]
# Groups per worker: enough to balance layers of unequal cost.
GROUPS_PER_WORKER = 4


class IsolatedWorker:
    def __init__(
        self,
        model: bytes,
        source: FeedSource,
        plan: QuantPlan,
        keep: list[str],
        batch: int,
        budget: int,
        device: str,
        threads: int,
    ) -> None:
        self.executor = worker_executor(model, device, threads)
        self.feeds, self.plan, self.batch = source.feeds(), plan, batch
        self.keep, self.budget = keep, budget  # every layer's cut: any group's tensors
        self.cache: dict[int, dict[str, Tensor]] = {}
        self.cached_bytes = 0

    def layers(
        self, units: Sequence[IsolatedUnit], variants: Sequence[str], evaluator: Evaluator | None
    ) -> IsolatedResult:
        feeds = batches(self.feeds, self.batch)
        return run_isolated(
            self.executor, self.plan, units, feeds, variants, evaluator, floats=self._floats
        )

    def _floats(
        self, index: int, feed: Mapping[str, np.ndarray], _: list[str]
    ) -> dict[str, Tensor]:
        found = self.cache.get(index)
        if found is None:
            found = self.executor.run(feed, keep=self.keep)
            size = sum(t.numel() * t.element_size() for t in found.values())
            if self.cached_bytes + size <= self.budget:
                self.cache[index] = found
                self.cached_bytes += size
        return found


@dataclass
class IsolatedFarm:
    pool: Any
    batches: int  # batches per pass, for progress

    def run(
        self,
        layers: Sequence[IsolatedUnit],
        variants: Sequence[str],
        evaluator: Evaluator | None = None,
        tick: Tick | None = None,
    ) -> IsolatedResult:
        """`run_isolated`'s result for `layers`; `tick` advances as groups finish."""
        size = max(1, math.ceil(len(layers) / (GROUPS_PER_WORKER * self.pool.workers)))
        groups = [list(layers[i : i + size]) for i in range(0, len(layers), size)]
        units = [(group, tuple(variants), evaluator) for group in groups]
        result, done, ticked = IsolatedResult(), 0, 0
        for part in self.pool.run("layers", units):
            result.noise.update(part.noise)
            result.metric.update(part.metric)
            done += len(part.noise)
            ticked = _advance(tick, ticked, self.batches * done // max(len(layers), 1))
        return result

    def close(self) -> None:
        self.pool.close()


def _advance(tick: Tick | None, ticked: int, target: int) -> int:
    while tick is not None and ticked < target:
        tick()
        ticked += 1
    return target


def isolated_farm(
    options: ScaleOptions,
    executor: Executor,
    plan: QuantPlan,
    layers: Sequence[IsolatedUnit],
    feeds: Sequence[Feed],
    batch: int,
    budget: int,
) -> IsolatedFarm:
    """Actors for isolated runs of any of `layers` over `feeds` in batches of `batch`; each may
    keep `budget` bytes of float tensors."""
    from quantlens.scale.cluster import start_pool

    keep = list(dict.fromkeys(name for lt in layers for name in lt.cut))
    device = str(executor.device)
    args = [model_bytes(executor.model), feed_source(feeds), plan, keep, batch, budget, device]
    pool = start_pool(IsolatedWorker, options, device, args)
    return IsolatedFarm(pool, math.ceil(len(feeds) / batch))
