"""A search stopped by its evaluation budget keeps the cheapest point it has seen meet the goal:
the bisection over candidates scores the costliest first, and a stop midway must not fall back
to all-int8 when a scored point already met the goal."""

from __future__ import annotations

from pathlib import Path

import onnx

from quantlens.pipeline.flows import search_model
from quantlens.pipeline.search import SearchOptions
from tests.helpers import labelled_npy, npz_folder
from tests.models import outlier_model


def _options(root: Path, run: str, max_evals: int) -> SearchOptions:
    return SearchOptions(
        calib=root / "calib",
        target="hailo8",
        run_dir=root / run,
        data=root / "data",
        task="classification",
        max_drop=0.1,
        max_cost=None,
        samples=4,
        export=False,
        max_evals=max_evals,
    )


def test_budget_stop_keeps_the_best_point_that_met_the_goal(tmp_path: Path) -> None:
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), model)
    labelled_npy(tmp_path / "data", model, 12)
    npz_folder(tmp_path / "calib", 6, seed=4)
    full = search_model(model, _options(tmp_path, "full", 50))
    assert full.float_metric is not None
    goal = full.float_metric - 0.1
    base = full.point(full.baseline)
    assert base is not None and base.metric is not None and base.metric < goal
    chosen = full.point(full.chosen)
    assert chosen is not None and chosen.metric is not None and chosen.metric >= goal
    # Four evaluations: float, all-int8 (twice when the fixes are tried) and the costliest
    # candidate, which meets the goal; the budget stops the bisection within its first steps.
    stopped = search_model(model, _options(tmp_path, "stopped", 4))
    assert any("stopped early" in note for note in stopped.notes)
    kept = stopped.point(stopped.chosen)
    assert kept is not None and kept.key != stopped.baseline
    assert kept.metric is not None and kept.metric >= goal
