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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from quantlens.errors import UserError
from quantlens.search.cost import CostTable
from quantlens.search.groups import Rules, State, Var
from quantlens.search.sensitivity import UnitNoise

STRATEGIES = ("milp", "greedy", "tpu-mlir")  # the built-in ones, in the order help lists them
Row = tuple[dict[int, float], float, float]  # coefficients, lower and upper bound
BUDGETS = (1.0, 1.005, 1.01, 1.02, 1.03, 1.05, 1.075, 1.1, 1.15, 1.2, 1.3, 1.5, 2.0, 3.0, 5.0)


@dataclass
class Candidate:
    state: State
    label: str
    strategy: str
    promoted: list[str]
    predicted_nsr: float
    cost: float


@dataclass
class NoiseModel:
    noise: Mapping[str, UnitNoise]
    rules: Rules

    def activation_level(self, unit: str) -> int:
        return min(self.rules.levels[unit])

    def unit_nsr(self, unit: str, level: int) -> float:
        n = self.noise.get(unit)
        if n is None:
            return 0.0
        weight = n.weight if level < 2 else 0.0
        activation = n.activation if level < self.activation_level(unit) else 0.0
        return weight + activation

    def nsr(self, state: Mapping[str, int]) -> float:
        return sum(self.unit_nsr(u, state.get(u, 0)) for u in self.rules.units)


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
    state: State = {}
    chain: list[Candidate] = []
    requests = [(u, lv) for u in rules.units for lv in rules.levels[u]]
    for _ in range(steps):
        best = _best_step(rules, costs, model, state, requests)
        if best is None:
            break
        state = best
        cost = costs.relative(state)
        if cost > max_cost:
            break
        label = f"greedy {len(chain) + 1}"
        chain.append(
            Candidate(dict(state), label, "greedy", _promoted(state), model.nsr(state), cost)
        )
    return chain


def _best_step(
    rules: Rules, costs: CostTable, model: NoiseModel, state: State, requests: Sequence[Var]
) -> State | None:
    best, best_score = None, 0.0
    for unit, level in requests:
        if state.get(unit, 0) >= level:
            continue
        after = rules.closure([(unit, level)], state)
        changed = [u for u in after if after[u] != state.get(u, 0)]
        gain = sum(
            model.unit_nsr(u, state.get(u, 0)) - model.unit_nsr(u, after[u]) for u in changed
        )
        if gain <= 0:
            continue
        added = sum(costs.unit[u][after[u]] - costs.unit[u][state.get(u, 0)] for u in changed)
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
    for budget in [b for b in BUDGETS if b <= max_cost] + ([max_cost] if max_cost < 1e9 else []):
        state = program.solve(budget)
        if state is None:
            continue
        signature = tuple(sorted(state.items()))
        if signature not in found:
            label = f"milp <={budget:g}x"
            cost = costs.relative(state)
            found[signature] = Candidate(
                state, label, "milp", _promoted(state), model.nsr(state), cost
            )
    return sorted(found.values(), key=lambda c: c.cost)


class _Program:
    """Binary y[unit, level] ("at this level or above"), plus one b per precision boundary."""

    def __init__(self, rules: Rules, costs: CostTable, model: NoiseModel) -> None:
        self.rules, self.costs = rules, costs
        self.vars = [(u, lv) for u in rules.units for lv in rules.levels[u]]
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
        for level in self.rules.levels[unit]:
            i = self.index[(unit, level)]
            self.noise[i] = model.unit_nsr(unit, previous) - model.unit_nsr(unit, level)
            self.cost[i] = self.costs.unit[unit][level] - self.costs.unit[unit][previous]
            previous = level

    def _structure(self) -> list[Row]:
        """(coefficients, low, high) rows: level order, implications, boundaries."""
        rows: list[Row] = []
        for unit in self.rules.units:
            levels = self.rules.levels[unit]
            for low, high in itertools.pairwise(levels):
                rows.append(({self.index[(unit, high)]: 1, self.index[(unit, low)]: -1}, -1, 0))
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
        for (unit, level), value in zip(self.vars, result.x):
            if value > 0.5:
                state[unit] = max(state.get(unit, 0), level)
        return self.rules.closure(state.items())
