"""Strategies and cost models register by name: adding one is one module, no edits elsewhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quantlens.errors import UserError
from quantlens.search import cost, strategies
from quantlens.search.cost import CostModel, analytic_costs, get_cost_model, register_cost_model
from quantlens.search.strategies import get_strategy, greedy_chain, register_strategy


@pytest.fixture
def clean_registries() -> Iterator[None]:
    saved = dict(strategies._REGISTRY), dict(cost._REGISTRY)
    yield
    strategies._REGISTRY.clear()
    strategies._REGISTRY.update(saved[0])
    cost._REGISTRY.clear()
    cost._REGISTRY.update(saved[1])


def test_built_in_strategies_and_cost_models_are_registered() -> None:
    assert strategies.strategy_names() == ["milp", "greedy", "tpu-mlir"]
    assert get_strategy("greedy") is greedy_chain
    assert cost.cost_model_names() == ["analytic", "measured", "imported", "weight-bytes"]
    assert get_cost_model("measured").measures_candidates


@pytest.mark.usefixtures("clean_registries")
def test_a_new_strategy_and_cost_model_are_found_by_name() -> None:
    @register_strategy("nothing")
    def nothing(rules, costs, model, max_cost):  # type: ignore[no-untyped-def]
        return []

    register_cost_model(CostModel("flat", lambda rules, profile, _: analytic_costs(rules, profile)))
    assert get_strategy("nothing") is nothing and "nothing" in strategies.strategy_names()
    assert get_cost_model("flat").name == "flat"


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(UserError, match="use one of milp, greedy, tpu-mlir"):
        get_strategy("annealing")
    with pytest.raises(UserError, match="use one of analytic, measured, imported, weight-bytes"):
        get_cost_model("guess")
