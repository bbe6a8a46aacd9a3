"""The Ray side: joining or starting a runtime, and a pool of actors that runs numbered units of
work and hands their results back in unit order, re-running the unit of an actor that died.

Only this module and the workers import Ray, and only when a stage asked for workers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from quantlens.errors import UserError
from quantlens.scale.options import ScaleOptions

# Ray's own errors when an actor process is gone: its unit is given to a fresh actor.
LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
# How many times one unit may be re-run before the stage gives up.
MAX_RETRIES = 3
NAMESPACE = "quantlens"
_pool_ids = itertools.count()


@dataclass(frozen=True)
class Placement:
    """How many actors, and what each reserves: threads on CPU, one GPU with cuda."""

    workers: int
    threads: int
    gpus: float  # per actor: 1, or a share when there are more actors than GPUs
    cpus: int = 1

    @property
    def reserve(self) -> float:
        """CPUs an actor reserves: its threads, never more than an even share of the cluster
        (more actors than cores still all start)."""
        if self.gpus:
            return 1.0
        return min(float(self.threads), self.cpus / self.workers)


def connect(options: ScaleOptions) -> None:
    """Join the cluster at `options.address`, or start a local runtime; a runtime already up in
    this process (a test's, a notebook's) is used as it is."""
    if ray.is_initialized():
        return
    if options.address is not None:
        if options.address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise UserError(
                f"--ray-address {options.address} goes through Ray Client, which needs grpcio",
                "pip install 'ray[client]==2.60.0', or run on a node with --ray-address auto",
            )
        ray.init(address=options.address, namespace=NAMESPACE, log_to_driver=False)
        return
    cpus = os.cpu_count() or 1
    # address="local": a runtime of our own, even where `ray start` left a cluster behind.
    ray.init(
        address="local",
        num_cpus=max(cpus, options.workers or 1),
        namespace=NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
    )


def placement(options: ScaleOptions, device: str) -> Placement:
    """One actor per GPU with cuda; on CPU the cluster's cores split evenly, so that N actors
    of `threads` torch threads each never run more threads than there are cores."""
    resources = ray.cluster_resources()
    if device == "cuda":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise UserError("--device cuda but the Ray cluster has no GPU", "use --device cpu")
        workers = options.workers or gpus
        share = min(1.0, gpus / workers)
        return Placement(workers, 1, share, cpus=int(resources.get("CPU", 1)))
    cpus = max(1, int(resources.get("CPU", 1)))
    workers = options.workers or cpus
    return Placement(workers, options.threads or max(1, cpus // workers), 0, cpus)


@dataclass
class Pool:
    """`workers` actors built by `make(slot)`; `run` hands out units, at most `window` ahead of
    the first one not yet returned (results wait on the driver in unit order)."""

    make: Callable[[int], Any]
    workers: int
    window: int = 0
    actors: list[Any] = field(default_factory=list)
    retried: int = 0  # units re-run after their actor died

    def __post_init__(self) -> None:
        self.window = self.window or 2 * self.workers
        self.actors = [self.make(slot) for slot in range(self.workers)]

    def run(self, method: str, units: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        """`actor.method(*unit)` of every unit, yielded in unit order, each exactly once."""
        queue = list(range(len(units)))
        pending: dict[Any, tuple[int, int, Any]] = {}  # object ref -> (unit, slot, actor)
        done: dict[int, Any] = {}
        tries = dict.fromkeys(queue, 0)
        busy = [0] * self.workers
        following = 0
        while following < len(units):
            self._submit(method, units, queue, pending, busy, following)
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit, slot, actor = pending.pop(ready[0])
            busy[slot] -= 1
            try:
                done.setdefault(unit, _result(ready[0]))
            except LOST:
                tries[unit] += 1
                if tries[unit] > MAX_RETRIES:
                    raise
                self.retried += 1
                if self.actors[slot] is actor:  # not yet replaced for another of its units
                    self._replace(slot)
                queue.insert(0, unit)
            while following in done:
                yield done.pop(following)
                following += 1

    def _submit(
        self,
        method: str,
        units: Sequence[tuple[Any, ...]],
        queue: list[int],
        pending: dict[Any, tuple[int, int, Any]],
        busy: list[int],
        following: int,
    ) -> None:
        # Two units per actor keep it fed while the driver folds the previous result.
        while queue and queue[0] < following + self.window and min(busy) < 2:
            slot = busy.index(min(busy))
            unit = queue.pop(0)
            actor = self.actors[slot]
            pending[getattr(actor, method).remote(*units[unit])] = (unit, slot, actor)
            busy[slot] += 1

    def _replace(self, slot: int) -> None:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[slot])
        self.actors[slot] = self.make(slot)

    def broadcast(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every actor (setting shared state), results in slot order."""
        return [_result(getattr(a, method).remote(*args)) for a in self.actors]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _result(ref: Any) -> Any:
    """The unit's result; an error raised by our code on the worker is raised here as itself
    (a UserError then prints as one line), not wrapped in Ray's task error."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, LOST):
            raise cause from None
        raise


def new_pool_name() -> str:
    return f"quantlens-{os.getpid()}-{next(_pool_ids)}"


def start_pool(
    actor_class: type,
    options: ScaleOptions,
    device: str,
    args: Sequence[Any],
) -> Pool:
    """Actors of `actor_class` (a plain class, made remote here) built with `args` plus their
    thread count; named `quantlens-<pid>-<n>-<slot>` so that operators (and tests) find them."""
    connect(options)
    where = placement(options, device)
    remote: Any = ray.remote(actor_class)
    name = new_pool_name()
    # Once into the object store: every actor (and a replacement) reads the same copy.
    shared = [ray.put(a) for a in args]

    def make(slot: int) -> Any:
        return remote.options(
            name=f"{name}-{slot}-{next(_pool_ids)}",
            num_cpus=where.reserve,
            num_gpus=where.gpus,
            max_restarts=0,
        ).remote(*shared, where.threads)

    return Pool(make, where.workers)


def shards(count: int, size: int) -> list[range]:
    """Sample indices in consecutive shards of `size` (the last may be shorter): fixed by the
    data alone, so the result never depends on how many workers run them."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
