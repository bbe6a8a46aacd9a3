"""Issue #21: on ONNX Runtime a promotion can make the model faster. `ort-cpu-fast` promotes a
unit to fp32 (the float op without Q/DQ, exact), and a per-unit move timed robustly faster than
all-int8 (every round of the interval below 1.0, beyond the noise floor) keeps its negative cost,
so MILP and greedy can pick a point both more accurate and cheaper than int8."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx_ir as ir
import pytest

from quantlens.bench.latency import LatencySettings
from quantlens.emulate.executor import Executor
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.cost import analytic_costs
from quantlens.search.groups import build_rules
from quantlens.search.latency import LatencyMeter, Measured, measured_costs, paired_ratios
from quantlens.search.sensitivity import UnitNoise
from quantlens.search.strategies import NoiseModel, greedy_chain, milp_front
from tests.export.test_qdq_export import min_max_plan, small_cnn
from tests.search.test_search import _chain_units

NOISE = {f"u{i}": UnitNoise(0.01 * (i + 1), 0.005) for i in range(4)}


def test_ort_cpu_fast_promotes_to_fp32_with_no_noise_left() -> None:
    profile = get_profile("ort-cpu-fast")
    rules = build_rules(_chain_units(3, [100, 100, 100]), profile)
    assert rules.levels["u1"] == (2,) and rules.modes["u1"] == {2: "fp32"}
    assert rules.group("u1") == {"u1": 2}  # no propagation rule on ONNX Runtime
    assert rules.node_modes({"u1": 2}) == {"u1": "fp32"}
    assert NoiseModel(NOISE, rules).unit_nsr("u1", 2) == 0.0
    # fp32 is modeled cheaper than a16_w16 (no 16-bit Q/DQ, neighbours keep their fusion).
    assert profile.cost["fp32"].factor < profile.cost["a16_w16"].factor
    costs = analytic_costs(rules, profile)
    assert costs.relative({"u1": 2}) == pytest.approx(1 + (1.4 - 1) / 3)
    # ort-cpu keeps a16_w16: int8 there is float kernels on dequantized inputs already.
    assert build_rules(_chain_units(1, [1]), get_profile("ort-cpu")).modes["u0"] == {2: "a16_w16"}


def test_paired_ratios_interval_and_robust_sign() -> None:
    base = [0.010] * 15
    faster = paired_ratios([0.009 + 0.0001 * (i % 3) for i in range(15)], base)
    assert faster.paired is not None and faster.high is not None and faster.high < 1.0
    assert faster.robust_delta(0.01) == pytest.approx(faster.ratio - 1.0) and faster.ratio < 1
    # Half the rounds faster, half slower: the interval straddles 1.0, the sign is unknown.
    mixed = paired_ratios([0.008 if i % 2 else 0.0125 for i in range(15)], base)
    assert mixed.low is not None and mixed.low < 1.0 < (mixed.high or 0)
    assert mixed.robust_delta(0.0) is None
    # Consistent but within the floor: noise.
    assert faster.robust_delta(0.2) is None
    # pplcnet's stem in fp32 (30 rounds at load 6-7): 8% faster, the interval's top end inside
    # the 1.5% floor but below 1.0: the rounds agree, and the median is beyond the floor.
    stem = Measured(2.67, 2.96, 0.91947, 0.89665, 0.99351)
    assert stem.robust_delta(0.01482) == pytest.approx(-0.08053)
    assert Measured(2.9, 2.96, 0.99, 0.97, 0.995).robust_delta(0.015) is None  # within floor
    # Five rounds are too few for a 95% sign-test interval.
    assert paired_ratios([0.009] * 5, [0.01] * 5).low is None


class _FasterMeter(LatencyMeter):
    """u1 in fp32 robustly 10% faster than all-int8 (its int8 kernel is the slow one, like
    pplcnet's 3-channel stem), u2 5% slower, u0 and u3 50% slower, additively; any set with u3
    has rounds that disagree (the interval straddles 1.0)."""

    DELTA: ClassVar[dict[str, float]] = {"u0": 0.5, "u1": -0.1, "u2": 0.05, "u3": 0.5}

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    def measure(self, modes: Mapping[str, str]) -> Measured:
        self.calls.append(dict(modes))
        ratio = 1.0 + sum(self.DELTA[u] for u in modes)
        if "u3" in modes:
            return Measured(10 * ratio, 10.0, ratio, 0.95, ratio + 0.6)
        return Measured(10 * ratio, 10.0, ratio, ratio - 0.02, ratio + 0.02)

    def noise_floor(self) -> float:
        return 0.01


def _measured() -> tuple:
    profile = get_profile("ort-cpu-fast")
    rules = build_rules(_chain_units(4, [100, 100, 100, 100]), profile)
    analytic = analytic_costs(rules, profile)
    found = measured_costs(rules, analytic, _FasterMeter(), budget_s=60.0)
    return rules, analytic, found


def test_a_faster_promotion_keeps_its_negative_cost() -> None:
    _, analytic, found = _measured()
    assert analytic.relative({"u1": 2}) > 1.0  # the estimate says slower
    assert found.table.relative({"u1": 2}) == pytest.approx(0.9)  # the timing says faster
    assert found.faster == ["u1"]
    assert sorted(found.measured) == ["u0", "u1", "u2"]  # u3's rounds disagree
    # The scale comes from the moves whose estimate had the sign right (u0, u2), and stays
    # positive: u3 keeps a slower-than-int8 estimate.
    assert found.scale > 0 and found.table.relative({"u3": 2}) > 1.0


def test_milp_and_greedy_pick_the_faster_promotion() -> None:
    rules, _, found = _measured()
    model = NoiseModel(NOISE, rules)
    front = milp_front(rules, found.table, model, max_cost=math.inf)
    cheapest = front[0]
    assert cheapest.promoted == ["u1"] and cheapest.cost == pytest.approx(0.9)
    assert cheapest.predicted_nsr < model.nsr({})  # more accurate and faster than all-int8
    # Within int8's cost the saving pays for u2 as well.
    both = [c for c in front if set(c.promoted) == {"u1", "u2"}]
    assert both and both[0].cost == pytest.approx(0.95)
    chain = greedy_chain(rules, found.table, model, max_cost=math.inf)
    assert chain[0].promoted == ["u1"] and chain[0].cost == pytest.approx(0.9)


def test_meter_keeps_the_rounds_interval(tmp_path: Path) -> None:
    """Timed in ONNX Runtime for real (a conv left in fp32 against all-int8): the paired ratio
    and its interval go to the cache, and a second meter reads them back without timing."""
    model, _ = canonicalize(ir.serde.deserialize_model(small_cnn()), CanonicalizeOptions())
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(2)]
    executor = Executor(model)

    def plan_for(modes: Mapping[str, str]) -> QuantPlan:
        return min_max_plan(model, executor, feeds, "ort-cpu-fast", dict(modes))

    settings = LatencySettings(rounds=8, warmup=1)
    meter = LatencyMeter(model, plan_for, feeds, tmp_path / "latency", settings)
    first = meter.measure({"conv1": "fp32"})
    assert first.paired is not None and first.low is not None and first.high is not None
    assert first.low <= first.ratio <= first.high and first.ms > 0
    again = LatencyMeter(model, plan_for, feeds, tmp_path / "latency", settings)
    assert again.measure({"conv1": "fp32"}) == first and again.computed == 0


def test_a_wide_interval_gets_more_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bursts of load widen the first batch's interval across 1.0: the meter times another
    batch and pools the rounds; a narrow or one-sided batch is enough on its own."""
    batches = iter(
        [
            # Every third round disturbed on one side or the other: wide, holds 1.0.
            [0.02 if i % 3 == 0 else 0.009 for i in range(15)],
            [0.009] * 15,  # 10% faster in every round
            [0.009] * 15,
        ]
    )
    calls = []

    def fake_times(models: Mapping[str, Path], feeds: object, settings: object) -> dict:
        calls.append(models)
        return {"int8": [0.01] * 15, "candidate": next(batches)}

    monkeypatch.setattr("quantlens.search.latency.interleaved_times", fake_times)
    monkeypatch.setattr(LatencyMeter, "_export", lambda self, modes, name: tmp_path / name)
    meter = LatencyMeter(ir.Model(ir.Graph([], [], nodes=[]), ir_version=10), None, [], tmp_path)  # type: ignore[arg-type]
    found = meter.measure({"conv1": "fp32"})
    assert len(calls) == 2  # the first batch was not settled, the pooled two are
    assert found.high is not None and found.high < 1.0 and found.robust_delta(0.02) is not None
    saved = next(tmp_path.glob("latency-*.json")).read_text()
    assert '"rounds": 30' in saved


class _PairMeter(LatencyMeter):
    """pplcnet's stem: u0 alone in fp32 8% faster, u1 alone 3% faster but too noisy to tell,
    both together 16% faster (the Q/DQ between them goes too); every other move adds 5% per
    unit, additively."""

    def __init__(self) -> None:
        self.calls: list[frozenset[str]] = []

    def measure(self, modes: Mapping[str, str]) -> Measured:
        units = frozenset(modes)
        self.calls.append(units)
        if units == {"u0", "u1"}:
            return Measured(8.4, 10.0, 0.84, 0.82, 0.86)
        if units == {"u0"}:
            return Measured(9.2, 10.0, 0.92, 0.9, 0.95)
        if units == {"u1"}:
            return Measured(9.7, 10.0, 0.97, 0.8, 1.15)
        ratio = 1.0 + sum(-0.08 if u == "u0" else -0.03 if u == "u1" else 0.05 for u in units)
        return Measured(10 * ratio, 10.0, ratio, ratio - 0.02, ratio + 0.02)

    def noise_floor(self) -> float:
        return 0.01


def test_a_pair_timed_together_prices_the_boundary_between_them() -> None:
    profile = get_profile("ort-cpu-fast")
    rules = build_rules(_chain_units(4, [100] * 4), profile, sizes={f"t{i}": 10 for i in range(4)})
    meter = _PairMeter()
    found = measured_costs(rules, analytic_costs(rules, profile), meter, budget_s=60.0)
    assert [(a, b) for a, b, _ in found.boundaries] == [("u0", "u1")]  # the others add up
    assert found.boundaries[0][2] == pytest.approx((-0.08 - 0.03 + 0.16) / 2)
    table = found.table
    # The table reproduces all three timings: each unit alone, and the pair.
    assert table.relative({"u0": 2}) == pytest.approx(0.92)
    assert table.relative({"u1": 2}) == pytest.approx(0.97)
    assert table.relative({"u0": 2, "u1": 2}) == pytest.approx(0.84)
    assert table.relative({"u0": 2, "u1": 2, "u2": 2}) == pytest.approx(0.89)
    model = NoiseModel(NOISE, rules)
    front = milp_front(rules, table, model, max_cost=math.inf)
    assert set(front[0].promoted) == {"u0", "u1"} and front[0].cost == pytest.approx(0.84)
    # Greedy counts the boundary too: u0 after u1 saves the pair's time, not u0's own.
    before, after = {"u1": 2}, {"u0": 2, "u1": 2}
    change = table.change(before, after, ["u0"])
    assert change == pytest.approx(table.absolute(after) - table.absolute(before))
    assert change != pytest.approx(table.unit["u0"][2] - table.unit["u0"][0])
    chain = greedy_chain(rules, table, model, max_cost=math.inf)
    assert chain[0].promoted == ["u1"]  # both free; u1 removes more noise
    assert [c.cost for c in chain[:2]] == pytest.approx([0.97, 0.84])
    assert set(chain[1].promoted) == {"u0", "u1"}


def test_measured_table_leaves_analytic_boundaries_out() -> None:
    """On QNN the analytic table charges a convert per precision boundary (in MAC units); a
    unit's timing already paid it, so the measured table (relative to int8) holds only timed
    boundaries."""
    profile = get_profile("qnn-htp")
    rules = build_rules(_chain_units(4, [100] * 4), profile, sizes={f"t{i}": 50 for i in range(4)})
    analytic = analytic_costs(rules, profile)
    assert analytic.boundaries  # converts priced by the profile
    found = measured_costs(rules, analytic, _FasterMeter(), budget_s=60.0)
    assert found.table.boundaries == []
    assert found.table.relative({"u1": 2}) == pytest.approx(0.9)


def test_search_notes_name_the_faster_units() -> None:
    """search.json says which promotions made the model faster and how costs were timed."""
    from quantlens.bench.latency import LatencySettings
    from quantlens.pipeline.search import measured_notes

    _, _, found = _measured()
    notes = measured_notes(found, LatencySettings(rounds=15), 4)
    assert "15 interleaved rounds a batch, median of the per-round ratios" in notes[0]
    assert "measured moves of 3 of 4 units" in notes[1]
    assert "promoting these units made the model faster: u1" in notes
