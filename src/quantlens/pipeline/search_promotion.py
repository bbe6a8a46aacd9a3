"""The search's unit noise on a fixed all-int8 point: what promoting each unit removes there
(`search.promotion`), in the form the integer program reads (`UnitNoise` per unit)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from quantlens.artifacts import write_text_atomic
from quantlens.search.promotion import Gains, Variant, promotion_gains
from quantlens.search.sensitivity import UnitNoise

if TYPE_CHECKING:
    from quantlens.pipeline.search import Setup

Feed = dict[str, np.ndarray]
Tick = Callable[[int, int], None]
CACHE = "noise-promotion.json"


def promotion_noise(
    setup: Setup, feeds: Sequence[Feed], cache: Path, progress: Tick | None = None
) -> tuple[dict[str, UnitNoise], float]:
    """Each unit's noise as what its promotions remove from the fixed all-int8 point, and the
    point's noise that no single promotion accounts for (so the model predicts all-int8 as
    measured). A unit's activation noise is what its first level up (its output at 16 bits)
    removes; its weight noise what the top level removes beyond that. A promotion that adds
    noise (a layer whose fixed bias suited it better) counts as removing none."""
    path = cache / CACHE
    cached = _read(path, {u.id for u in setup.units})
    if cached is not None:
        return cached
    gains = _measure(setup, feeds, progress)
    found: dict[str, UnitNoise] = {}
    for unit in setup.units:
        ups = setup.rules.up_levels(unit.id)
        if not ups:
            found[unit.id] = UnitNoise()
            continue
        first = gains.gain(_key(unit.id, min(ups)))
        top = gains.gain(_key(unit.id, max(ups)))
        found[unit.id] = UnitNoise(weight=max(0.0, top - first), activation=first)
    total = sum(n.weight + n.activation for n in found.values())
    residual = max(0.0, gains.base_nsr - total)
    data = {"residual": residual, "units": {k: vars(v) for k, v in found.items()}}
    write_text_atomic(path, json.dumps(data))
    return found, residual


def _measure(setup: Setup, feeds: Sequence[Feed], progress: Tick | None) -> Gains:
    planner, rules, executor = setup.planner, setup.rules, setup.executor
    fixed = planner.fixed
    assert fixed is not None, "promotion noise is measured on a fixed all-int8 point"
    base = planner.plan_for({})  # also puts the fixed values into the executor
    held = {name: executor.weights[name].clone() for name in fixed.values}
    variants: list[Variant] = []
    try:
        for unit in setup.units:
            for level in rules.up_levels(unit.id):
                # On the fixed all-int8's values: a bias correction per variant would cost
                # one sweep each (candidates get theirs, `Planner._refit_values`).
                modes = rules.node_modes(rules.closure([(unit.id, level)]))
                plan = planner.plan_for(modes, refit=False)
                values = {
                    name: executor.weights[name].clone()
                    for name, before in held.items()
                    if not torch.equal(executor.weights[name], before)
                }
                variants.append(Variant(_key(unit.id, level), plan, values))
    finally:
        planner.plan_for({})  # the fixed values back where the base point runs on them

    def reference(feed: Feed) -> Mapping[str, torch.Tensor]:
        with fixed.unfixed(executor):
            return executor.run(feed)

    return promotion_gains(executor, base, variants, feeds, reference, progress)


def _key(unit: str, level: int) -> str:
    return f"{unit}@{level}"


def _read(path: Path, units: set[str]) -> tuple[dict[str, UnitNoise], float] | None:
    """A resumed search's measurement; a damaged or foreign one is measured again."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found = {str(k): UnitNoise(**v) for k, v in data["units"].items()}
        residual = float(data["residual"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return (found, residual) if set(found) == units else None
