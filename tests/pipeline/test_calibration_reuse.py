"""Stages in one run folder share calibrations: each tensor is calibrated once per grid.

The drift these guard against: `analyze` keyed its calibration without the graph options
`quantize` used, so it recalibrated and overwrote `calibration.json`; the search calibrated its
8-bit grid again and its export recalibrated the chosen assignment; `--optimize` was dropped
from the search's export.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from quantlens.pipeline import calibration as calibration_module
from quantlens.pipeline.analyze import AnalyzeOptions, analyze_model
from quantlens.pipeline.flows import search_model
from quantlens.pipeline.quantize import QuantizeOptions, quantize_model
from quantlens.pipeline.search import SearchOptions
from tests.helpers import npz_folder
from tests.models import outlier_model


@pytest.fixture
def outlier(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "outlier.onnx"
    onnx.save(outlier_model(), model)
    return model, npz_folder(tmp_path / "calib", 6)


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of tensors of every calibration pass made from here on."""
    made: list[int] = []
    real = calibration_module.calibrate

    def counting(executor, feeds, targets, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(len(targets))
        return real(executor, feeds, targets, *args, **kwargs)

    monkeypatch.setattr(calibration_module, "calibrate", counting)
    return made


def test_analyze_reuses_the_calibration_quantize_wrote(
    outlier: tuple[Path, Path], tmp_path: Path, passes: list[int]
) -> None:
    model, calib = outlier
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    assert len(passes) == 1
    written = (run / "calibration.json").read_bytes()
    analyze_model(
        model, AnalyzeOptions(calib=calib, target="hailo8", run_dir=run, mode="accumulated")
    )
    assert len(passes) == 1  # no recalibration
    assert (run / "calibration.json").read_bytes() == written


def test_search_reuses_the_8_bit_grid_and_its_export_calibrates_nothing(
    outlier: tuple[Path, Path], tmp_path: Path, passes: list[int]
) -> None:
    model, calib = outlier
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    written = (run / "calibration.json").read_bytes()
    # At most the int8 cost: nothing can be promoted, so the export is the all-int8 plan.
    opts = SearchOptions(calib=calib, target="hailo8", run_dir=run, max_cost=1.0, samples=2)
    report = search_model(model, opts)
    assert report.chosen == report.baseline
    assert len(passes) == 2  # quantize's 8-bit grid, then only the 16-bit grid
    quantized = json.loads((run / "quantize.json").read_text())
    assert quantized["calibration_reused"] is True
    assert (run / "calibration.json").read_bytes() == written


def test_search_then_promoted_export_calibrates_each_grid_once(
    outlier: tuple[Path, Path], tmp_path: Path, passes: list[int]
) -> None:
    model, calib = outlier
    # Without the fix trial, whose fixed all-int8 meets 17 dB here with nothing promoted.
    opts = SearchOptions(
        calib=calib, target="hailo8", run_dir=tmp_path, min_snr=17.0, samples=2, try_fixes=False
    )
    report = search_model(model, opts)
    chosen = report.point(report.chosen)
    assert chosen is not None and chosen.modes  # something was promoted
    assert len(passes) == 2  # the 8-bit and the 16-bit grid, the export reuses both
    quantized = json.loads((tmp_path / "quantize.json").read_text())
    assert quantized["calibration_reused"] is True


def test_search_optimize_exports_with_the_same_fixes(
    outlier: tuple[Path, Path], tmp_path: Path
) -> None:
    model, calib = outlier
    alone = quantize_model(
        model, QuantizeOptions(calib=calib, target="hailo8", run_dir=tmp_path / "q", optimize=1)
    )
    opts = SearchOptions(
        calib=calib, target="hailo8", run_dir=tmp_path / "s", max_cost=1.0, samples=2, optimize=1
    )
    search_model(model, opts)
    exported = json.loads((tmp_path / "s" / "quantize.json").read_text())
    assert exported["optimize"]["level"] == 1
    assert exported["optimize"]["enabled"] == alone.optimize.enabled
    assert exported["optimize"]["passes"].keys() == alone.optimize.passes.keys()


def test_search_promoting_to_fp32_calibrates_no_16_bit_grid(
    outlier: tuple[Path, Path], tmp_path: Path, passes: list[int]
) -> None:
    model, calib = outlier
    # ort-cpu-fast promotes to fp32: no plan of its search reads a 16-bit range.
    opts = SearchOptions(
        calib=calib,
        target="ort-cpu-fast",
        run_dir=tmp_path,
        min_snr=40.0,
        samples=2,
        try_fixes=False,
    )
    report = search_model(model, opts)
    chosen = report.point(report.chosen)
    assert chosen is not None and "fp32" in chosen.modes.values()
    assert len(passes) == 1  # the 8-bit grid only, reused by the export
