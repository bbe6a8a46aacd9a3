"""The search section says which cost the run measured, not always "modeled"."""

from __future__ import annotations

import pytest

from quantlens.artifacts.search import SearchGoal, SearchReport
from quantlens.report.sections import cost_wording


def _search(cost_model: str) -> SearchReport:
    return SearchReport(
        model="m.onnx", target="ort-cpu-fast", cost_model=cost_model, strategy="milp",
        goal=SearchGoal(max_drop=0.1), baseline="int8",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("cost_model", "words"),
    [
        ("measured", "latency of each candidate's QDQ export measured in ONNX Runtime"),
        ("weight-bytes", "weight size in bytes"),
        ("analytic", "modeled cost"),
        ("imported", "--cost-table"),
        ("hailo", "'hailo' cost model"),
    ],
)
def test_cost_wording_names_the_runs_cost(cost_model: str, words: str) -> None:
    text = cost_wording(_search(cost_model))
    assert words in text and text.endswith("relative to all-int8.")
    if cost_model != "analytic":
        assert "modeled" not in text
