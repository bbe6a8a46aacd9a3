"""Downward moves: 4-bit weights below int8 (and a16_w8 under a16_w16), with their own noise,
searched by MILP and greedy over the whole front; the weight-bytes cost; budgets below 1.0x."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from quantlens.artifacts.search import SearchReport
from quantlens.pipeline.flows import search_model
from quantlens.pipeline.search import SearchOptions
from quantlens.schemes.profiles import get_profile
from quantlens.search.cost import analytic_costs, weight_bytes
from quantlens.search.groups import LOWER, build_rules
from quantlens.search.latency import LatencyMeter, Measured, measured_costs
from quantlens.search.sensitivity import UnitNoise
from quantlens.search.strategies import NoiseModel, greedy_chain, milp_front
from tests.helpers import npz_folder
from tests.models import outlier_model
from tests.search.test_search import _chain_units

# u0/u1 do not care about 4-bit weights, u2 cares a lot, u3 is noisy at 8 bits already.
NOISE = {
    "u0": UnitNoise(0.001, 0.0, weight4=0.002),
    "u1": UnitNoise(0.001, 0.0, weight4=0.002),
    "u2": UnitNoise(0.002, 0.0, weight4=0.5),
    "u3": UnitNoise(0.05, 0.01, weight4=0.2),
}


def _setup(target: str, cost: str = "analytic") -> tuple:
    profile = get_profile(target)
    units = [replace(u, params=1000) for u in _chain_units(4, [100, 100, 100, 100])]
    rules = build_rules(units, profile, lower=True)
    table = (
        weight_bytes(rules, profile) if cost == "weight-bytes" else analytic_costs(rules, profile)
    )
    return rules, table, NoiseModel(NOISE, rules)


def test_levels_below_int8_and_a16_w8_where_the_profile_has_them() -> None:
    rules, _, _ = _setup("hailo8")
    assert rules.levels["u0"] == (LOWER, 1, 2)  # a8_w4, a8_w8_a16, a16_w16
    assert rules.modes["u0"][LOWER] == "a8_w4"
    ort, _, _ = _setup("ort-cpu")
    assert ort.modes["u0"] == {LOWER: "a8_w4", 1: "a16_w8", 2: "a16_w16"}
    up_only = build_rules(_chain_units(2, [1, 1]), get_profile("ort-cpu"))
    assert up_only.levels["u0"] == (2,)  # the default search only goes up, as before
    assert rules.node_modes({"u2": LOWER, "u3": 2}) == {"u2": "a8_w4", "u3": "a16_w16"}


def test_weight_bytes_halve_with_4bit_weights() -> None:
    _, costs, _ = _setup("hailo8", "weight-bytes")
    assert costs.relative({}) == 1.0
    assert costs.relative({"u0": LOWER}) == pytest.approx(1 - 0.5 / 4)
    assert costs.relative({"u3": 2}) == pytest.approx(1 + 1 / 4)


def test_milp_lowers_what_does_not_care_to_pay_for_what_does() -> None:
    rules, costs, model = _setup("hailo8", "weight-bytes")
    front = milp_front(rules, costs, model, max_cost=math.inf)
    assert front[0].cost < 1.0 and front[-1].cost > 1.0  # both sides of int8
    below = [c for c in front if c.cost <= 0.875 + 1e-9]
    assert below and set(below[-1].lowered) in ({"u0"}, {"u1"})
    assert all("u2" not in c.lowered for c in front if c.cost > 0.75)
    # At int8's cost, lowering two careless units pays for promoting the noisy one.
    same = next(c for c in front if c.label == "milp <=1x")
    assert set(same.lowered) == {"u0", "u1"} and "u3" in same.promoted
    assert same.predicted_nsr < model.nsr({})


def test_greedy_climbs_from_the_cheapest_state() -> None:
    rules, costs, model = _setup("hailo8", "weight-bytes")
    chain = greedy_chain(rules, costs, model, max_cost=math.inf)
    assert chain[0].label.startswith("greedy 0") and set(chain[0].lowered) == set(rules.units)
    assert chain[1].lowered == ["u0", "u1", "u3"]  # u2 back to 8 bits first: most noise per byte
    costs_along = [c.cost for c in chain]
    assert costs_along == sorted(costs_along) and costs_along[-1] > 1.0


def _search_below_int8(tmp_path: Path, max_cost: float) -> SearchReport:
    """The outlier model on hailo8 with weight-bytes costs, a budget below all-int8's."""
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), model)
    opts = SearchOptions(
        calib=npz_folder(tmp_path / "calib", 6),
        target="hailo8",
        run_dir=tmp_path / "run",
        max_cost=max_cost,
        cost_model="weight-bytes",
        min_snr=10.0,
        samples=2,
        export=False,
    )
    return search_model(model, opts)


