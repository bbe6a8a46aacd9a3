"""`quantlens.search`: closures checked by hand, strategies and the oracle on known sensitivities,
resume after a kill, and the pipeline end to end with its QDQ export in ONNX Runtime."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantlens.analysis.metrics import OutputNoise
from quantlens.data.preprocess import InputSpec
from quantlens.errors import UserError
from quantlens.pipeline import flows
from quantlens.schemes.profiles import get_profile
from quantlens.search import oracle as oracle_module
from quantlens.search.cost import analytic_costs, imported_costs
from quantlens.search.groups import build_rules
from quantlens.search.oracle import BudgetExhausted, Evaluators, Oracle
from quantlens.search.sensitivity import UnitNoise
from quantlens.search.strategies import NoiseModel, greedy_chain, milp_front, tpu_mlir_chain
from quantlens.search.units import Unit
from quantlens.search_run import SearchOptions, explain, prepare_search, search_model
from tests.analysis.test_analysis import _npz_folder
from tests.models import branchy_model, outlier_model

F32 = np.float32


# x -> conv_a+relu -+
# x -> conv_b -------+ concat -> conv_c -> split -+ s1 -> conv_d -+
#                                                 + s2 -----------+ add -> conv_e -> y
@pytest.fixture(scope="module")
def branchy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search") / "branchy.onnx"
    onnx.save(branchy_model(), path)
    return path


def _group(path: Path, target: str, layer: str) -> dict[str, str]:
    setup = prepare_search(path, SearchOptions(calib=path, target=target), calibrated=False)
    return explain(setup, layer).modes


def test_hailo_closure_through_concat_split_and_add(branchy: Path) -> None:
    # conv_c reads the concat: the concat and both its producers follow; conv_c's 16-bit output
    # makes the split 16-bit, whose other output makes the add 16-bit, so conv_d writes 16 bits.
    assert _group(branchy, "hailo8", "conv_c") == {
        "conv_c": "a16_w16",
        "concat": "a16_w16",
        "conv_a": "a8_w8_a16",
        "relu_a": "a8_w8_a16",
        "conv_b": "a8_w8_a16",
        "split": "a16_w16",
        "add": "a16_w16",
        "conv_d": "a8_w8_a16",
    }
    assert _group(branchy, "hailo8", "conv_e") == {
        "conv_e": "a16_w16",
        "add": "a16_w16",
        "conv_d": "a8_w8_a16",
        "split": "a16_w16",
        "conv_c": "a8_w8_a16",
    }
    # conv_a reads the graph input (no producer); its 16-bit output drags the concat along.
    assert _group(branchy, "hailo8", "relu_a") == {
        "conv_a": "a16_w16",
        "relu_a": "a16_w16",
        "concat": "a16_w16",
        "conv_b": "a8_w8_a16",
    }


def test_no_propagation_on_onnxruntime(branchy: Path) -> None:
    assert _group(branchy, "ort-cpu", "conv_c") == {"conv_c": "a16_w16"}


def test_explain_unknown_layer_suggests_names(branchy: Path) -> None:
    setup = prepare_search(branchy, SearchOptions(calib=branchy), calibrated=False)
    with pytest.raises(UserError, match="conv_c"):
        explain(setup, "conv_cc")


# --- strategies on known sensitivities ----------------------------------------------------------


def _chain_units(count: int, macs: list[int]) -> list[Unit]:
    """A straight chain of weighted layers u0 -> u1 -> ..., no passthrough ops."""
    units = []
    for i in range(count):
        inputs = (f"t{i - 1}",) if i else ("x",)
        units.append(
            Unit(
                id=f"u{i}",
                op_type="Conv",
                kind="layer",
                nodes=(f"u{i}",),
                inputs=inputs,
                outputs=(f"t{i}",),
                weights=(f"w{i}",),
                activations=(f"t{i}",),
                cut=inputs,
                step=i,
                macs=macs[i],
                elements=0,
            )
        )
    return units


def _known(target: str = "ort-cpu") -> tuple:
    profile = get_profile(target)
    units = _chain_units(5, [100, 100, 1000, 100, 100])
    rules = build_rules(units, profile)
    costs = analytic_costs(rules, profile)
    noise = {
        "u0": UnitNoise(0.01, 0.0),
        "u1": UnitNoise(0.0, 0.002),
        "u2": UnitNoise(0.05, 0.05),  # the worst, and ten times as expensive
        "u3": UnitNoise(0.03, 0.0),
        "u4": UnitNoise(0.0001, 0.0),
    }
    return rules, costs, NoiseModel(noise, rules)


def test_milp_front_is_optimal_under_each_budget() -> None:
    rules, costs, model = _known()
    front = milp_front(rules, costs, model, max_cost=math.inf)
    # ort-cpu: a16_w16 costs 2.5x, so promoting a 100-MAC layer adds 150/1400 = 0.107.
    cheapest = front[0]
    assert cheapest.cost == pytest.approx(1.0)
    by_budget = {c.label: set(c.promoted) for c in front}
    assert by_budget["milp <=1.15x"] == {"u3"}  # one small layer: the noisiest one
    assert by_budget["milp <=1.3x"] == {"u3", "u0"}
    noises = [c.predicted_nsr for c in front]
    assert noises == sorted(noises, reverse=True)
    assert [c.cost for c in front] == sorted(c.cost for c in front)


def test_greedy_takes_gain_per_cost_and_tpu_mlir_ignores_cost() -> None:
    rules, costs, model = _known()
    greedy = greedy_chain(rules, costs, model, max_cost=math.inf)
    assert greedy[0].promoted == ["u3"]  # 0.03 per 0.107, better than u2's 0.10 per 1.07
    assert greedy[1].promoted == ["u3", "u0"]
    baseline = tpu_mlir_chain(rules, costs, model, max_cost=math.inf)
    assert baseline[0].promoted == ["u2"]  # the worst layer first, whatever it costs
    assert baseline[0].cost > greedy[1].cost


def test_qnn_pays_a_convert_at_each_boundary() -> None:
    profile = get_profile("qnn-htp")
    units = [
        Unit(**{**vars(u), "elements": 50})  # type: ignore[arg-type]
        for u in _chain_units(3, [100, 100, 100])
    ]
    rules = build_rules(units, profile, {f"t{i}": 50 for i in range(3)})
    costs = analytic_costs(rules, profile)
    middle, last = costs.relative({"u1": 2}), costs.relative({"u2": 2})
    # u1 in the middle has two int8 neighbours, u2 at the end one: one more convert.
    assert middle - last == pytest.approx(profile.search.convert_factor * 50 / costs.total_int8)


def test_imported_cost_table(tmp_path: Path) -> None:
    profile = get_profile("hailo8")
    rules = build_rules(_chain_units(2, [1, 1]), profile)
    table = tmp_path / "times.csv"
    table.write_text("layer,mode,time\nu0,a8_w8,2.0\nu1,a8_w8,6.0\nu1,a16_w16,9.0\n")
    costs = imported_costs(rules, profile, table)
    # u1 promoted makes u0 its 16-bit producer (a8_w8_a16: 1.5x of its measured 2.0).
    assert costs.relative(rules.group("u1")) == pytest.approx((2.0 * 1.5 + 9.0) / 8.0)
    table.write_text("layer,time\nnope,1\n")
    with pytest.raises(UserError, match="matches"):
        imported_costs(rules, profile, table)


# --- the oracle ---------------------------------------------------------------------------------


def test_oracle_caches_and_enforces_budgets(tmp_path: Path) -> None:
    calls: list[str] = []

    def proxy(modes: dict[str, str]) -> float:
        calls.append("proxy")
        return 40.0 - 10 * len(modes)

    def metric(modes: dict[str, str]) -> float:
        calls.append("metric")
        return 0.5 + 0.1 * len(modes)

    oracle = Oracle(tmp_path, Evaluators(proxy, metric), max_full=2)
    assert oracle.snr({"a": "a16_w16"}) == 30.0
    assert oracle.snr({"a": "a16_w16"}) == 30.0
    assert oracle.metric({}) == 0.5
    assert oracle.metric({"a": "a16_w16"}) == pytest.approx(0.6)
    assert calls == ["proxy", "metric", "metric"]
    with pytest.raises(BudgetExhausted):
        oracle.metric({"b": "a16_w16"})
    again = Oracle(tmp_path, Evaluators(proxy, metric), time_budget=1e-9)
    assert again.metric({"a": "a16_w16"}) == pytest.approx(0.6)  # cached: no time needed
    with pytest.raises(BudgetExhausted):
        again.snr({"c": "a16_w16"})


def test_channel_noise_weighs_small_channels() -> None:
    import torch

    ref = torch.tensor([[[100.0, 200.0], [0.5, 0.25]]])  # [1, 2 channels, 2]
    cand = torch.tensor([[[101.0, 199.0], [0.0, 0.0]]])  # small channel wiped out
    noise = OutputNoise()
    noise.add({"y": ref}, {"y": cand})
    assert noise.nsr == pytest.approx((2 / 50000 + 1.0) / 2)
    assert noise.snr_db < 3.1


# --- the pipeline -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outlier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("search-outlier")
    model = root / "outlier.onnx"
    onnx.save(outlier_model(), model)
    return model, _npz_folder(root / "calib", 6)


def test_search_end_to_end_exports_what_it_chose(
    outlier: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = outlier
    opts = SearchOptions(
        calib=calib, target="hailo8", run_dir=tmp_path, min_snr=17.0, samples=4, try_fixes=False
    )
    report = search_model(model, opts)
    chosen = report.point(report.chosen)
    base = report.point(report.baseline)
    assert chosen is not None and base is not None and report.finished
    assert base.cost == 1.0 and base.snr_db is not None and base.snr_db < 17.0
    assert chosen.snr_db is not None and chosen.snr_db >= 17.0 and 1.0 < chosen.cost < 1.2
    assert chosen.key in report.pareto
    saved = json.loads((tmp_path / "assignment.json").read_text())
    assert saved["layers"] == chosen.modes
    session = ort.InferenceSession(str(tmp_path / "model.qdq.onnx"))
    x = np.load(next(iter(sorted(calib.iterdir()))))["x"]
    assert session.run(None, {"x": x})[0].shape == (1, 10)
    quantize = json.loads((tmp_path / "quantize.json").read_text())
    promoted = sum(n for mode, n in quantize["modes"].items() if mode != "a8_w8")
    assert promoted == len(chosen.modes) > 0


@pytest.mark.parametrize("error", [UserError("disk full", "free some space"), RuntimeError("bug")])
def test_a_failed_export_keeps_the_search(
    outlier: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    """The export commits after the search: its failure undoes its own files only, so a new
    folder keeps search.json and assignment.json, and `--resume` exports without re-scoring."""
    model, calib = outlier
    run = tmp_path / "run"
    opts = SearchOptions(
        calib=calib, target="hailo8", run_dir=run, min_snr=17.0, samples=4, try_fixes=False
    )

    def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(flows, "_export", failing)
    with pytest.raises(type(error)) as raised:
        search_model(model, opts)
    if isinstance(error, UserError):
        assert "exporting the searched points failed: disk full" in raised.value.problem
        assert f"kept in {run}" in raised.value.problem and raised.value.fix == "free some space"
    else:
        assert f"{run} keeps them" in "".join(raised.value.__notes__)
    saved = json.loads((run / "search.json").read_text())
    assert saved["finished"] and saved["chosen"] and saved["runtime_check"] is None
    assert json.loads((run / "assignment.json").read_text())["layers"]
    assert not (run / "model.qdq.onnx").exists() and not (run / "quantize.json").exists()
    assert set(json.loads((run / "run.json").read_text())["files"]) >= {"search.json"}
    monkeypatch.undo()
    computed: list[int] = []
    original = oracle_module.Oracle._get

    def counting(self: Oracle, modes: dict, field: str, compute: object) -> float:
        before = self.computed
        value = original(self, modes, field, compute)  # type: ignore[arg-type]
        computed.extend([1] * (self.computed - before))
        return value

    monkeypatch.setattr(oracle_module.Oracle, "_get", counting)
    resumed = search_model(model, SearchOptions(**{**vars(opts), "resume": True}))
    assert resumed.chosen == saved["chosen"] and not computed
    assert (run / "model.qdq.onnx").is_file() and (run / "quantize.json").is_file()


def test_killed_search_resumes_without_redoing_evaluations(
    outlier: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, calib = outlier
    opts = SearchOptions(
        calib=calib, target="ort-cpu", run_dir=tmp_path, min_snr=80.0, samples=2, export=False
    )
    computed: list[int] = []
    original = oracle_module.Oracle._get

    def counting(self: Oracle, modes: dict, field: str, compute: object) -> float:
        before = self.computed
        value = original(self, modes, field, compute)  # type: ignore[arg-type]
        if self.computed > before:
            computed.append(1)
            if kill_after is not None and len(computed) >= kill_after:
                raise KeyboardInterrupt
        return value

    monkeypatch.setattr(oracle_module.Oracle, "_get", counting)
    kill_after: int | None = None
    fresh = search_model(model, opts)
    total = len(computed)
    assert total >= 4
    computed.clear()
    kill_after = 3
    with pytest.raises(KeyboardInterrupt):
        search_model(model, opts)
    computed.clear()
    kill_after = None
    resumed = search_model(model, SearchOptions(**{**vars(opts), "resume": True}))
    assert len(computed) == total - 3
    assert resumed.chosen == fresh.chosen
    assert [p.snr_db for p in resumed.points] == [p.snr_db for p in fresh.points]


def test_bad_options(outlier: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = outlier
    with pytest.raises(UserError, match="strategy"):
        search_model(model, SearchOptions(calib=calib, run_dir=tmp_path, strategy="annealing"))
    with pytest.raises(UserError, match="--data"):
        search_model(model, SearchOptions(calib=calib, run_dir=tmp_path, max_drop=0.01))


def test_measured_cost_times_every_point(outlier: tuple[Path, Path], tmp_path: Path) -> None:
    """`--cost measured` plans with each unit's move timed in ONNX Runtime and times every
    verified point against the all-int8 export; the chosen point is the fastest that meets the
    goal."""
    model, calib = outlier
    opts = SearchOptions(
        calib=calib,
        target="ort-cpu-fast",
        run_dir=tmp_path,
        min_snr=45.0,
        samples=2,
        cost_model="measured",
        measure_rounds=5,
    )
    report = search_model(model, opts)
    chosen = report.point(report.chosen)
    assert chosen is not None
    assert all(p.latency_ms is not None and p.latency_ms > 0 for p in report.points)
    base = report.point(report.baseline)
    assert base is not None and base.cost == 1.0
    meeting = [p for p in report.points if (p.snr_db or 0) >= 45.0]
    if meeting:
        assert chosen.cost == min(p.cost for p in meeting)
    assert any("noise floor" in note for note in report.notes)
    cached = list((tmp_path / "search-cache").glob("*/latency/latency-*.json"))
    assert len(cached) >= len(report.points)
    # A resumed search measures nothing again.
    again = search_model(model, dataclasses.replace(opts, resume=True, export=False))
    assert [p.latency_ms for p in again.points] == [p.latency_ms for p in report.points]


def test_spent_time_budget_stops_cleanly(outlier: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = outlier
    opts = SearchOptions(calib=calib, target="ort-cpu", run_dir=tmp_path, time_budget=1e-9)
    report = search_model(model, opts)
    assert report.finished and report.chosen is None
    assert any("stopped early" in note for note in report.notes)
    assert (tmp_path / "search.json").is_file() and not (tmp_path / "model.qdq.onnx").exists()


def test_dynamic_width_is_costed_at_the_samples_size(branchy: Path, tmp_path: Path) -> None:
    """With a dynamic input width (an OCR line) the graph has no sizes: the units are costed on a
    copy prepared with the first sample's shape, not as free."""
    model = branchy_model()
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[3].dim_param = "W"
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(model, dynamic)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.savez(calib / f"{i}.npz", x=rng.standard_normal((1, 3, 4, 4)).astype(np.float32))
    sizes = {}
    spec = InputSpec(input_name="x", shape=[1, 3, 4, -1], size=[4, 4])  # read .npz only
    for path in (branchy, dynamic):
        opts = SearchOptions(calib=calib, target="hailo8", run_dir=tmp_path, spec=spec)
        setup = prepare_search(path, opts)
        sizes[path] = {u.id: (u.macs, u.elements) for u in setup.units}
    assert sizes[dynamic] == sizes[branchy]
    assert all(macs > 0 for unit, (macs, _) in sizes[branchy].items() if unit.startswith("conv"))
