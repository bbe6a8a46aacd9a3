"""Object detection: COCO mAP with faster-coco-eval, and F1 at IoU 0.5 at a score threshold.

Raw outputs become boxes through a built-in decoder (`yolov8` or `picodet`, named by
`options['postprocess']`; without one, `picodet` for a PicoDet head's score/box output pairs,
else `yolov8`) or a user hook (`options['postprocess']`: a callable or
`file.py:name`, called as `hook(outputs, sample)` and returning `Detections` or [K, 6] rows
x1, y1, x2, y2, score, class in model-input pixels).
Boxes are then mapped back through the letterbox to the original image, where the ground truth
lives.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from quantlens.data.preprocess import InputSpec
from quantlens.errors import UserError
from quantlens.evaluate.base import (
    EvalContext,
    Outputs,
    Sample,
    as_numpy,
    is_plugin_spec,
    load_plugin,
    register_evaluator,
    single_output,
)
from quantlens.evaluate.ground_truth import (
    COCO_FILE,
    check_match,
    coco_image_names,
    ground_truth_path,
    read_coco,
)
from quantlens.evaluate.picodet import decode_picodet, is_picodet_layout
from quantlens.evaluate.yolo import (
    DecodeOptions,
    Detections,
    box_iou,
    decode_yolov8,
    to_image_coords,
)

PostProcess = Callable[[Mapping[str, np.ndarray], Sample], "Detections | np.ndarray"]
F1_IOU = 0.5


class DetectionEvaluator:
    name = "detection"
    primary = "map50_95"

    def __init__(
        self,
        coco: dict[str, Any],
        image_ids: dict[str, int],
        spec: InputSpec,
        classes: list[str],
        decode: DecodeOptions | None = None,
        f1_threshold: float = 0.25,
        postprocess: PostProcess | None = None,
        output: str | None = None,
    ) -> None:
        self.coco = coco
        self.image_ids = image_ids
        self.spec = spec
        self.classes = classes
        self.decode = decode or DecodeOptions()
        self.f1_threshold = f1_threshold
        self.postprocess = postprocess
        self.output = output
        self.images = {int(image["id"]): image for image in coco["images"]}
        self.truth = _truth_by_image(coco)
        self.category_of: dict[int, int] | None = None
        self.num_classes: int | None = None
        self.results: list[dict[str, Any]] = []
        self.counts: dict[str, tuple[int, int, int]] = {}  # name -> (tp, fp, fn) at F1_IOU

    def update(self, outputs: Outputs, sample: Sample) -> None:
        detections = self._detect(outputs, sample)
        image_id = self.image_ids[sample.name]
        image = self.images[image_id]
        size = (int(image["width"]), int(image["height"]))
        detections = to_image_coords(detections, size, self.spec)
        categories = self._categories(detections)
        known = categories >= 0
        boxes, scores, categories = (
            detections.boxes[known],
            detections.scores[known],
            categories[known],
        )
        for box, score, category in zip(boxes, scores, categories):
            x1, y1, x2, y2 = (float(v) for v in box)
            self.results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
        confident = scores >= self.f1_threshold
        self.counts[sample.name] = _match(
            boxes[confident], scores[confident], categories[confident], self.truth.get(image_id)
        )

    def _detect(self, outputs: Outputs, sample: Sample) -> Detections:
        if self.postprocess is None and self.output is None and is_picodet_layout(outputs):
            # No head but YOLOv8's has one output; PicoDet's score/box pairs are unmistakable.
            self.postprocess = picodet_hook(self.spec, self.decode)
        if self.postprocess is None:
            raw = single_output(outputs, self.name, self.output)
            self.num_classes = raw.shape[1] - 4 if raw.ndim == 3 else None
            return decode_yolov8(raw, self.decode)
        produced = self.postprocess({k: as_numpy(v) for k, v in outputs.items()}, sample)
        if isinstance(produced, Detections):
            return produced
        return Detections.from_array(np.asarray(produced))

    def _categories(self, detections: Detections) -> np.ndarray:
        """COCO category id of every detection, -1 for classes the ground truth lacks."""
        if self.category_of is None:
            self.category_of = _category_map(
                self.coco["categories"], self.classes, self.num_classes
            )
        return np.array([self.category_of.get(int(c), -1) for c in detections.classes], np.int64)

    def result(self) -> dict[str, float]:
        tp, fp, fn = (sum(c[i] for c in self.counts.values()) for i in range(3))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        map50_95, map50 = self.coco_map()
        return {
            "map50_95": map50_95,
            "map50": map50,
            "f1": _f1(tp, fp, fn),
            "precision": precision,
            "recall": recall,
            "detections": float(len(self.results)),
            "samples": float(len(self.counts)),
        }

    def coco_map(self) -> tuple[float, float]:
        """(mAP@[.5:.95], mAP@.5) over the evaluated images, from faster-coco-eval."""
        image_ids = sorted(self.image_ids[name] for name in self.counts)
        return coco_map(self.coco, self.results, image_ids)

    def sample_scores(self) -> dict[str, float]:
        return {name: _f1(*counts) for name, counts in self.counts.items()}


def coco_map(
    truth: dict[str, Any], detections: list[dict[str, Any]], image_ids: list[int]
) -> tuple[float, float]:
    """COCO box mAP@[.5:.95] and mAP@.5 restricted to `image_ids`; 0 when nothing is detected."""
    from faster_coco_eval import COCO, COCOeval_faster

    if not image_ids or not truth["annotations"]:
        return 0.0, 0.0
    # faster-coco-eval logs through `logging`; it also prints a few lines from C++ helpers.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(copy.deepcopy(truth))
        dt = gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval_faster(gt, dt, "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(0.0, float(v)) for v in evaluator.stats[:2]]  # -1 means "no ground truth"
    return stats[0], stats[1]


def _truth_by_image(coco: dict[str, Any]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    grouped: dict[int, list[tuple[list[float], int]]] = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        grouped.setdefault(int(ann["image_id"]), []).append(
            ([x, y, x + w, y + h], int(ann["category_id"]))
        )
    return {
        image: (np.array([b for b, _ in rows]), np.array([c for _, c in rows]))
        for image, rows in grouped.items()
    }


def _match(
    boxes: np.ndarray,
    scores: np.ndarray,
    categories: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[int, int, int]:
    """Greedy class-aware matching by decreasing score at IoU >= 0.5: (tp, fp, fn)."""
    if truth is None:
        return 0, len(scores), 0
    truth_boxes, truth_categories = truth
    if len(scores) == 0:
        return 0, 0, len(truth_categories)
    iou = box_iou(torch.as_tensor(boxes), torch.as_tensor(truth_boxes)).numpy()
    iou[categories[:, None] != truth_categories[None, :]] = -1.0
    taken = np.zeros(len(truth_categories), dtype=bool)
    tp = 0
    for row in np.argsort(-scores, kind="stable"):
        candidates = np.where(taken, -1.0, iou[row])
        best = int(np.argmax(candidates))
        if candidates[best] >= F1_IOU:
            taken[best] = True
            tp += 1
    return tp, len(scores) - tp, len(truth_categories) - tp


def _f1(tp: int, fp: int, fn: int) -> float:
    if tp + fp + fn == 0:
        return 1.0  # nothing to find and nothing found
    return 2 * tp / (2 * tp + fp + fn)


def _category_map(
    categories: list[dict[str, Any]], classes: list[str], num_classes: int | None
) -> dict[int, int]:
    """Model class index -> COCO category id: by name when the model's classes are known and
    cover the ground truth, else by position in the ground truth's sorted category ids."""
    by_name = {str(c["name"]): int(c["id"]) for c in categories}
    if classes and set(by_name) <= set(classes):
        return {k: by_name[name] for k, name in enumerate(classes) if name in by_name}
    if num_classes is not None and num_classes != len(by_name):
        raise UserError(
            f"the model detects {num_classes} classes, the ground truth has {len(by_name)} "
            "categories, and their names do not match the model's classes",
            "name the COCO categories after the model's classes",
        )
    return dict(enumerate(sorted(by_name.values())))


