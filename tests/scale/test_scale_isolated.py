"""`analyze --mode isolated` on Ray workers: layer groups on actors give the single-process
numbers, and a dead actor's group is re-run on a fresh one."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from quantlens.analysis.isolated import run_isolated
from quantlens.pipeline.analyze import AnalyzeOptions, analyze_model, prepare_analysis
from quantlens.scale import ScaleOptions
from quantlens.scale.isolated import isolated_farm
from tests.helpers import npz_folder
from tests.models import outlier_model
from tests.scale.conftest import assert_same, one_thread

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scale_isolated")
    model = root / "outlier.onnx"
    onnx.save(outlier_model(), model)
    return model, npz_folder(root / "calib", 7, seed=2)


def _options(calib: Path, run: Path, scale: ScaleOptions | None) -> AnalyzeOptions:
    # Batches of 2 over 7 samples: the last batch is short, as real data's often is.
    return AnalyzeOptions(
        calib=calib, run_dir=run, mode="isolated", split=2, max_batch=2, scale=scale
    )


def test_isolated_on_workers_equals_one_process(
    model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = model_and_data
    with one_thread():
        alone = analyze_model(model, _options(calib, tmp_path / "alone", None))
    spread = analyze_model(model, _options(calib, tmp_path / "two", ScaleOptions(2, threads=1)))
    assert spread.ranking == alone.ranking
    assert_same([la.model_dump() for la in spread.layers], [la.model_dump() for la in alone.layers])
    assert any(la.isolated and la.isolated.weight_snr_db is not None for la in spread.layers)


def test_a_killed_actor_is_replaced_and_its_group_rerun(
    model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = model_and_data
    options = _options(calib, tmp_path / "run", None)
    with one_thread():
        setup = prepare_analysis(model, options, None)
        alone = run_isolated(setup.executor, setup.plan, setup.layers, list(setup.feeds), ("both",))
    farm = isolated_farm(
        ScaleOptions(2, threads=1),
        setup.executor,
        setup.plan,
        setup.layers,
        setup.feeds,
        1,
        1 << 30,
    )
    try:
        ray.kill(farm.pool.actors[0])  # dies before its first group
        spread = farm.run(setup.layers, ("both",))
        assert farm.pool.retried >= 1
    finally:
        farm.close()
    assert list(spread.noise) == list(alone.noise)
    for name in alone.noise:
        assert spread.snr_db(name) == pytest.approx(alone.snr_db(name), rel=1e-9, abs=1e-9)
