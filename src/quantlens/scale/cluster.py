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


class Host:
    """An actor process that takes on one stage's role after another. Ray starts a Python
    process for every actor (torch and quantlens imported: about 2 s on this machine's cores),
    so the stages of one command (calibration per grid, unit noise, evaluations) reuse the
    hosts the previous stage released instead of each starting its own."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.role: Any = None
        self.failed: Exception | None = None

    def become(self, role: type, *args: Any) -> None:
        self.role, self.failed = None, None  # the last stage's model and tensors go first
        try:
            self.role = role(*args, self.threads)
        except Exception as exc:
            self.failed = exc  # raised again by every call of this stage
            raise

    def call(self, method: str, *args: Any) -> Any:
        if self.failed is not None:
            raise self.failed
        return getattr(self.role, method)(*args)

    def release(self) -> None:
        self.role = None


# Released hosts by (job@node, CPUs reserved, GPUs, threads): a stage placed the same way takes
# them; any other placement kills them first, since they hold the cluster's resources.
_idle: dict[tuple[str, float, float, int], list[Any]] = {}


@dataclass
class Pool:
    """`workers` actors built by `make(slot)`; `run` hands out units, at most `window` ahead of
    the first one not yet returned (results wait on the driver in unit order). Each actor is a
    `Host` in its stage's role; `close` hands the hosts to `released` for the next stage."""

    make: Callable[[int], Any]
    workers: int
    window: int = 0
    actors: list[Any] = field(default_factory=list)
    retried: int = 0  # units re-run after their actor died
    released: list[Any] | None = None

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
            pending[actor.call.remote(method, *units[unit])] = (unit, slot, actor)
            busy[slot] += 1

    def _replace(self, slot: int) -> None:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(self.actors[slot])
        self.actors[slot] = self.make(slot)

    def broadcast(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every actor (setting shared state), results in slot order."""
        return [_result(a.call.remote(method, *args)) for a in self.actors]

    def close(self) -> None:
        for actor in self.actors:
            if self.released is None:
                ray.kill(actor)
            else:
                actor.release.remote()
                self.released.append(actor)
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
    """Actors in the role of `actor_class` (a plain class), each built with `args` plus its
    thread count on a `Host` a previous stage released, or on a new one named
    `quantlens-<pid>-<n>-<slot>` so that operators (and tests) find it."""
    connect(options)
    where = placement(options, device)
    name = new_pool_name()
    # Once into the object store: every actor (and a replacement) reads the same copy.
    shared = [ray.put(a) for a in args]
    idle = _released_hosts(where)

    def make(slot: int) -> Any:
        host = idle.pop() if idle else _new_host(f"{name}-{slot}-{next(_pool_ids)}", where)
        host.become.remote(actor_class, *shared)  # a failure surfaces at the first call
        return host

    return Pool(make, where.workers, released=idle)


def _released_hosts(where: Placement) -> list[Any]:
    """The released hosts placed as `where` asks; every other released host is killed."""
    context = ray.get_runtime_context()
    # A fresh local runtime reuses job id 01000000; its driver's node id is new.
    runtime = f"{context.get_job_id()}@{context.get_node_id()}"
    key = (runtime, where.reserve, where.gpus, where.threads)
    for other in [k for k in _idle if k != key]:
        for host in _idle.pop(other):
            with contextlib.suppress(Exception):  # gone with its runtime
                ray.kill(host)
    return _idle.setdefault(key, [])


def _new_host(name: str, where: Placement) -> Any:
    remote: Any = ray.remote(Host)
    return remote.options(
        name=name, num_cpus=where.reserve, num_gpus=where.gpus, max_restarts=0
    ).remote(where.threads)


def shards(count: int, size: int) -> list[range]:
    """Sample indices in consecutive shards of `size` (the last may be shorter): fixed by the
    data alone, so the result never depends on how many workers run them."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
