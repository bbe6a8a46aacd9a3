"""The `measured` cost: ONNX Runtime latency of each candidate's QDQ export on this machine.

Every measurement times the candidate's export against the all-int8 export, interleaved (the
two sessions take turns on the same inputs, `quantlens.bench.latency`), after warm-up; the
candidate's cost is the median over the rounds of its time over all-int8's *in the same round*
(a load spike lands on both halves of a pair alike, so the paired ratio moves far less with
the load than the ratio of two medians), with a ~95% sign-test interval of that median; where
the interval is wide and holds 1.0, up to two more batches of rounds are timed and pooled. The
result is cached on disk by the candidate's key (the hash of its resolved per-node modes, as the
oracle's evaluations are), so a resumed search measures nothing twice.

For planning, `measured_costs` times each unit's own move (the unit alone promoted, or alone
on 4-bit weights) within a time budget, largest units first; the integer program and greedy
then plan with those per-unit costs (additive, as they assume). A move counts as measured only
where the timing says so robustly: its ratio is beyond the noise floor (all-int8 timed against
itself) and its interval lies wholly on that side of 1.0. That holds both ways: a move that
makes the model *faster* (on ONNX Runtime, a layer whose integer kernel is slower than its
float one, left float) gets a negative cost, and the strategies may take it for free. Other
moves keep the analytic estimate, as do units left unmeasured, scaled by what the measured moves
that agree in sign with their estimate showed (a scale is never negative: timing one unit does
not flip the estimates of the others).

Moves do not add up where neighbours meet: one layer left float between int8 layers pays a Q/DQ
on each side, two float neighbours pay none between them (pplcnet: the stem alone 0.92x
all-int8, the first depthwise conv alone ~0.97x, both 0.84x). With the budget left, neighbours
are timed together and the difference becomes a boundary cost (`CostTable.boundaries`, charged
where their precisions differ, as QNN's converts are), so the table reproduces all three timings.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir
from scipy.stats import binom

from quantlens.artifacts import write_text_atomic
from quantlens.bench.latency import LatencySettings, interleaved_times
from quantlens.export.qdq import export_qdq
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.cost import CostTable
from quantlens.search.groups import LOWER, Rules, State
from quantlens.search.oracle import modes_key

Feed = Mapping[str, np.ndarray]
PlanFor = Callable[[Mapping[str, str]], QuantPlan]
CONFIDENCE = 0.95  # of the sign-test interval around the median paired ratio
# A measurement whose interval is wider than this and still holds 1.0 gets more rounds (another
# batch of them, pooled), up to MAX_BATCHES: bursts of load from other processes widen it.
SETTLED_WIDTH = 0.1
MAX_BATCHES = 3


@dataclass(frozen=True)
class Measured:
    ms: float  # median over the rounds
    int8_ms: float
    # Median over the rounds of candidate / all-int8 within one round, and its sign-test
    # interval; None in entries cached before the rounds were kept, or with too few rounds.
    paired: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def ratio(self) -> float:
        if self.paired is not None:
            return self.paired
        return self.ms / self.int8_ms if self.int8_ms > 0 else 1.0

    def settled(self) -> bool:
        """The interval says which side of 1.0 the ratio is on, or is narrow: more rounds
        would not change what the table makes of it."""
        if self.low is None or self.high is None:
            return False
        return self.low > 1.0 or self.high < 1.0 or self.high - self.low <= SETTLED_WIDTH

    def robust_delta(self, floor: float) -> float | None:
        """ratio - 1 where it is beyond the noise floor and the rounds agree on its sign (the
        interval lies on one side of 1.0); else None. An entry without an interval (cached
        before rounds were kept) has only its ratio to go by."""
        delta = self.ratio - 1.0
        if abs(delta) <= floor:
            return None
        if self.low is None or self.high is None:
            return delta
        return delta if self.high < 1.0 or self.low > 1.0 else None


def paired_ratios(candidate: Sequence[float], base: Sequence[float]) -> Measured:
    """Medians, and the median of per-round ratios with its sign-test interval: the k-th
    smallest and k-th largest ratio, k the largest with P(Binomial(n, 1/2) < k) <= (1-C)/2."""
    ratios = sorted(c / b for c, b in zip(candidate, base) if b > 0)
    n = len(ratios)
    k = 0
    while k < n and binom.cdf(k, n, 0.5) <= (1.0 - CONFIDENCE) / 2:
        k += 1
    ms, int8_ms = statistics.median(candidate) * 1e3, statistics.median(base) * 1e3
    paired = round(statistics.median(ratios), 5) if ratios else None
    if k == 0:  # too few rounds for an interval at this confidence
        return Measured(round(ms, 4), round(int8_ms, 4), paired)
    low, high = round(ratios[k - 1], 5), round(ratios[n - k], 5)
    return Measured(round(ms, 4), round(int8_ms, 4), paired, low, high)


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
        candidate: list[float] = []
        int8: list[float] = []
        for _ in range(MAX_BATCHES):
            times = interleaved_times({"int8": base, "candidate": path}, self.feeds, self.settings)
            candidate += times["candidate"]
            int8 += times["int8"]
            found = paired_ratios(candidate, int8)
            if found.settled():
                break
        if path != base:
            path.unlink(missing_ok=True)
        payload = {
            "ms": found.ms,
            "int8_ms": found.int8_ms,
            "paired": found.paired,
            "low": found.low,
            "high": found.high,
            "rounds": len(candidate),
            "modes": dict(sorted(modes.items())),
        }
        write_text_atomic(self.folder / f"latency-{key}.json", json.dumps(payload))
        self.computed += 1
        return found

    def noise_floor(self) -> float:
        """|paired ratio - 1| of all-int8 timed against itself: a systematic difference between
        two identical sessions (which one runs first, where its memory lies) that a move must
        exceed. Cached like the measurements, so a resumed search plans with the same table."""
        path = self.folder / "noise-floor.json"
        try:
            return float(json.loads(path.read_text())["floor"])
        except (OSError, ValueError, KeyError):
            pass  # not measured yet, or torn
        base = self._export({}, "int8")
        times = interleaved_times({"a": base, "b": base}, self.feeds, self.settings)
        floor = abs(paired_ratios(times["a"], times["b"]).ratio - 1.0)
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
            optional = [data.get(k) for k in ("paired", "low", "high")]
            paired, low, high = (None if v is None else float(v) for v in optional)
            return Measured(float(data["ms"]), float(data["int8_ms"]), paired, low, high)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a torn entry is measured again


@dataclass
class MeasuredTable:
    table: CostTable
    measured: list[str]  # units whose moves were timed robustly
    scale: float  # measured / analytic delta, applied to the others
    noise_floor: float
    faster: list[str]  # units with a move that measured faster than all-int8
    # (producer, consumer, cost): the precision boundaries found by timing both units together
    boundaries: list[tuple[str, str, float]] = field(default_factory=list)


def measured_costs(
    rules: Rules, analytic: CostTable, meter: LatencyMeter, budget_s: float
) -> MeasuredTable:
    """Per-unit costs relative to all-int8 (total 1.0): each unit's move timed alone, largest
    units first, then (with the budget left) neighbouring units promoted together, largest
    tensors between them first, until `budget_s` is spent."""
    deadline = time.monotonic() + budget_s
    floor = meter.noise_floor()
    share = {u: c[0] / analytic.total_int8 for u, c in analytic.unit.items()}
    delta: dict[str, dict[int, float]] = {}
    raw: dict[str, float] = {}  # unit -> its top level's ratio - 1, robust or not
    ratios = []
    for unit in sorted(rules.units, key=lambda u: -analytic.unit[u][0]):
        if time.monotonic() > deadline:
            break
        delta[unit] = {}
        for level in rules.levels[unit]:
            state: State = {unit: LOWER} if level == LOWER else rules.closure([(unit, level)])
            found = meter.measure(rules.node_modes(state))
            if level == max(rules.levels[unit]):
                raw[unit] = found.ratio - 1.0
            measured = found.robust_delta(floor)
            if measured is None:
                continue  # the rounds disagree, or within the floor: the estimate stands
            delta[unit][level] = measured
            modeled = analytic.relative(state) - 1.0
            if measured * modeled > 0:  # the estimate had the sign right: how far off was it
                ratios.append(measured / modeled)
    boundaries = _boundaries(rules, meter, raw, floor, deadline)
    for a, b, _ in boundaries:  # a pair timed robustly: both units' own times count
        for unit in (a, b):
            delta[unit][max(rules.levels[unit])] = raw[unit]
    scale = statistics.median(ratios) if ratios else 1.0
    # Only timed boundaries: a unit's own timing already paid the analytic ones (QNN converts).
    table = CostTable("measured", {}, list(boundaries), 1.0)
    for unit, costs in analytic.unit.items():
        table.unit[unit] = {0: share[unit]}
        for level in rules.levels[unit]:
            modeled = (costs[level] - costs[0]) / analytic.total_int8
            table.unit[unit][level] = share[unit] + delta.get(unit, {}).get(level, modeled * scale)
    # A unit's single move was timed with all its boundaries paid: its own cost is the rest.
    for a, b, price in boundaries:
        for unit in (a, b):
            table.unit[unit][max(rules.levels[unit])] -= price
    measured_units = [u for u, levels in delta.items() if levels]
    faster = [u for u, levels in delta.items() if any(d < 0 for d in levels.values())]
    return MeasuredTable(table, measured_units, scale, floor, faster, boundaries)


def _boundaries(
    rules: Rules, meter: LatencyMeter, raw: Mapping[str, float], floor: float, deadline: float
) -> list[tuple[str, str, float]]:
    """Precision boundaries priced by timing: promoting neighbours A and B together removes the
    Q/DQ between them (on ONNX Runtime, a float layer next to an int8 one pays a DequantizeLinear
    or QuantizeLinear, and two float layers side by side may fuse), so one unit's move alone pays
    a boundary that the pair does not: price = (dA + dB - dAB) / 2. Kept where the pair's timing
    is robust and the price beyond the noise floor. Only where each unit has one level above
    int8, so that "the precisions differ" means one thing."""
    if any(len(rules.up_levels(u)) > 1 for u in rules.units):
        return []
    sizes: dict[tuple[str, str], int] = {}
    for a, b, elements in rules.edges:
        if a in raw and b in raw:
            sizes[(a, b)] = sizes.get((a, b), 0) + elements
    found = []
    for (a, b), _ in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if time.monotonic() > deadline:
            break
        state = rules.closure([(a, max(rules.levels[a])), (b, max(rules.levels[b]))])
        if state == rules.group(a) or state == rules.group(b):
            continue  # the rules promote them together anyway: no boundary between them
        pair = meter.measure(rules.node_modes(state))
        price = (raw[a] + raw[b] - (pair.ratio - 1.0)) / 2
        if pair.robust_delta(floor) is not None and price > floor:
            found.append((a, b, price))
    return found
