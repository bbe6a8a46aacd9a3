"""`search` on zoo models: a quick smoke run, and issue #6's acceptance on doclayout-yolov8n."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.search_run import SearchOptions, search_model


@pytest.mark.zoo
def test_orientation_search_meets_an_snr_goal(tmp_path: Path) -> None:
    model = zoo.fetch("pplcnet-orientation")
    pages = write_samples("rotated-pages", 4, tmp_path / "pages", seed=3)
    opts = SearchOptions(
        calib=pages,
        target="qnn-htp",
        run_dir=tmp_path / "run",
        min_snr=40.0,
        samples=2,
        sensitivity_samples=1,
        export=False,
    )
    report = search_model(model, opts)
    chosen, base = report.point(report.chosen), report.point(report.baseline)
    assert chosen is not None and base is not None
    assert len(report.groups) > 20 and report.pareto
    if base.snr_db is not None and base.snr_db >= 40.0:
        assert chosen.key == base.key  # int8 is enough: nothing promoted
    else:
        assert chosen.snr_db is not None and chosen.snr_db >= 40.0 > base.snr_db
        assert chosen.cost > 1.0


@pytest.mark.zoo
@pytest.mark.slow
def test_yolov8_hailo8_search_recovers_the_gap_cheaply(tmp_path: Path) -> None:
    """Issue #6: >= 90% of the float-int8 mAP gap at <= 1.10x the int8 modeled cost, with
    <= 10 full task-metric evaluations (float and all-int8 included)."""
    model = zoo.fetch("doclayout-yolov8n")
    calib = write_samples("pages", 16, tmp_path / "calib", seed=1)
    data = write_samples("pages", 8, tmp_path / "eval", seed=2)
    opts = SearchOptions(
        calib=calib,
        target="hailo8",
        run_dir=tmp_path / "run",
        data=data,
        task="detection",
        max_cost=1.10,
        samples=4,
        sensitivity_samples=2,
        export=False,
    )
    report = search_model(model, opts)
    chosen, base = report.point(report.chosen), report.point(report.baseline)
    assert chosen is not None and base is not None and report.float_metric is not None
    assert chosen.metric is not None and base.metric is not None
    gap = report.float_metric - base.metric
    assert gap > 0.1
    assert chosen.metric - base.metric >= 0.9 * gap
    assert chosen.cost <= 1.10
    assert report.full_evaluations <= 10
