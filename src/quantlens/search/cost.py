"""Cost models: what an assignment costs at run time, relative to all-int8.

- `analytic`: per unit, (MACs + element_cost x output elements) x the profile's factor for the
  mode (each factor in the profile JSON says where it comes from); on QNN also a convert per
  precision boundary (convert_factor x elements).
- `imported`: a per-layer time table from a vendor profiler (CSV: `layer,mode,time`), with the
  profile's factors for modes the table lacks.
- `weight-bytes`: the bytes the weights take (4-bit weights half of int8's, 16-bit twice, a float
  layer four times): model size, the cost that 4-bit weights buy down.
- `measured`: ONNX Runtime latency of exported QDQ models on this machine: each unit's move
  timed before planning (the table the strategies plan with) and every verified candidate timed
  against the all-int8 export (`quantlens.search.latency`).

Costs are linear in the unit levels, so the integer program can use them directly.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantlens.errors import UserError
from quantlens.schemes.modes import get_mode
from quantlens.schemes.profiles import TargetProfile
from quantlens.search.groups import Rules

COST_MODELS = ("analytic", "measured", "imported", "weight-bytes")  # the built-in ones


@dataclass(frozen=True)
class CostModel:
    """A way to cost assignments: the table the search plans with, and whether the chosen
    point's cost is then measured on its export (ONNX Runtime latency against all-int8)."""

    name: str
    table: Callable[[Rules, TargetProfile, Path | None], CostTable]
    measured_after_export: bool = False
    # Candidates (and units, for planning) are timed in ONNX Runtime (`search.latency`).
    measures_candidates: bool = False


_REGISTRY: dict[str, CostModel] = {}


def register_cost_model(model: CostModel) -> CostModel:
    """Register a cost model (`quantlens search --cost NAME`); a new one is one module that
    calls this."""
    _REGISTRY[model.name] = model
    return model


def cost_model_names() -> list[str]:
    return [*[n for n in COST_MODELS if n in _REGISTRY], *sorted(set(_REGISTRY) - set(COST_MODELS))]


def get_cost_model(name: str) -> CostModel:
    if name not in _REGISTRY:
        raise UserError(
            f"unknown cost model {name!r}", f"use one of {', '.join(cost_model_names())}"
        )
    return _REGISTRY[name]