BUILTIN_POSTPROCESS = ("yolov8", "picodet")


def picodet_hook(spec: InputSpec, decode: DecodeOptions) -> PostProcess:
    input_hw = spec.image_size()
    return lambda outputs, _sample: decode_picodet(outputs, input_hw, decode)


def _postprocess(option: object, spec: InputSpec, decode: DecodeOptions) -> PostProcess | None:
    """None for the YOLOv8 decoder; a hook for `picodet`, a callable or `file.py:name`."""
    if callable(option):
        return option
    if option is None or option == "yolov8":
        return None
    if option == "picodet":
        return picodet_hook(spec, decode)
    if not is_plugin_spec(str(option)):
        raise UserError(
            f"unknown post-process {option!r}",
            f"choose a built-in ({', '.join(BUILTIN_POSTPROCESS)}) or path/to/file.py:function",
        )
    return load_plugin(str(option))


@register_evaluator("detection")
def make_detection(context: EvalContext) -> DetectionEvaluator:
    path = ground_truth_path(context, COCO_FILE)
    if path is None:
        raise UserError(
            f"no ground truth for detection in {context.data}",
            f"add a COCO {COCO_FILE} beside the images, or pass --gt",
        )
    if context.spec is None:
        raise UserError("task 'detection' needs image inputs", "pass a folder of images")
    coco = read_coco(path)
    image_ids = coco_image_names(coco, context.sample_names)
    check_match(image_ids, context.sample_names, path)
    options = context.options
    decode = DecodeOptions(
        score_threshold=float(options.get("score_threshold", 0.001)),
        iou_threshold=float(options.get("iou_threshold", 0.7)),
        max_det=int(options.get("max_det", 300)),
    )
    return DetectionEvaluator(
        coco,
        image_ids,
        context.spec,
        context.labels,
        decode=decode,
        f1_threshold=float(options.get("f1_threshold", 0.25)),
        postprocess=_postprocess(options.get("postprocess"), context.spec, decode),
        output=options.get("output"),
    )
