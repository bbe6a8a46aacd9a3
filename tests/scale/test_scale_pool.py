"""The pool every stage hands its units to: results in unit order, each once, an actor that dies
replaced and its units re-run; placement never reserves more than the cluster has."""

from __future__ import annotations

import os
import time

import pytest

ray = pytest.importorskip("ray")

from quantlens.errors import UserError  # noqa: E402
from quantlens.scale import ScaleOptions  # noqa: E402
from quantlens.scale.cluster import Placement, shards, start_pool  # noqa: E402


class Squarer:
    def __init__(self, offset: int, threads: int) -> None:
        self.offset, self.threads, self.calls = offset, threads, 0

    def square(self, x: int) -> tuple[int, int]:
        self.calls += 1
        time.sleep(0.05)
        return x * x + self.offset, self.threads


class Process:
    def __init__(self, threads: int) -> None:
        self.threads = threads

    def pid(self) -> int:
        time.sleep(0.05)
        return os.getpid()


class Unready:
    def __init__(self, threads: int) -> None:
        raise UserError("the model is missing on this worker", "share the folder")

    def pid(self) -> int:
        return os.getpid()


def test_shards_depend_on_the_data_alone() -> None:
    assert shards(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert shards(0, 4) == []


def test_placement_splits_the_cores() -> None:
    assert Placement(2, 1, 0, cpus=2).reserve == 1.0
    assert Placement(1, 2, 0, cpus=2).reserve == 2.0
    assert Placement(4, 1, 0, cpus=2).reserve == 0.5  # more actors than cores still start
    assert Placement(2, 1, 0.5, cpus=8).reserve == 1.0


@pytest.mark.ray
@pytest.mark.usefixtures("ray_runtime")
def test_results_come_in_order_once_and_a_dead_actors_units_rerun() -> None:
    pool = start_pool(Squarer, ScaleOptions(workers=2), "cpu", [1000])
    try:
        assert {threads for _, threads in pool.run("square", [(1,), (2,)])} == {1}
        units = [(x,) for x in range(12)]
        results = []
        for index, (value, _) in enumerate(pool.run("square", units)):
            if index == 2:
                ray.kill(pool.actors[0])  # dies with units in flight
            results.append(value)
        assert results == [x * x + 1000 for x in range(12)]
        assert pool.retried >= 1
    finally:
        pool.close()


@pytest.mark.ray
@pytest.mark.usefixtures("ray_runtime")
def test_each_stage_reuses_the_processes_the_last_one_released() -> None:
    """Stages placed alike run on the same actor processes (no new Python process, torch import
    and model load per stage); a role that cannot start fails its stage with its own error, and
    the next stage on those hosts starts clean."""

    def stage(role: type, *args: int) -> set[int]:
        pool = start_pool(role, ScaleOptions(workers=2), "cpu", list(args))
        try:
            if role is Squarer:
                return {value for value, _ in pool.run("square", [(3,)] * 4)}
            return set(pool.run("pid", [()] * 6))
        finally:
            pool.close()

    first = stage(Process)
    assert stage(Squarer, 1) == {10}
    assert stage(Process) == first
    with pytest.raises(UserError, match="missing on this worker"):
        stage(Unready)
    assert stage(Process) == first
