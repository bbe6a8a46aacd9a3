"""The DB text-detection metric on maps built by hand: the map DB is trained to draw scores 1,
nothing scores 0, a map at another resolution than the image is scaled, boxes match one to one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantlens.errors import UserError
from quantlens.evaluate import EvalContext, Sample, make_evaluator
from quantlens.evaluate.text_detection import DBSettings, db_boxes, match_boxes, shrunk_mask

LINES = [[40, 30, 300, 54], [60, 90, 420, 120], [40, 160, 200, 180]]


def _folder(tmp_path: Path, size: tuple[int, int] = (480, 240)) -> Path:
    image = {"id": 1, "file_name": "page.png", "width": size[0], "height": size[1]}
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0]}
        for k, (x0, y0, x1, y1) in enumerate(LINES)
    ]
    coco = {"images": [image], "annotations": anns, "categories": [{"id": 1, "name": "text"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def _score(tmp_path: Path, prob: np.ndarray) -> dict[str, float]:
    context = EvalContext(data=_folder(tmp_path), sample_names=["page.png"])
    evaluator = make_evaluator("text-detection", context)
    evaluator.update({"map": prob[None, None]}, Sample(0, "page.png"))
    return evaluator.result()


def test_the_trained_target_scores_one(tmp_path: Path) -> None:
    prob = shrunk_mask(np.array(LINES, float), (240, 480)).astype(np.float32)
    result = _score(tmp_path, prob)
    assert result["pixel_f1"] == 1.0
    assert result["hmean"] == 1.0, "unclipping the shrunk boxes gives the lines back"


def test_an_empty_map_scores_zero(tmp_path: Path) -> None:
    result = _score(tmp_path, np.zeros((240, 480), np.float32))
    assert result["pixel_f1"] == 0.0 and result["hmean"] == 0.0 and result["recall"] == 0.0


def test_a_map_at_half_resolution_is_scaled(tmp_path: Path) -> None:
    half = shrunk_mask(np.array(LINES, float) / 2, (120, 240)).astype(np.float32)
    result = _score(tmp_path, half)
    assert result["pixel_f1"] == 1.0 and result["hmean"] == 1.0


def test_missing_and_extra_lines_count(tmp_path: Path) -> None:
    prob = shrunk_mask(np.array([*LINES[:2], [300, 190, 460, 220]], float), (240, 480))
    result = _score(tmp_path, prob.astype(np.float32))
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert 0.5 < result["pixel_f1"] < 1.0


def test_low_scores_are_not_boxes() -> None:
    prob = shrunk_mask(np.array(LINES, float), (240, 480)) * np.float32(0.4)
    assert len(db_boxes(prob, prob > 0.3, DBSettings())) == 0


def test_matching_is_one_to_one() -> None:
    truth = np.array([[0, 0, 10, 10]], float)
    found = np.array([[0, 0, 10, 10], [0, 0, 10, 9]], float)
    assert match_boxes(found, truth).tolist() == [1, 1, 0]


def test_wrong_output_shape_and_missing_truth_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="text-pages"):
        make_evaluator("text-detection", EvalContext(data=tmp_path, sample_names=["a.png"]))
    context = EvalContext(data=_folder(tmp_path), sample_names=["page.png"])
    evaluator = make_evaluator("text-detection", context)
    with pytest.raises(UserError, match="probability map"):
        evaluator.update({"y": np.zeros((1, 4))}, Sample(0, "page.png"))
