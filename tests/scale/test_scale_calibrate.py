"""Calibration in shards: observations merged on the driver choose the ranges one pass over
all the samples chooses, for every method and however the samples are cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from quantlens.artifacts.calibration import CalibrationStats
from quantlens.calib import calibrate
from quantlens.calib.collect import merge_observations, observe_shard, stats_from_observation
from quantlens.emulate import Executor
from quantlens.pipeline.session import prepare
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.scale import ScaleOptions
from quantlens.schemes.formats import IntFormat
from tests.helpers import npz_folder
from tests.models import outlier_model
from tests.scale.conftest import one_thread

METHODS = ("minmax", "percentile", "mse", "entropy")


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Executor:
    path = tmp_path_factory.mktemp("calib") / "outlier.onnx"
    onnx.save(outlier_model(), path)
    return Executor(prepare(path).model)


def _feeds(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    # Growing ranges from shard to shard: later shards coarsen the histogram grids.
    return [
        {"x": (rng.standard_normal((1, 3, 8, 8)) * (1 + i)).astype(np.float32)}
        for i in range(count)
    ]


# Every method; shards of 1, 3 and 10 samples (mse is the slow observer: one cut).
CASES = [(m, c) for m in METHODS if m != "mse" for c in (1, 3, 10)] + [("mse", 3)]


@pytest.mark.parametrize(("method", "cut"), CASES)
def test_merged_shards_choose_the_ranges_of_one_pass(
    executor: Executor, method: str, cut: int
) -> None:
    feeds = _feeds(10)
    names = executor.activation_names()
    # The mse observer searches every candidate clip per tensor: three tensors keep it quick.
    names = names[:3] if method == "mse" else names
    targets = dict.fromkeys(names, IntFormat(bits=8, signed=False, symmetric=False))
    alone = calibrate(executor, feeds, targets, method)
    parts = [
        observe_shard(executor, feeds[i : i + cut], targets, method, start=i)
        for i in range(0, len(feeds), cut)
    ]
    merged = stats_from_observation(merge_observations(parts), targets, method, "cpu")
    assert merged == alone
    assert list(merged.tensors) == list(alone.tensors)


@pytest.mark.ray
@pytest.mark.usefixtures("ray_runtime")
@pytest.mark.parametrize("method", ["entropy"])
def test_quantize_on_workers_writes_the_single_process_calibration(
    tmp_path: Path, method: str
) -> None:
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), model)
    calib = npz_folder(tmp_path / "calib", 9, seed=5)
    runs = {}
    for name, scale in (("alone", None), ("two", ScaleOptions(workers=2, threads=1))):
        run = tmp_path / name
        with one_thread():
            options = QuantizeOptions(calib=calib, method=method, run_dir=run, scale=scale)
            quantize_model(model, options)
        runs[name] = run
    alone, two = (CalibrationStats.load(runs[n] / "calibration.json") for n in ("alone", "two"))
    assert two == alone
    assert (runs["two"] / "plan.json").read_text() == (runs["alone"] / "plan.json").read_text()
