"""Every op the registry claims is checked against ONNX's backend node tests."""

from __future__ import annotations

import pytest

from quantlens.emulate import supported_ops
from tests.emulate.onnx_node_cases import all_cases, claimed_ops, run_case, skip_reason


def _runnable() -> list[object]:
    return [c for c in all_cases() if skip_reason(c) is None]


@pytest.mark.parametrize("case", _runnable(), ids=lambda c: c.name)
def test_node_case(case: object) -> None:
    run_case(case)


def test_every_claimed_op_has_running_cases() -> None:
    covered = set().union(*(claimed_ops(c) for c in _runnable()))
    untested = sorted(set(supported_ops()) - covered)
    assert not untested, f"ops with kernels but no running node test: {untested}"
