"""Classification labels that list acceptable classes (`281|282|285`, as ImageNet-ReaL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantlens.errors import UserError
from quantlens.evaluate import EvalContext, Sample, make_evaluator


def _context(folder: Path, rows: dict[str, str], labels: list[str] | None = None) -> EvalContext:
    folder.mkdir(parents=True, exist_ok=True)
    for name in rows:
        (folder / name).write_bytes(b"")
    (folder / "labels.txt").write_text("".join(f"{n}\t{t}\n" for n, t in rows.items()))
    return EvalContext(data=folder, sample_names=sorted(rows), labels=labels or [])


def test_any_listed_class_is_right(tmp_path: Path) -> None:
    context = _context(tmp_path, {"a.png": "2|5", "b.png": "0|1", "c.png": "6"})
    evaluator = make_evaluator("classification", context)
    ranks = np.array([[0.0, 0.1, 0.9, 0.2, 0.3, 0.4, 0.5]], np.float32)  # order 2,6,5,4,3,1,0
    evaluator.update({"y": ranks}, Sample(0, "a.png"))  # top-1 (2) is listed
    evaluator.update({"y": ranks}, Sample(1, "b.png"))  # 1 is sixth, 0 last: neither
    evaluator.update({"y": ranks}, Sample(2, "c.png"))  # 6 second: top-5 only
    assert evaluator.sample_scores() == {"a.png": 1.0, "b.png": 0.0, "c.png": 0.0}
    metrics = evaluator.result()
    assert metrics["top1"] == pytest.approx(1 / 3)
    assert metrics["top5"] == pytest.approx(2 / 3)


def test_alternatives_by_class_name_and_a_name_holding_a_bar(tmp_path: Path) -> None:
    names = ["cat", "dog", "a|b"]
    context = _context(tmp_path, {"x.png": "dog|cat", "y.png": "a|b"}, names)
    evaluator = make_evaluator("classification", context)
    evaluator.update({"y": np.array([[0.9, 0.1, 0.0]])}, Sample(0, "x.png"))
    evaluator.update({"y": np.array([[0.0, 0.1, 0.9]])}, Sample(1, "y.png"))  # class "a|b"
    assert evaluator.result()["top1"] == 1.0


def test_an_unknown_alternative_is_a_user_error(tmp_path: Path) -> None:
    context = _context(tmp_path, {"x.png": "cat|wolf"}, ["cat", "dog"])
    with pytest.raises(UserError, match=r"'cat\|wolf'.*alternatives separated by '\|'"):
        make_evaluator("classification", context)


def test_an_alternative_past_the_model_classes_is_a_user_error(tmp_path: Path) -> None:
    evaluator = make_evaluator("classification", _context(tmp_path, {"x.png": "1|7"}))
    with pytest.raises(UserError, match="class 7, the model has 4 classes"):
        evaluator.update({"y": np.zeros((1, 4))}, Sample(0, "x.png"))
