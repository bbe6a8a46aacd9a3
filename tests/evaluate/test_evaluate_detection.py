"""Detection metrics: the YOLOv8 decoder, NMS, letterbox mapping, COCO mAP and F1."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO, COCOeval_faster

from quantlens.data.preprocess import InputSpec, letterbox_geometry
from quantlens.errors import UserError
from quantlens.evaluate import EvalContext, Sample, make_evaluator
from quantlens.evaluate.detection import DetectionEvaluator
from quantlens.evaluate.yolo import DecodeOptions, Detections, decode_yolov8, nms, to_image_coords

CLASSES = ["a", "b", "c"]
SPEC = InputSpec(input_name="images", shape=[1, 3, 64, 64], resize="letterbox", size=(64, 64))
IMAGES = [("wide.png", 128, 64), ("tall.png", 64, 96), ("empty.png", 80, 80)]


def _yolo_output(boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A [1, 4 + nc, anchors] head output holding the given boxes (input pixels), padded with
    empty anchors."""
    anchors = len(scores) + 5
    out = np.zeros((1, 4 + len(CLASSES), anchors), np.float32)
    for i, (box, score, cls) in enumerate(zip(boxes_xyxy, scores, classes)):
        x1, y1, x2, y2 = box
        out[0, :4, i] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        out[0, 4 + int(cls), i] = score
    return out


