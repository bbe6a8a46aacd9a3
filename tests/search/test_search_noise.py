"""Issue #22: the search stops with all-int8 when its gap to float is within the evaluation
set's noise (paired per-sample scores), and says so; a gap the set can resolve is searched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quantlens.pipeline import search as search_module
from quantlens.pipeline.search import metric_noise
from quantlens.search_run import SearchOptions, search_model
from tests.helpers import outlier_set

SAMPLES = [f"s{i:02d}" for i in range(12)]


def test_one_flip_in_twelve_is_within_noise() -> None:
    float_scores = dict.fromkeys(SAMPLES, 1.0)
    int8_scores = {**float_scores, "s03": 0.0}
    noise = metric_noise(float_scores, int8_scores, gap=1 / 12)
    assert noise is not None and noise.samples == 12
    # diffs: one -1 and eleven 0 -> sd 0.2887, standard error 0.0833, 2 SE 0.1667
    assert noise.half_width == pytest.approx(0.166667, abs=1e-5)
    assert noise.within_noise


def test_eight_flips_in_twelve_are_a_real_gap() -> None:
    float_scores = dict.fromkeys(SAMPLES, 1.0)
    int8_scores = {n: (0.0 if i < 8 else 1.0) for i, n in enumerate(SAMPLES)}
    noise = metric_noise(float_scores, int8_scores, gap=8 / 12)
    assert noise is not None and not noise.within_noise
    assert noise.half_width == pytest.approx(0.284, abs=1e-3)


def test_no_gap_or_too_few_samples() -> None:
    same = dict.fromkeys(SAMPLES, 1.0)
    assert metric_noise(same, same, gap=0.0) is not None
    assert not metric_noise(same, same, gap=0.0).within_noise  # type: ignore[union-attr]
    assert metric_noise({"a": 1.0}, {"a": 0.0}, gap=1.0) is None


class _Scorer:
    """Float right on every sample; all-int8 and every candidate wrong on the first `wrong`."""

    primary = "top1"

    def __init__(self, wrong: int) -> None:
        self.wrong = wrong
        self.last_sample_scores: dict[str, float] = {}

    def score(self, plan: Any, progress: Any = None) -> dict[str, float]:
        cut = 0 if plan is None else self.wrong
        self.last_sample_scores = {n: float(i >= cut) for i, n in enumerate(SAMPLES)}
        return {"top1": sum(self.last_sample_scores.values()) / len(SAMPLES)}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return outlier_set(tmp_path_factory.mktemp("search_noise"), calib_seed=1)


def _search(labelled: tuple[Path, Path, Path], run_dir: Path, **extra: Any) -> Any:
    model, calib, data = labelled
    opts = SearchOptions(
        calib=calib,
        target="hailo8",
        run_dir=run_dir,
        data=data,
        task="classification",
        export=False,
        try_fixes=False,
        samples=2,
        **extra,
    )
    return search_model(model, opts)


def test_gap_within_noise_stops_with_int8(
    labelled: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_module, "_scorer", lambda setup, opts: _Scorer(wrong=1))
    report = _search(labelled, tmp_path)
    assert report.chosen == report.baseline
    assert report.full_evaluations == 2  # float and all-int8, nothing else
    assert report.metric_noise is not None and report.metric_noise.within_noise
    assert any("within the evaluation set's noise" in note for note in report.notes)
    # Asked not to stop, the same search goes on to the candidates.
    monkeypatch.setattr(search_module, "_scorer", lambda setup, opts: _Scorer(wrong=1))
    going_on = _search(labelled, tmp_path / "on", noise_stop=False)
    assert going_on.full_evaluations > 2
    assert going_on.metric_noise is not None and going_on.metric_noise.within_noise


def test_gap_beyond_noise_is_searched(
    labelled: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_module, "_scorer", lambda setup, opts: _Scorer(wrong=8))
    report = _search(labelled, tmp_path)
    assert report.metric_noise is not None and not report.metric_noise.within_noise
    assert report.full_evaluations > 2
    assert not any("within the evaluation set's noise" in note for note in report.notes)


def test_explicit_max_drop_is_searched_with_a_warning(
    labelled: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search_module, "_scorer", lambda setup, opts: _Scorer(wrong=1))
    report = _search(labelled, tmp_path, max_drop=0.01)
    assert report.metric_noise is not None and report.metric_noise.within_noise
    assert report.full_evaluations > 2
    assert any("may not on other data" in note for note in report.notes)
