"""The built-in PicoDet decoder on head outputs written by hand: distances are the expected
value of each side's bin distribution times the level's stride, from the point's centre."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from quantlens.data.preprocess import InputSpec
from quantlens.errors import UserError
from quantlens.evaluate import EvalContext, Sample, make_evaluator
from quantlens.evaluate.picodet import decode_picodet, level_grid
from quantlens.evaluate.yolo import DecodeOptions

BINS = 8


def _one_hot_distances(points: int, sides: tuple[int, int, int, int]) -> np.ndarray:
    """Box logits [1, points, 4 * BINS] putting (almost) all mass on bin `sides[k]` per side."""
    logits = np.full((1, points, 4, BINS), -30.0, np.float32)
    for k, b in enumerate(sides):
        logits[0, :, k, b] = 30.0
    return logits.reshape(1, points, 4 * BINS)


def test_level_grid_finds_the_stride() -> None:
    assert level_grid(7600, (800, 608)) == (8, 76)
    assert level_grid(130, (800, 608)) == (64, 10)
    with pytest.raises(UserError, match="no stride"):
        level_grid(7, (800, 608))


def test_box_is_centre_minus_and_plus_distance_times_stride() -> None:
    # 32x32 input: stride 8 -> 16 points, stride 16 -> 4 points; one confident point per level.
    s8, s16 = np.zeros((1, 16, 3), np.float32), np.zeros((1, 4, 3), np.float32)
    s8[0, 5, 2] = 0.9  # row 1, col 1: centre (12, 12)
    s16[0, 3, 0] = 0.8  # row 1, col 1: centre (24, 24)
    outputs = {
        "s8": s8,
        "s16": s16,
        "b8": _one_hot_distances(16, (1, 1, 2, 3)),
        "b16": _one_hot_distances(4, (1, 0, 0, 1)),
    }
    found = decode_picodet(outputs, (32, 32), DecodeOptions(score_threshold=0.5))
    assert found.classes.tolist() == [2, 0]
    np.testing.assert_allclose(found.scores, [0.9, 0.8], rtol=1e-6)
    np.testing.assert_allclose(found.boxes[0], [12 - 8, 12 - 8, 12 + 16, 12 + 24], atol=1e-3)
    np.testing.assert_allclose(found.boxes[1], [24 - 16, 24, 24, 24 + 16], atol=1e-3)


def test_overlapping_boxes_of_one_class_are_suppressed() -> None:
    scores = np.zeros((1, 16, 2), np.float32)
    scores[0, 5, 1], scores[0, 6, 1] = 0.9, 0.7  # neighbours, same class, big boxes
    outputs = {"s": scores, "b": _one_hot_distances(16, (7, 7, 7, 7))}
    found = decode_picodet(outputs, (32, 32), DecodeOptions(score_threshold=0.5, iou_threshold=0.5))
    assert found.scores.tolist() == pytest.approx([0.9])


def test_wrong_layout_is_a_user_error() -> None:
    with pytest.raises(UserError, match="picodet"):
        decode_picodet({"y": np.zeros((1, 15, 100), np.float32)}, (32, 32), DecodeOptions())


def test_detection_task_takes_picodet_by_name(tmp_path: Path) -> None:
    spec = InputSpec(input_name="image", shape=[1, 3, 32, 32], size=(32, 32))
    image = {"id": 1, "file_name": "a.png", "width": 64, "height": 64}  # twice the input
    truth = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [8, 8, 48, 64 - 8]}
    coco = {"images": [image], "annotations": [truth], "categories": []}
    coco["categories"] = [{"id": k + 1, "name": n} for k, n in enumerate("abc")]
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    context = EvalContext(
        data=tmp_path,
        sample_names=["a.png"],
        spec=spec,
        labels=list("abc"),
        options={},  # a PicoDet head is recognised by its outputs
    )
    evaluator = make_evaluator("detection", context)
    s8, s16 = np.zeros((1, 16, 3), np.float32), np.zeros((1, 4, 3), np.float32)
    s8[0, 5, 2] = 0.9
    outputs = {
        "s8": s8,
        "s16": s16,
        "b8": _one_hot_distances(16, (1, 1, 2, 3)),
        "b16": _one_hot_distances(4, (0, 0, 0, 0)),
    }
    evaluator.update(outputs, Sample(0, "a.png", image_size=(64, 64)))
    assert evaluator.result()["map50"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="picodet"):
        make_evaluator("detection", replace(context, options={"postprocess": "pico"}))


def test_picodet_layout_is_recognised() -> None:
    from quantlens.evaluate.picodet import is_picodet_layout

    z = np.zeros
    assert is_picodet_layout(
        {"s": z((1, 16, 3)), "t": z((1, 4, 3)), "b": z((1, 16, 32)), "c": z((1, 4, 32))}
    )
    assert not is_picodet_layout({"y": z((1, 15, 100))})
    assert not is_picodet_layout({"s": z((1, 16, 3)), "b": z((1, 15, 32))})
