"""`quantlens demo` calibrates once per activation grid across all its stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlens.pipeline.demo import DemoOptions, run_demo
from tests.pipeline.test_calibration_reuse import passes  # noqa: F401  (fixture)


@pytest.mark.zoo
@pytest.mark.slow
def test_demo_calibrates_once_per_grid(tmp_path: Path, passes: list[int]) -> None:  # noqa: F811
    summary = run_demo(
        DemoOptions(run_dir=tmp_path / "demo", calib_count=8, eval_count=4), say=lambda _: None
    )
    assert summary.mixed is not None
    # quantize calibrates the 8-bit grid; analyze, the search's 8-bit grid, the search's export
    # and the vendor export reuse it; only the search's 16-bit grid is new.
    assert len(passes) == 2, passes
