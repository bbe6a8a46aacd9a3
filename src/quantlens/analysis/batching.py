"""Samples stacked along the batch axis, when the model allows it and memory does."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from quantlens.emulate.executor import Executor

Feed = Mapping[str, np.ndarray]


def stack(feeds: Sequence[Feed]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return dict(feeds[0])
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}


def batches(feeds: Iterable[Feed], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive samples stacked, at most `size` of them and only while their input shapes
    agree (text lines differ in width). Streams: holds one batch, never the whole set."""
    pending: list[Feed] = []
    for feed in feeds:
        if pending and (len(pending) == size or _shapes(feed) != _shapes(pending[0])):
            yield stack(pending)
            pending = []
        pending.append(feed)
    if pending:
        yield stack(pending)


def _shapes(feed: Feed) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(np.shape(feed[name])) for name in sorted(feed))


def dynamic_batch(executor: Executor) -> bool:
    """Whether every graph input leaves its first axis open (a symbolic batch dimension)."""
    for value in executor.model.graph.inputs:
        if value.shape is None or len(value.shape) == 0 or isinstance(value.shape[0], int):
            return False
    return True


def choose_batch_size(
    executor: Executor,
    feeds: Sequence[Feed],
    keep: Collection[str],
    budget_bytes: int,
    max_batch: int,
) -> int:
    """The largest batch whose cached tensors fit `budget_bytes`, once a batch of two has been
    checked to give the same outputs as two single runs (reshapes may hard-code batch 1)."""
    if max_batch <= 1 or len(feeds) < 2 or not dynamic_batch(executor):
        return 1
    two = next((b for b in batches(feeds, 2) if len(next(iter(b.values()))) == 2), None)
    if two is None:
        return 1
    with torch.inference_mode():
        single = executor.run({name: value[:1] for name, value in two.items()}, keep=keep)
        per_sample = sum(t.numel() * t.element_size() for t in single.values())
        try:
            pair = executor.run(two, outputs=executor.output_names)
        except Exception:  # any kernel refusing the batch means: run one sample at a time
            return 1
        for name in executor.output_names:
            got = pair[name][:1]
            if got.shape != single[name].shape or not torch.allclose(
                got, single[name], rtol=1e-4, atol=1e-5
            ):
                return 1
    return max(1, min(max_batch, budget_bytes // max(per_sample, 1), len(feeds)))
