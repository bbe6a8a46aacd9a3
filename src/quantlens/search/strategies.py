"""Search strategies: each proposes candidate states, cheapest first, for the oracle to verify.

All three share an additive noise model: the output noise-to-signal ratio of a state is the sum
of every unit's isolated weight noise (gone once the unit is promoted) and activation noise
(gone once its output carries the higher precision).

- `greedy`: repeatedly apply the promotion (closure included) with the most noise removed per
  unit of added cost.
- `milp`: for a sweep of cost budgets, the integer program (scipy's HiGHS) that minimises the
  modelled noise under the budget and the closure rules; its solutions form a Pareto front.
- `tpu-mlir`: the baseline TPU-MLIR's `search_qtable` follows: rank layers by their isolated
  loss alone, ignoring cost, and promote the top k (with their closures).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from quantlens.errors import UserError
from quantlens.search.cost import CostTable
from quantlens.search.groups import LOWER, Rules, State
from quantlens.search.sensitivity import UnitNoise

STRATEGIES = ("milp", "greedy", "tpu-mlir")  # the built-in ones, in the order help lists them
Row = tuple[dict[int, float], float, float]  # coefficients, lower and upper bound
BUDGETS = (1.0, 1.005, 1.01, 1.02, 1.03, 1.05, 1.075, 1.1, 1.15, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0)
# Below int8: used where units can go down (4-bit weights).
BUDGETS_BELOW = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)
MAX_CHAIN = 40  # greedy candidates kept (each one is verified)


@dataclass
class Candidate:
    state: State
    label: str
    strategy: str
    promoted: list[str]
    predicted_nsr: float
    cost: float
    lowered: list[str] = field(default_factory=list)


@dataclass
class NoiseModel:
    noise: Mapping[str, UnitNoise]
    rules: Rules
    # Noise of all-int8 that no unit's promotion removes (promotion-measured noise, where the
    # units' noise does not add up to the point's): in every state's prediction.
    residual: float = 0.0
    # Added to the labels of the candidates planned on this model ("" for the isolated noise).
    label: str = ""

    def activation_level(self, unit: str) -> int:
        return min(self.rules.up_levels(unit))

    def unit_nsr(self, unit: str, level: int) -> float:
        n = self.noise.get(unit)
        if n is None:
            return 0.0
        if level == LOWER:
            weight = n.weight4 if n.weight4 is not None else n.weight
        else:
            weight = n.weight if level < 2 else 0.0
        activation = n.activation if level < self.activation_level(unit) else 0.0
        return weight + activation

    def nsr(self, state: Mapping[str, int]) -> float:
        return self.residual + sum(self.unit_nsr(u, state.get(u, 0)) for u in self.rules.units)


# A strategy: (rules, costs, noise model, cost budget) -> candidates, cheapest first.
Strategy = Callable[[Rules, CostTable, "NoiseModel", float], list["Candidate"]]
_REGISTRY: dict[str, Strategy] = {}
S = TypeVar("S", bound=Strategy)


def register_strategy(name: str) -> Callable[[S], S]:
    """Register a strategy under `name` (`quantlens search --strategy NAME`); a new strategy is
    one module that decorates its function with this."""

    def decorate(strategy: S) -> S:
        _REGISTRY[name] = strategy
        return strategy

    return decorate


def strategy_names() -> list[str]:
    return [*[n for n in STRATEGIES if n in _REGISTRY], *sorted(set(_REGISTRY) - set(STRATEGIES))]


def get_strategy(name: str) -> Strategy:
    if name not in _REGISTRY:
        raise UserError(f"unknown strategy {name!r}", f"use one of {', '.join(strategy_names())}")
    return _REGISTRY[name]


def _promoted(state: Mapping[str, int]) -> list[str]:
    return [u for u, level in state.items() if level > 0]


@register_strategy("greedy")
def greedy_chain(
    rules: Rules, costs: CostTable, model: NoiseModel, max_cost: float, steps: int = 80
) -> list[Candidate]:
    """From the cheapest state (every unit that can go below int8 there, else all-int8), take
    the move with the most noise removed per cost added until the budget is spent."""
    state: State = rules.lowest()
    chain: list[Candidate] = []
    if state and costs.relative(state) <= max_cost:
        chain.append(_candidate(rules, costs, model, state, "greedy 0 (lowest)", "greedy"))
    for _ in range(max(steps, 3 * len(rules.units))):
        best = _best_step(rules, costs, model, state)
        if best is None:
            break
        state = best
        if costs.relative(state) > max_cost:
            break
        chain.append(_candidate(rules, costs, model, state, f"greedy {len(chain) + 1}", "greedy"))
    return _thin(chain, MAX_CHAIN)


def _candidate(
    rules: Rules, costs: CostTable, model: NoiseModel, state: State, label: str, strategy: str
) -> Candidate:
    return Candidate(
        dict(state),
        label,
        strategy,
        _promoted(state),
        model.nsr(state),
        costs.relative(state),
        rules.lowered(state),
    )


def _thin(chain: list[Candidate], keep: int) -> list[Candidate]:
    """At most `keep` candidates, evenly along the chain, its first and last included."""
    if len(chain) <= keep:
        return chain
    picks = sorted({round(i * (len(chain) - 1) / (keep - 1)) for i in range(keep)})
    return [chain[i] for i in picks]


def _moves(rules: Rules, state: State) -> list[State]:
    """Every state one move up from `state`: a lowered unit back to int8, or a unit raised to
    one of its higher levels with the closure the rules drag along."""
    found = []
    for unit in rules.units:
        now = state.get(unit, 0)
        if now == LOWER:
            found.append({**state, unit: 0})
        for level in rules.up_levels(unit):
            if level > now:
                found.append(rules.closure([(unit, level)], state))
    return found


def _best_step(rules: Rules, costs: CostTable, model: NoiseModel, state: State) -> State | None:
    best, best_score = None, 0.0
    for after in _moves(rules, state):
        changed = [u for u in after if after[u] != state.get(u, 0)]
        gain = sum(
            model.unit_nsr(u, state.get(u, 0)) - model.unit_nsr(u, after[u]) for u in changed
        )
        if gain <= 0:
            continue
        added = costs.change(state, after, changed)
        score = gain / max(added / costs.total_int8, 1e-9)
        if score > best_score:
            best, best_score = after, score
    return best


@register_strategy("tpu-mlir")
def tpu_mlir_chain(
    rules: Rules, costs: CostTable, model: NoiseModel, max_cost: float
) -> list[Candidate]:
    ranked = sorted(rules.units, key=lambda u: model.unit_nsr(u, 0), reverse=True)
    ranked = [u for u in ranked if model.unit_nsr(u, 0) > 0]
    chain: list[Candidate] = []
    count = 1
    while count <= len(ranked):
        top = ranked[:count]
        state = rules.closure((u, max(rules.levels[u])) for u in top)
        cost = costs.relative(state)
        if cost > max_cost:
            break
        chain.append(
            Candidate(state, f"tpu-mlir top {count}", "tpu-mlir", top, model.nsr(state), cost)
        )
        count = count + 1 if count < 8 else int(count * 1.5)
    return chain


@register_strategy("milp")
def milp_front(
    rules: Rules, costs: CostTable, model: NoiseModel, max_cost: float
) -> list[Candidate]:
    program = _Program(rules, costs, model)
    found: dict[tuple[tuple[str, int], ...], Candidate] = {}
    # Below int8 where units can go down, or where a move saves time (a measured negative
    # cost: a layer ONNX Runtime runs faster in float), so the front holds the faster points.
    below = BUDGETS_BELOW if program.lower or program.saves() else ()
    budgets = [b for b in (*below, *BUDGETS) if b <= max_cost]
    for budget in budgets + ([max_cost] if max_cost < 1e9 else []):
        state = program.solve(budget)
        if state is None:
            continue
        signature = tuple(sorted(state.items()))
        if signature not in found:
            label = f"milp <={budget:g}x"
            found[signature] = _candidate(rules, costs, model, state, label, "milp")
    return sorted(found.values(), key=lambda c: c.cost)


class _Program:
    """Binary y[unit, level] ("at this level or above") for the levels above int8, z[unit]
    ("below int8": 4-bit weights) where the unit can go down, one b per precision boundary."""

    def __init__(self, rules: Rules, costs: CostTable, model: NoiseModel) -> None:
        self.rules, self.costs = rules, costs
        up = [(u, lv) for u in rules.units for lv in rules.up_levels(u)]
        self.lower = [u for u in rules.units if rules.can_lower(u)]
        self.vars = up + [(u, LOWER) for u in self.lower]
        self.index = {v: i for i, v in enumerate(self.vars)}
        self.size = len(self.vars) + len(costs.boundaries)
        self.noise = np.zeros(self.size)  # noise removed per variable
        self.cost = np.zeros(self.size)  # cost added per variable
        for unit in rules.units:
            self._unit_terms(unit, model)
        for k, (_, _, price) in enumerate(costs.boundaries):
            self.cost[len(self.vars) + k] = price
        self.rows = self._structure()

    def _unit_terms(self, unit: str, model: NoiseModel) -> None:
        previous = 0
        for level in self.rules.up_levels(unit):
            i = self.index[(unit, level)]
            self.noise[i] = model.unit_nsr(unit, previous) - model.unit_nsr(unit, level)
            self.cost[i] = self.costs.unit[unit][level] - self.costs.unit[unit][previous]
            previous = level
        if self.rules.can_lower(unit):
            i = self.index[(unit, LOWER)]  # removes negative noise: adds it
            self.noise[i] = model.unit_nsr(unit, 0) - model.unit_nsr(unit, LOWER)
            self.cost[i] = self.costs.unit[unit][LOWER] - self.costs.unit[unit][0]

    def saves(self) -> bool:
        """Whether some move makes the model cheaper than all-int8."""
        return bool((self.cost < 0).any())

    def _structure(self) -> list[Row]:
        """(coefficients, low, high) rows: level order, implications, boundaries."""
        rows: list[Row] = []
        for unit in self.rules.units:
            levels = self.rules.up_levels(unit)
            for low, high in itertools.pairwise(levels):
                rows.append(({self.index[(unit, high)]: 1, self.index[(unit, low)]: -1}, -1, 0))
            if self.rules.can_lower(unit):  # down and up exclude each other
                first = self.index[(unit, levels[0])]
                rows.append(({self.index[(unit, LOWER)]: 1, first: 1}, -np.inf, 1))
        for (unit, level), targets in self.rules.implies.items():
            a = self.index[self.rules.at_least(unit, level)]
            for target in targets:
                b = self.index[self.rules.at_least(*target)]
                if a != b:
                    rows.append(({a: 1, b: -1}, -1, 0))  # y_a <= y_b
        for k, (p, c, _) in enumerate(self.costs.boundaries):
            bk = len(self.vars) + k
            yp, yc = self.index[self.rules.at_least(p, 1)], self.index[self.rules.at_least(c, 1)]
            rows.append(({bk: 1, yp: -1, yc: 1}, 0, np.inf))  # b >= yp - yc
            rows.append(({bk: 1, yp: 1, yc: -1}, 0, np.inf))  # b >= yc - yp
        return rows

    def solve(self, budget: float) -> State | None:
        budget_row: Row = ({i: float(c) for i, c in enumerate(self.cost) if c}, -np.inf, 0.0)
        rows = [*self.rows, budget_row]
        matrix = lil_matrix((len(rows), self.size))
        low, high = np.empty(len(rows)), np.empty(len(rows))
        for r, (coefficients, lo, hi) in enumerate(rows):
            for column, value in coefficients.items():
                matrix[r, column] = value
            low[r], high[r] = lo, hi
        high[-1] = (budget - 1.0) * self.costs.total_int8
        # Remove the most noise; among equal noise, the cheaper state.
        objective = -self.noise + 1e-9 * self.cost / max(self.costs.total_int8, 1e-12)
        result = milp(
            objective,
            constraints=LinearConstraint(matrix.tocsr(), low, high),
            integrality=np.ones(self.size),
            bounds=Bounds(0, 1),
            options={"time_limit": 30},
        )
        if result.x is None:
            return None
        state: State = {}
        lowered = []
        for (unit, level), value in zip(self.vars, result.x):
            if value > 0.5 and level == LOWER:
                lowered.append(unit)
            elif value > 0.5:
                state[unit] = max(state.get(unit, 0), level)
        closed = self.rules.closure(state.items())
        return {**{u: LOWER for u in lowered if u not in closed}, **closed}
