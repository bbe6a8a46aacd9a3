"""Precision groups: what promoting one unit drags along under the target's rules.

A unit's *level* is 0 (the default int8 mode), 1 (its output carries the higher precision: Hailo's
`a8_w8_a16` producer mode, a 16-bit concat, or `a16_w8` where the target has it) or 2 (promoted:
the profile's `search.promote`: `a16_w16`; fp16 on TPU-MLIR; fp32 on `ort-cpu-fast`, where a
16-bit layer is a float op between DQ and Q anyway and fp32 is that float op without them);
-1 (`LOWER`) is below int8: 4-bit weights (`a8_w4`) on a layer where the profile allows them,
which changes nothing around it (its activations keep 8 bits).
The profile's rules become implications "unit a at level >= i needs unit b at level >= j":

- Hailo: a promoted layer reads 16-bit inputs, so each producer outputs 16 bits
  (`a8_w8_a16`); concat, feature splitter and shortcut (and pure data movement, which shares
  its input's quantization) output the precision they receive, so one 16-bit input makes the
  op and all of its other inputs 16-bit.
- TPU-MLIR: a float Conv drags the Scale op (Mul/Add) after it, and vice versa.
- QNN and ONNX Runtime: no implications; QNN pays a convert at every precision boundary
  instead (the cost model charges it).

The closure of a set of requests is the least state satisfying every implication (they are Horn
clauses, so it is unique and the union of closures is closed). The same implications are the
integer program's constraints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from quantlens.schemes.profiles import TargetProfile
from quantlens.search.units import Unit, producers

Var = tuple[str, int]  # (unit id, level): "unit is at this level or above"
State = dict[str, int]
LOWER = -1  # the level below the default: 4-bit weights
LOWER_MODE = "a8_w4"


@dataclass
class Rules:
    units: dict[str, Unit]
    levels: dict[str, tuple[int, ...]]
    modes: dict[str, dict[int, str]]  # unit -> level -> mode
    default_mode: str
    implies: dict[Var, list[Var]] = field(default_factory=dict)
    # (producer unit, consumer unit, tensor elements) for every edge between units.
    edges: list[tuple[str, str, int]] = field(default_factory=list)

    def at_least(self, unit: str, level: int) -> Var:
        """The variable meaning "unit at `level` or above": the unit's lowest level >= `level`."""
        return unit, min(lv for lv in self.levels[unit] if lv >= level)

    def up_levels(self, unit: str) -> tuple[int, ...]:
        return tuple(lv for lv in self.levels[unit] if lv > 0)

    def can_lower(self, unit: str) -> bool:
        return LOWER in self.levels[unit]

    def lowest(self) -> State:
        """Every unit that can go below int8, there: the cheapest state the rules allow."""
        return {u: LOWER for u in self.units if self.can_lower(u)}

    def closure(self, requests: Iterable[Var], state: Mapping[str, int] | None = None) -> State:
        result: State = dict(state or {})
        stack = [self.at_least(u, lv) for u, lv in requests]
        while stack:
            unit, level = stack.pop()
            if result.get(unit, 0) >= level:
                continue
            before = result.get(unit, 0)
            result[unit] = level
            for lv in self.levels[unit]:
                if before < lv <= level:
                    stack.extend(self.at_least(u, x) for u, x in self.implies.get((unit, lv), []))
        return result

    def node_modes(self, state: Mapping[str, int]) -> dict[str, str]:
        """node -> mode for every node not in the default mode."""
        found: dict[str, str] = {}
        for unit, level in state.items():
            if level != 0:
                mode = self.modes[unit][level]
                found.update(dict.fromkeys(self.units[unit].nodes, mode))
        return found

    def group(self, unit: str) -> State:
        """The closure of promoting `unit` alone from all-int8."""
        return self.closure([(unit, max(self.levels[unit]))])

    def lowered(self, state: Mapping[str, int]) -> list[str]:
        return [u for u, level in state.items() if level < 0]


def build_rules(
    units: Sequence[Unit],
    profile: TargetProfile,
    sizes: Mapping[str, int] | None = None,
    lower: bool = False,
) -> Rules:
    """`sizes`: tensor -> elements, for the edges' convert costs; `lower`: layers may also go
    below int8 (4-bit weights) where the profile allows it."""
    rules_data = profile.search
    by_id = {u.id: u for u in units}
    levels, modes = {}, {}
    for unit in units:
        levels[unit.id], modes[unit.id] = _levels(unit, profile, lower)
    rules = Rules(by_id, levels, modes, profile.default_mode)
    made_by = producers(units)
    for unit in units:
        for tensor in unit.inputs:
            source = made_by.get(tensor)
            if source is not None and source != unit.id:
                rules.edges.append((source, unit.id, (sizes or {}).get(tensor, 0)))
    if rules_data.output_mode is not None:
        _hailo_rules(rules, made_by)
    if rules_data.drag_after:
        _drag_rules(rules, made_by, set(rules_data.drag_after))
    return rules


def _levels(
    unit: Unit, profile: TargetProfile, lower: bool
) -> tuple[tuple[int, ...], dict[int, str]]:
    levels, modes = _up_levels(unit, profile, lower)
    if lower and unit.kind == "layer" and LOWER_MODE in profile.modes:
        return (LOWER, *levels), {LOWER: LOWER_MODE, **modes}
    return levels, modes


def _up_levels(
    unit: Unit, profile: TargetProfile, both_ways: bool
) -> tuple[tuple[int, ...], dict[int, str]]:
    promote, output = profile.search.promote, profile.search.output_mode
    if output is None:
        # Searching both ways, a16_w16 may come down to 16-bit activations with 8-bit weights
        # where the target runs them (ort-cpu, QNN). Under fp32 (ort-cpu-fast) a16_w8 would cost
        # more than fp32 and remove less noise, so it is no level there.
        wide = both_ways and "a16_w8" in profile.modes and promote == "a16_w16"
        if unit.kind == "layer" and wide:
            return (1, 2), {1: "a16_w8", 2: promote}
        return (2,), {2: promote}
    if unit.kind == "layer":
        return (1, 2), {1: output, 2: promote}
    # No weights: 16 bits out is all a promotion can change. Data-movement ops read and write
    # the same precision, which Hailo names a16_w16.
    return (1,), {1: promote if unit.kind == "passthrough" else output}


def _hailo_rules(rules: Rules, made_by: Mapping[str, str]) -> None:
    for unit in rules.units.values():
        sources = [made_by[t] for t in unit.inputs if t in made_by and made_by[t] != unit.id]
        if unit.kind == "node":
            continue  # 8 bits in, 16 out: its inputs stay as they are
        top = max(rules.levels[unit.id])
        for source in sources:
            rules.implies.setdefault((unit.id, top), []).append((source, 1))
            if unit.kind == "passthrough":
                rules.implies.setdefault((source, 1), []).append((unit.id, 1))


def _drag_rules(rules: Rules, made_by: Mapping[str, str], ops: set[str]) -> None:
    for unit in rules.units.values():
        if unit.op_type not in ops:
            continue
        sources = {made_by[t] for t in unit.inputs if t in made_by}
        layers = [s for s in sources if rules.units[s].kind == "layer"]
        if len(layers) == 1 and len(sources) == 1:
            rules.implies.setdefault((layers[0], 2), []).append((unit.id, 2))
            rules.implies.setdefault((unit.id, 2), []).append((layers[0], 2))