@dataclass
class CostTable:
    """Absolute cost of every unit at every level, and of each precision boundary."""

    name: str
    unit: dict[str, dict[int, float]]  # unit -> level -> cost (level 0 included)
    # (producer, consumer, cost of a convert between them when their precisions differ)
    boundaries: list[tuple[str, str, float]]
    total_int8: float
    # unit -> the boundaries that touch it, built on first use by `change`
    _by_unit: dict[str, list[tuple[str, str, float]]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def absolute(self, state: Mapping[str, int]) -> float:
        total = sum(costs[state.get(u, 0)] for u, costs in self.unit.items())
        total += sum(c for a, b, c in self.boundaries if _level(state, a) != _level(state, b))
        return total

    def relative(self, state: Mapping[str, int]) -> float:
        return self.absolute(state) / self.total_int8 if self.total_int8 > 0 else 1.0

    def change(
        self, before: Mapping[str, int], after: Mapping[str, int], changed: Sequence[str]
    ) -> float:
        """absolute(after) - absolute(before) where only the `changed` units differ: their
        own costs and the boundaries that touch them."""
        moved = set(changed)
        total = sum(self.unit[u][after.get(u, 0)] - self.unit[u][before.get(u, 0)] for u in moved)
        for a, b, price in self._touching(moved):
            now = _level(after, a) != _level(after, b)
            was = _level(before, a) != _level(before, b)
            total += price * (int(now) - int(was))
        return total

    def _touching(self, units: set[str]) -> list[tuple[str, str, float]]:
        if not self.boundaries:
            return []
        if self._by_unit is None:
            self._by_unit = {}
            for edge in self.boundaries:
                for unit in set(edge[:2]):
                    self._by_unit.setdefault(unit, []).append(edge)
        edges = {id(e): e for u in units for e in self._by_unit.get(u, [])}
        return list(edges.values())


def _level(state: Mapping[str, int], unit: str) -> int:
    # A boundary exists between int8 and anything higher; 4-bit weights keep 8-bit activations.
    return max(0, min(state.get(unit, 0), 1))


def analytic_costs(rules: Rules, profile: TargetProfile) -> CostTable:
    element = profile.search.element_cost
    base = {u.id: u.macs + element * u.elements for u in rules.units.values()}
    return _table("analytic", rules, profile, base)


def weight_bytes(rules: Rules, profile: TargetProfile) -> CostTable:
    """Bytes of every unit's weights in each of its modes (activations are not counted)."""

    def size(unit: str, mode: str) -> float:
        return rules.units[unit].params * _bytes_per_weight(mode)

    unit = {
        u: {0: size(u, rules.default_mode)} | {lv: size(u, m) for lv, m in rules.modes[u].items()}
        for u in rules.units
    }
    total = sum(costs[0] for costs in unit.values())
    return CostTable("weight-bytes", unit, [], total)


def _bytes_per_weight(mode: str) -> float:
    found = get_mode(mode)
    if found.weight_bits is not None:
        return found.weight_bits / 8
    return 4.0 if found.float_type == "fp32" else 2.0


def imported_costs(rules: Rules, profile: TargetProfile, path: Path) -> CostTable:
    """Per-unit times from a CSV with columns layer, mode (optional), time."""
    times = read_time_table(path)
    known = set(times) & {node for u in rules.units.values() for node in u.nodes}
    if not known:
        raise UserError(
            f"no layer in {path} matches the model's layers",
            "use the layer ids `quantlens inspect` prints, in a 'layer' column",
        )
    base, table = {}, {}
    for unit in rules.units.values():
        rows = [times[n] for n in unit.nodes if n in times]
        merged: dict[str, float] = {}
        for row in rows:
            for mode, value in row.items():
                merged[mode] = merged.get(mode, 0.0) + value
        base[unit.id] = merged.get(profile.default_mode, 0.0)
        table[unit.id] = merged
    result = _table("imported", rules, profile, base)
    for name, costs in result.unit.items():
        for level, mode in rules.modes[name].items():
            if mode in table[name]:
                costs[level] = table[name][mode]
    return result


def read_time_table(path: Path) -> dict[str, dict[str, float]]:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read cost table {path}: {exc}", "pass a UTF-8 CSV file") from exc
    if not rows or "layer" not in rows[0] or "time" not in rows[0]:
        raise UserError(
            f"{path} needs the columns layer and time (and optionally mode)",
            "write one row per layer: layer,mode,time",
        )
    table: dict[str, dict[str, float]] = {}
    for number, row in enumerate(rows, start=2):
        try:
            value = float(row["time"])
        except ValueError as exc:
            raise UserError(
                f"{path}:{number}: time {row['time']!r} is not a number", "write it as a number"
            ) from exc
        table.setdefault(row["layer"], {})[row.get("mode") or "a8_w8"] = value
    return table


def _table(name: str, rules: Rules, profile: TargetProfile, base: Mapping[str, float]) -> CostTable:
    def factor(mode: str) -> float:
        found = profile.cost.get(mode)
        return found.factor if found is not None else 1.0

    unit = {
        u: {0: base[u] * factor(rules.default_mode)}
        | {lv: base[u] * factor(m) for lv, m in rules.modes[u].items()}
        for u in rules.units
    }
    convert = profile.search.convert_factor
    boundaries = [(a, b, convert * size) for a, b, size in rules.edges if convert > 0]
    total = sum(costs[0] for costs in unit.values())
    return CostTable(name, unit, boundaries, total)


def latency(path: Path, feeds: Sequence[dict[str, np.ndarray]], repeats: int = 20) -> float:
    """Median seconds per inference of an ONNX model in ONNX Runtime on this machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for feed in feeds[:2]:
        session.run(None, feed)  # warm-up: allocations and kernel selection
    times = []
    for index in range(repeats):
        feed = feeds[index % len(feeds)]
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _imported(rules: Rules, profile: TargetProfile, table: Path | None) -> CostTable:
    if table is None:
        raise UserError("the imported cost model needs a table", "pass --cost-table times.csv")
    return imported_costs(rules, profile, table)


register_cost_model(CostModel("analytic", lambda rules, profile, _: analytic_costs(rules, profile)))
register_cost_model(
    CostModel(
        "measured",
        lambda rules, profile, _: analytic_costs(rules, profile),
        measures_candidates=True,
    )
)
register_cost_model(CostModel("imported", _imported))
register_cost_model(
    CostModel("weight-bytes", lambda rules, profile, _: weight_bytes(rules, profile))
)