def test_budget_below_int8_picks_a_cheaper_point(tmp_path: Path) -> None:
    report = _search_below_int8(tmp_path, 0.8)
    chosen = report.point(report.chosen)
    assert chosen is not None and chosen.cost <= 0.8 and chosen.lowered
    assert chosen.key != report.baseline
    assert any(p.cost < 1.0 for p in report.points) and any(p.cost > 1.0 for p in report.points)
    assert any("below all-int8" in note for note in report.notes)
    noise = next((tmp_path / "run" / "search-cache").glob("*/noise-w4.json"))
    assert noise.is_file()


def test_a_budget_below_the_cheapest_state_says_what_the_cheapest_costs(tmp_path: Path) -> None:
    report = _search_below_int8(tmp_path, 0.3)
    notes = [n for n in report.notes if n.startswith("no state fits the budget")]
    assert len(notes) == 1, report.notes
    cheapest = float(notes[0].rsplit(" ", 1)[1].rstrip("x"))
    assert 0.3 < cheapest < 1.0
    assert all(p.cost >= cheapest - 1e-9 for p in report.points)


class _FakeMeter(LatencyMeter):
    """Timings by modes: u3's promotion measurably slower, everything else within noise."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def measure(self, modes: Mapping[str, str]) -> Measured:
        self.calls.append(dict(modes))
        promoted = modes.get("u3") == "fp32"  # ort-cpu-fast promotes to fp32
        return Measured(150.0 if promoted else 101.0, 100.0)

    def noise_floor(self) -> float:
        return 0.05


def test_measured_table_keeps_estimates_within_the_noise_floor() -> None:
    profile = get_profile("ort-cpu-fast")
    rules = build_rules(_chain_units(4, [100, 100, 100, 100]), profile)
    analytic = analytic_costs(rules, profile)
    found = measured_costs(rules, analytic, _FakeMeter(), budget_s=60.0)
    assert found.measured == ["u3"] and found.noise_floor == 0.05
    assert found.table.relative({"u3": 2}) == pytest.approx(1.5)  # as timed
    # u0's 1% is noise: the analytic estimate stands, scaled by what u3 showed (never negative).
    modeled = analytic.relative({"u0": 2}) - 1.0
    assert found.table.relative({"u0": 2}) - 1.0 == pytest.approx(modeled * found.scale)
    assert found.scale > 0


def test_a_cheaper_point_below_int8_snr_is_still_a_choice(tmp_path: Path) -> None:
    """All-int8 meets a low SNR goal; a point with 4-bit weights is cheaper at a lower output
    SNR and still meets it: it is chosen (only dearer points must beat int8's SNR)."""
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), model)
    opts = SearchOptions(
        calib=npz_folder(tmp_path / "calib", 6),
        target="hailo8",
        run_dir=tmp_path / "run",
        cost_model="weight-bytes",
        min_snr=3.0,
        samples=2,
        export=False,
    )
    report = search_model(model, opts)
    base, chosen = report.point(report.baseline), report.point(report.chosen)
    assert base is not None and chosen is not None and (base.snr_db or 0) >= 3.0
    assert chosen.cost < 1.0 and chosen.lowered and (chosen.snr_db or 0) >= 3.0
    assert (chosen.snr_db or 0) < (base.snr_db or 0)
