"""Fixes after the plan register in run order; the settings switch them on."""

from __future__ import annotations

import pytest

from quantlens.emulate.plan import QuantPoints
from quantlens.fixes import levels
from quantlens.fixes.levels import FixStep, register_fix, settings_for


def test_levels_run_the_registered_fixes_in_order() -> None:
    points = QuantPoints()
    names = [name for name, _ in levels._steps(settings_for(3), points, None)]
    assert names == ["clip-search", "weight-clip", "adaround", "bias-correction", "finetune"]
    assert [name for name, _ in levels._steps(settings_for(1), points, None)] == ["bias-correction"]
    assert levels.fix_names() == names


def test_a_fix_must_name_an_existing_switch() -> None:
    with pytest.raises(ValueError, match="no switch"):
        register_fix(FixStep("sharpen", "sharpen", lambda points, budget: None))  # type: ignore[arg-type,return-value]
