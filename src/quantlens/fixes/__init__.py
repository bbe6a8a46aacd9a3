"""Fixes that reduce int8 error without changing precision: applied after the plan is built.

Each fix reads an executor, a plan and calibration feeds and returns a `FixResult` (new float
weights, maybe a new plan); `apply_fix` writes it into the executor and its model.
"""

from quantlens.fixes.result import FixResult, apply_fix, apply_to_executor, apply_to_model

__all__ = ["FixResult", "apply_fix", "apply_to_executor", "apply_to_model"]
