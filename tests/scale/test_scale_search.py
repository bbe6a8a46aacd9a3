"""`search` on Ray workers: the oracle's cache stays on the driver; candidates' SNRs and full
evaluations' sample shards run on actors, and the search chooses what one process chooses.
A worker killed mid-search is replaced, its shard re-run and counted once; `--resume` redoes
nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest

import quantlens.scale.search as scale_search
from quantlens.artifacts.search import SearchReport
from quantlens.pipeline.flows import search_model
from quantlens.pipeline.search import SearchOptions
from quantlens.scale import ScaleOptions
from quantlens.search.oracle import Oracle
from tests.helpers import labelled_npy, npz_folder
from tests.models import outlier_model
from tests.scale.conftest import assert_same, one_thread

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Model, calibration set, and 12 labelled samples (every 4th label wrong for float)."""
    root = tmp_path_factory.mktemp("scale_search")
    model = root / "outlier.onnx"
    onnx.save(outlier_model(), model)
    data = labelled_npy(root / "data", model, 12)
    return model, npz_folder(root / "calib", 6, seed=4), data


def _options(setup: tuple[Path, Path, Path], run: Path, **more: Any) -> SearchOptions:
    _, calib, data = setup
    return SearchOptions(
        calib=calib,
        target="hailo8",
        run_dir=run,
        data=data,
        task="classification",
        max_drop=0.0,
        samples=4,
        export=False,
        try_fixes=False,  # like for like: the workers hold the unfixed weights
        **more,
    )


def _points(report: SearchReport) -> list[dict[str, Any]]:
    return [p.model_dump(include={"key", "snr_db", "metric", "cost"}) for p in report.points]


@pytest.fixture
def stored(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every evaluation the oracle writes to its cache (field names), in order."""
    found: list[str] = []
    original = Oracle._store

    def counting(self: Oracle, modes: Any, field: str, value: float, seconds: float) -> None:
        found.append(field)
        original(self, modes, field, value, seconds)

    monkeypatch.setattr(Oracle, "_store", counting)
    return found


def test_search_on_workers_chooses_what_one_process_chooses(
    setup: tuple[Path, Path, Path],
    tmp_path: Path,
    stored: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = setup[0]
    with one_thread():
        alone = search_model(model, _options(setup, tmp_path / "alone"))
    alone_stored = list(stored)
    stored.clear()
    farms: list[Any] = []
    real = scale_search.search_farm

    def keep(*args: Any, **kwargs: Any) -> Any:
        farms.append(real(*args, **kwargs))
        return farms[-1]

    monkeypatch.setattr(scale_search, "search_farm", keep)
    killed: list[str] = []

    def kill_once(done: int, total: int) -> None:
        # Mid-way through a full evaluation's sample shards: one actor dies.
        if farms and not killed and done == 5 and total == 12:
            actor = farms[0].pool.actors[0]
            ray.kill(actor)
            killed.append("yes")

    spread_options = _options(setup, tmp_path / "two", scale=ScaleOptions(2, threads=1))
    spread = search_model(model, spread_options, progress=kill_once)
    assert killed and farms[0].pool.retried >= 1
    assert spread.chosen == alone.chosen
    assert spread.float_metric == alone.float_metric
    assert spread.full_evaluations == alone.full_evaluations
    assert_same(_points(spread), _points(alone))
    # Every evaluation entered the cache once: nothing lost, nothing doubled.
    assert sorted(stored) == sorted(alone_stored)

    stored.clear()
    resumed = search_model(
        model, _options(setup, tmp_path / "two", resume=True, scale=ScaleOptions(2, threads=1))
    )
    assert stored == []  # --resume redid no finished evaluation
    assert resumed.chosen == alone.chosen