def _to_input(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    scale, dx, dy = letterbox_geometry(width, height, SPEC.size)
    return boxes * scale + np.array([dx, dy, dx, dy])


def _ground_truth() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for image_id, (name, width, height) in enumerate(IMAGES, start=1):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        count = 0 if name == "empty.png" else 4
        for _ in range(count):
            x, y = rng.uniform(0, width * 0.6), rng.uniform(0, height * 0.6)
            w, h = rng.uniform(8, width * 0.4), rng.uniform(8, height * 0.4)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _predictions(coco: dict[str, Any], image_id: int, noise: float, seed: int) -> np.ndarray:
    """[K, 6] rows in image pixels: jittered ground truth (scores 0.3-0.95) plus false
    positives scored below every true box (so perfect boxes still give AP 1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for ann in coco["annotations"]:
        if ann["image_id"] != image_id:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, noise, 4) * [w, h, w, h]
        box = np.array([x, y, x + w, y + h]) + jitter
        rows.append([*box, rng.uniform(0.3, 0.95), ann["category_id"] - 1])
    for _ in range(3):
        x, y = rng.uniform(0, 40, 2)
        rows.append([x, y, x + 10, y + 10, rng.uniform(0.26, 0.29), rng.integers(0, 3)])
    return np.array(rows, np.float64)


def _run(coco: dict[str, Any], noise: float) -> DetectionEvaluator:
    names = {name: i for i, (name, _, _) in enumerate(IMAGES, start=1)}
    evaluator = DetectionEvaluator(coco, names, SPEC, CLASSES, DecodeOptions(iou_threshold=0.99))
    for index, (name, width, height) in enumerate(IMAGES):
        rows = _predictions(coco, index + 1, noise, seed=index)
        boxes = _to_input(rows[:, :4], width, height)
        output = _yolo_output(boxes, rows[:, 4], rows[:, 5].astype(int))
        evaluator.update({"output0": output}, Sample(index, name))
    return evaluator


def _direct_map(coco: dict[str, Any], results: list[dict[str, Any]]) -> tuple[float, float]:
    gt = COCO(copy.deepcopy(coco))
    dt = gt.loadRes(copy.deepcopy(results))
    evaluator = COCOeval_faster(gt, dt, "bbox")
    evaluator.params.imgIds = [1, 2, 3]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def test_map_matches_faster_coco_eval_run_directly() -> None:
    coco = _ground_truth()
    evaluator = _run(coco, noise=0.15)
    metrics = evaluator.result()
    direct = _direct_map(coco, evaluator.results)
    assert (metrics["map50_95"], metrics["map50"]) == direct
    assert 0.0 < metrics["map50_95"] < metrics["map50"] <= 1.0


def test_perfect_detections_score_one() -> None:
    coco = _ground_truth()
    evaluator = _run(coco, noise=0.0)
    metrics = evaluator.result()
    assert metrics["map50_95"] == pytest.approx(1.0)
    # Every true box found; the false positives above the 0.25 F1 threshold cost precision.
    scores = evaluator.sample_scores()
    assert set(scores) == {"wide.png", "tall.png", "empty.png"}
    assert metrics["recall"] == 1.0
    assert metrics["precision"] < 1.0


def test_round_trip_through_letterbox_recovers_image_boxes() -> None:
    coco = _ground_truth()
    evaluator = _run(coco, noise=0.0)
    found = [r for r in evaluator.results if r["image_id"] == 1 and r["score"] >= 0.3]
    for ann in (a for a in coco["annotations"] if a["image_id"] == 1):
        assert any(np.allclose(r["bbox"], ann["bbox"], atol=1e-3) for r in found), ann


def test_decoder_on_known_boxes() -> None:
    boxes = np.array(
        [
            [10, 10, 30, 30],  # class 0, best
            [11, 11, 31, 31],  # class 0, overlaps the first: suppressed
            [11, 11, 31, 31],  # class 1, same place: kept (per-class NMS)
            [40, 40, 60, 50],  # class 2, alone
            [0, 0, 5, 5],  # below the score threshold
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.0005])
    output = _yolo_output(boxes, scores, np.array([0, 0, 1, 2, 0]))
    found = decode_yolov8(output, DecodeOptions(score_threshold=0.001, iou_threshold=0.5))
    assert found.scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    assert found.classes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(found.boxes, boxes[[0, 2, 3]], atol=1e-5)
    assert len(decode_yolov8(output, DecodeOptions(score_threshold=0.95))) == 0


def test_nms_keeps_the_best_of_overlapping_boxes_and_stops_at_limit() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [20, 20, 30, 30]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.7])
    assert nms(boxes.float(), scores, 0.5).tolist() == [1, 2, 3]
    assert nms(boxes.float(), scores, 0.5, limit=2).tolist() == [1, 2]


def test_letterbox_mapping() -> None:
    # 200x100 into 64x64: scale 0.32, content 64x32 centred at dy = 16.
    found = Detections(np.array([[0.0, 16.0, 32.0, 48.0]]), np.array([0.5]), np.array([0]))
    mapped = to_image_coords(found, (200, 100), SPEC)
    np.testing.assert_allclose(mapped.boxes, [[0.0, 0.0, 100.0, 100.0]])


def test_detection_needs_a_yolo_head() -> None:
    coco = _ground_truth()
    evaluator = DetectionEvaluator(coco, {"wide.png": 1}, SPEC, CLASSES)
    with pytest.raises(UserError, match="YOLOv8 output"):
        evaluator.update({"y": np.zeros((1, 4), np.float32)}, Sample(0, "wide.png"))


def _write_coco(folder: Path, coco: dict[str, Any], names: list[str]) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    (folder / "annotations.json").write_text(json.dumps(coco))


def test_ground_truth_for_missing_images_is_an_error(tmp_path: Path) -> None:
    coco = _ground_truth()
    _write_coco(tmp_path, coco, ["wide.png", "tall.png"])
    context = EvalContext(data=tmp_path, sample_names=["wide.png", "tall.png"], spec=SPEC)
    with pytest.raises(UserError, match=r"ground truth for 1 file\(s\) not in the data.*empty"):
        make_evaluator("detection", context)


def test_postprocess_hook_replaces_the_decoder(tmp_path: Path) -> None:
    coco = _ground_truth()
    plugin = tmp_path / "post.py"
    plugin.write_text(
        "import numpy as np\n"
        "def boxes(outputs, sample):\n"
        "    return np.asarray(outputs['dets'])[0]\n"
    )
    names = [name for name, _, _ in IMAGES]
    context = EvalContext(
        data=tmp_path,
        sample_names=names,
        spec=SPEC,
        labels=CLASSES,
        ground_truth=_save(tmp_path / "gt.json", coco),
        options={"postprocess": f"{plugin}:boxes"},
    )
    evaluator = make_evaluator("detection", context)
    for index, (name, width, height) in enumerate(IMAGES):
        rows = _predictions(coco, index + 1, 0.0, seed=index)
        rows[:, :4] = _to_input(rows[:, :4], width, height)
        evaluator.update({"dets": rows[None]}, Sample(index, name))
    assert evaluator.result()["map50_95"] == pytest.approx(1.0)


def _save(path: Path, data: dict[str, Any]) -> Path:
    import json

    path.write_text(json.dumps(data))
    return path
