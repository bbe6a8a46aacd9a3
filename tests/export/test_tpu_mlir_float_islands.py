"""bm1684x float islands: the search promotes to F32, and a mixed INT8 + float table deploys
without TPU-MLIR's layer groups, which broke doclayout's mixed bmodel (BENCHMARKS.md, issue 17
item 5)."""

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
    assert "disable_layer_group" in profile.search.source  # why, with the measurement


def test_mixed_tables_deploy_without_layer_groups(tmp_path: Path) -> None:
    # TPU-MLIR 1.30.2's layer groups broke doclayout's mixed bmodel, F16 or F32 alike.
    model = small_model(tmp_path)
    for mode, row in (("fp16", "c2_Conv F16"), ("fp32", "c2_Conv F32")):
        mixed = TPU.export(context(Assignment(layers={"conv2": mode}), model, "bm1684x"))
        assert rows(mixed.texts[".qtable"]) == [row]
        assert mixed.usage.endswith("--model m.bmodel --disable_layer_group")
        assert any("1 op(s) run in float" in w and "layer groups" in w for w in mixed.warnings)
    plain = TPU.export(context(Assignment(), model, "bm1684x"))
    assert plain.usage.endswith("--model m.bmodel")
    assert not any("layer groups" in w for w in plain.warnings)
