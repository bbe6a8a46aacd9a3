"""The `measured` cost: ONNX Runtime latency of each candidate's QDQ export on this machine.

Every measurement times the candidate's export against the all-int8 export, interleaved (the
two sessions take turns on the same inputs, `quantlens.bench.latency`), after warm-up, as the
median of rounds; the result is cached on disk by the candidate's key (the hash of its
resolved per-node modes, as the oracle's evaluations are), so a resumed search measures
nothing twice. The ratio to all-int8 is the candidate's cost.

For planning, `measured_costs` times each unit's own move (the unit alone promoted, or alone
on 4-bit weights) within a time budget, largest units first; the integer program and greedy
then plan with those per-unit costs (additive, as they assume). A move whose measured change is
within the noise floor (all-int8 timed against itself) says nothing: it keeps the analytic
estimate, as do units left unmeasured, scaled by what the moves above the floor showed.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from quantlens.artifacts import write_text_atomic
from quantlens.bench.latency import LatencySettings, interleaved_latency
from quantlens.export.qdq import export_qdq
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.cost import CostTable
from quantlens.search.groups import LOWER, Rules, State
from quantlens.search.oracle import modes_key

Feed = Mapping[str, np.ndarray]
PlanFor = Callable[[Mapping[str, str]], QuantPlan]


@dataclass(frozen=True)
class Measured:
    ms: float
    int8_ms: float

    @property
    def ratio(self) -> float:
        return self.ms / self.int8_ms if self.int8_ms > 0 else 1.0


class LatencyMeter:
    """Times candidates' exports against the all-int8 export, cached in `folder`."""

    def __init__(
        self,
        model: ir.Model,
        plan_for: PlanFor,
        feeds: Sequence[Feed],
        folder: Path,
        settings: LatencySettings | None = None,
    ) -> None:
        self.model, self.plan_for, self.feeds = model, plan_for, list(feeds)
        self.folder = folder
        self.settings = settings or LatencySettings(rounds=15, warmup=3)
        self.computed = 0
        folder.mkdir(parents=True, exist_ok=True)

    def measure(self, modes: Mapping[str, str]) -> Measured:
        key = modes_key(modes)
        cached = self._read(key)
        if cached is not None:
            return cached
        base = self._export({}, "int8")
        path = self._export(modes, key)
        times = interleaved_latency({"int8": base, "candidate": path}, self.feeds, self.settings)
        if path != base:
            path.unlink(missing_ok=True)
        found = Measured(round(times["candidate"] * 1e3, 4), round(times["int8"] * 1e3, 4))
        payload = {"ms": found.ms, "int8_ms": found.int8_ms, "modes": dict(sorted(modes.items()))}
        write_text_atomic(self.folder / f"latency-{key}.json", json.dumps(payload))
        self.computed += 1
        return found

    def noise_floor(self) -> float:
        """|ratio - 1| of all-int8 timed against itself: differences below it are noise.
        Cached like the measurements, so a resumed search plans with the same table."""
        path = self.folder / "noise-floor.json"
        try:
            return float(json.loads(path.read_text())["floor"])
        except (OSError, ValueError, KeyError):
            pass  # not measured yet, or torn
        base = self._export({}, "int8")
        times = interleaved_latency({"a": base, "b": base}, self.feeds, self.settings)
        floor = abs(times["a"] / times["b"] - 1.0)
        write_text_atomic(path, json.dumps({"floor": floor}))
        return floor

    def _export(self, modes: Mapping[str, str], name: str) -> Path:
        path = self.folder / f"{'int8' if not modes else name}.qdq.onnx"
        if not path.is_file():
            export_qdq(self.model, self.plan_for(modes), path)
        return path

    def _read(self, key: str) -> Measured | None:
        path = self.folder / f"latency-{key}.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return Measured(float(data["ms"]), float(data["int8_ms"]))
        except (OSError, ValueError, KeyError):
            return None  # a torn entry is measured again


@dataclass
class MeasuredTable:
    table: CostTable
    measured: list[str]  # units whose moves were timed
    scale: float  # measured / analytic delta, applied to the others
    noise_floor: float


def measured_costs(
    rules: Rules, analytic: CostTable, meter: LatencyMeter, budget_s: float
) -> MeasuredTable:
    """Per-unit costs relative to all-int8 (total 1.0): each unit's move timed alone, largest
    units first, until `budget_s` is spent."""
    start = time.monotonic()
    floor = meter.noise_floor()
    share = {u: c[0] / analytic.total_int8 for u, c in analytic.unit.items()}
    delta: dict[str, dict[int, float]] = {}
    ratios = []
    for unit in sorted(rules.units, key=lambda u: -analytic.unit[u][0]):
        if time.monotonic() - start > budget_s:
            break
        delta[unit] = {}
        for level in rules.levels[unit]:
            state: State = {unit: LOWER} if level == LOWER else rules.closure([(unit, level)])
            measured = meter.measure(rules.node_modes(state)).ratio - 1.0
            if abs(measured) <= floor:
                continue  # noise: the analytic estimate stands
            delta[unit][level] = measured
            modeled = analytic.relative(state) - 1.0
            if abs(modeled) > 1e-9:
                ratios.append(measured / modeled)
    # Timing can scale the estimates, never flip their sign.
    scale = max(statistics.median(ratios), 0.0) if ratios else 1.0
    table = CostTable("measured", {}, [], 1.0)
    for unit, costs in analytic.unit.items():
        table.unit[unit] = {0: share[unit]}
        for level in rules.levels[unit]:
            modeled = (costs[level] - costs[0]) / analytic.total_int8
            table.unit[unit][level] = share[unit] + delta.get(unit, {}).get(level, modeled * scale)
    measured_units = [u for u, levels in delta.items() if levels]
    return MeasuredTable(table, measured_units, scale, floor)
