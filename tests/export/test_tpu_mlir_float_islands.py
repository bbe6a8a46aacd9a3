"""bm1684x float islands are deployed F32: TPU-MLIR 1.30.2's bmodel does not run an F16 head as
its interpreter does (BENCHMARKS.md, issue 17 item 5)."""

from __future__ import annotations

from pathlib import Path

from quantlens.export.vendors import get_format
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from tests.export.vendor_helpers import context, small_model

TPU = get_format("tpu-mlir")


def rows(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_bm1684x_search_promotes_to_fp32() -> None:
    profile = get_profile("bm1684x")
    assert profile.search.promote == "fp32"
    assert "fp32" in profile.modes
    assert "F32" in profile.search.source  # the rule says why, with its measurement


def test_half_float_ops_warn_and_fp32_does_not(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    half = TPU.export(context(Assignment(layers={"conv2": "fp16"}), model, "bm1684x"))
    assert rows(half.texts[".qtable"]) == ["c2_Conv F16"]
    assert any("1 op(s) run F16" in w and "bmodel" in w for w in half.warnings)
    full = TPU.export(context(Assignment(layers={"conv2": "fp32"}), model, "bm1684x"))
    assert rows(full.texts[".qtable"]) == ["c2_Conv F32"]
    assert not any("bmodel" in w for w in full.warnings)
