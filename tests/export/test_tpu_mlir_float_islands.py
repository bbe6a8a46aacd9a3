"""bm1684x float islands are deployed F32: TPU-MLIR 1.30.2's bmodel does not run an F16 head as
its interpreter does (BENCHMARKS.md, issue 17 item 5)."""

from __future__ import annotations

from quantlens.schemes.profiles import get_profile


def test_bm1684x_search_promotes_to_fp32() -> None:
    profile = get_profile("bm1684x")
    assert profile.search.promote == "fp32"
    assert "fp32" in profile.modes
    assert "F32" in profile.search.source  # the rule says why, with its measurement
