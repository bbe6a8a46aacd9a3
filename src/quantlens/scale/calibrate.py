"""Calibration on workers: each actor observes consecutive sample shards in one pass; the
driver merges the shard observations in sample order (`calib.collect.merge_observations`: exact
for every method, see `ShardObservation`) and chooses the ranges as one process does."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantlens.calib.collect import (
    ShardObservation,
    merge_observations,
    observe_shard,
    stats_from_observation,
)
from quantlens.calib.stats import CalibrationStats
from quantlens.data.preprocess import FeedSet, InputSpec
from quantlens.emulate.executor import Executor
from quantlens.scale.models import model_bytes, worker_executor
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.formats import IntFormat

Feed = dict[str, np.ndarray]
Progress = Callable[[int, int], None]
# Samples per unit of work.
SHARD = 4


@dataclass(frozen=True)
class FeedSource:
    """How workers get the samples: file paths they read themselves (a FeedSet: the paths must
    be readable on every machine), or the arrays, sent once through the object store."""

    files: list[Path] | None = None
    spec: InputSpec | None = None
    arrays: list[Feed] | None = None

    def feeds(self) -> Sequence[Feed]:
        if self.arrays is not None:
            return self.arrays
        assert self.files is not None and self.spec is not None
        return FeedSet(self.files, self.spec)


def feed_source(feeds: Sequence[Feed]) -> FeedSource:
    if isinstance(feeds, FeedSet):
        return FeedSource(files=list(feeds.files), spec=feeds.spec)
    return FeedSource(arrays=[dict(feed) for feed in feeds])


class CalibWorker:
    def __init__(self, model: bytes, source: FeedSource, device: str, threads: int) -> None:
        self.executor = worker_executor(model, device, threads)
        self.feeds = source.feeds()

    def observe(
        self, indices: range, targets: Mapping[str, IntFormat], method: str, percentile: float
    ) -> ShardObservation:
        shard = [self.feeds[i] for i in indices]
        return observe_shard(
            self.executor, shard, targets, method, start=indices.start, percentile=percentile
        )


def calibrate_on_workers(
    options: ScaleOptions,
    executor: Executor,
    feeds: Sequence[Feed],
    targets: Mapping[str, IntFormat],
    method: str,
    *,
    percentile: float = 99.999,
    progress: Progress | None = None,
) -> CalibrationStats:
    """`calib.calibrate(executor, feeds, targets, method)`'s result, observed on workers."""
    from quantlens.scale.cluster import shards, start_pool

    device = str(executor.device)
    args: list[Any] = [model_bytes(executor.model), feed_source(feeds), device]
    pool = start_pool(CalibWorker, options, device, args)
    units = [(s, dict(targets), method, percentile) for s in shards(len(feeds), SHARD)]
    try:
        parts = []
        for part in pool.run("observe", units):
            parts.append(part)
            if progress is not None:
                progress(sum(p.samples for p in parts), len(feeds))
        merged = merge_observations(parts)
    finally:
        pool.close()
    return stats_from_observation(merged, targets, method, device, percentile=percentile)
