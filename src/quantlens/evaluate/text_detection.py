"""Text detection from a probability map (DB text detectors such as PP-OCR's).

Two measures, both against COCO boxes (one per text line) in original-image pixels, scaled onto
the map by the ratio of their sizes (the detector's input is the image stretched, so the map is):

- the segmentation map itself (primary): pixel precision, recall and F1 of the map thresholded at
  `thresh` against the text boxes shrunk as DB draws its training target (each side moved in by
  D = A(1 - r^2)/L, r = 0.4), pooled over the dataset. It moves with every pixel that
  quantization pushes across the threshold, so it sees damage before the boxes do;
- the boxes a reader would get: DB's post-processing (binarize, dilate 2x2, connected regions,
  keep those whose mean score reaches `box_thresh`, unclip by D' = A * 1.6 / L), matched one to
  one to the ground truth at IoU >= 0.5: precision, recall and hmean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from quantlens.errors import UserError
from quantlens.evaluate.base import (
    EvalContext,
    Outputs,
    Sample,
    register_evaluator,
    single_output,
    wrong_task,
)
from quantlens.evaluate.ground_truth import (
    COCO_FILE,
    check_match,
    coco_image_names,
    ground_truth_path,
    read_coco,
)

SHRINK_RATIO = 0.4
MATCH_IOU = 0.5


@dataclass(frozen=True)
class DBSettings:
    """rapidocr 3.10's defaults for PP-OCR detectors."""

    thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.6
    min_size: int = 3


class TextDetectionEvaluator:
    name = "text-detection"
    primary = "pixel_f1"

    def __init__(
        self,
        truth: dict[str, np.ndarray],
        sizes: dict[str, tuple[int, int]],
        settings: DBSettings | None = None,
        output: str | None = None,
    ) -> None:
        self.truth, self.sizes = truth, sizes
        self.settings = settings or DBSettings()
        self.output = output
        self.pixels = np.zeros(3, dtype=np.int64)  # tp, fp, fn over the dataset
        self.boxes = np.zeros(3, dtype=np.int64)
        self.per_sample: dict[str, float] = {}

    def update(self, outputs: Outputs, sample: Sample) -> None:
        prob = _probability_map(single_output(outputs, self.name, self.output))
        width, height = self.sizes[sample.name]
        scale = np.array([prob.shape[1] / width, prob.shape[0] / height] * 2)
        truth = self.truth[sample.name]
        binary = prob > self.settings.thresh
        counts = _pixel_counts(binary, shrunk_mask(truth * scale, prob.shape))
        self.pixels += counts
        found = db_boxes(prob, binary, self.settings) / scale
        self.boxes += match_boxes(found, truth)
        self.per_sample[sample.name] = _f1(*counts)

    def result(self) -> dict[str, float]:
        pixel_p, pixel_r, pixel_f1 = _prf(*self.pixels)
        box_p, box_r, hmean = _prf(*self.boxes)
        return {
            "pixel_f1": pixel_f1,
            "pixel_precision": pixel_p,
            "pixel_recall": pixel_r,
            "hmean": hmean,
            "precision": box_p,
            "recall": box_r,
            "samples": float(len(self.per_sample)),
        }

    def sample_scores(self) -> dict[str, float]:
        return dict(self.per_sample)


def _probability_map(output: np.ndarray) -> np.ndarray:
    """[1, 1, H, W] or [1, H, W] -> [H, W]."""
    if output.ndim not in (3, 4) or any(d != 1 for d in output.shape[:-2]):
        raise wrong_task("text-detection", tuple(output.shape), "a [1, 1, H, W] probability map")
    return output.reshape(output.shape[-2:]).astype(np.float32)


def shrunk_mask(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The map DB is trained to draw: each [x0, y0, x1, y1] box moved in by A(1 - r^2)/L."""
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            continue
        d = w * h * (1 - SHRINK_RATIO**2) / (2 * (w + h))
        r0, r1 = int(np.floor(y0 + d)), int(np.ceil(y1 - d))
        c0, c1 = int(np.floor(x0 + d)), int(np.ceil(x1 - d))
        mask[max(r0, 0) : max(r1, r0 + 1), max(c0, 0) : max(c1, c0 + 1)] = True
    return mask


def db_boxes(prob: np.ndarray, binary: np.ndarray, settings: DBSettings) -> np.ndarray:
    """DB's boxes as [K, 4] x0, y0, x1, y1 in map pixels (axis-aligned: the rendered lines
    are horizontal, so the minimum-area rectangle is the bounding box)."""
    dilated = ndimage.binary_dilation(binary, structure=np.ones((2, 2), dtype=bool))
    labels, _ = ndimage.label(dilated, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for region in ndimage.find_objects(labels):
        if region is None:
            continue
        rows, cols = region
        h, w = rows.stop - rows.start, cols.stop - cols.start
        if min(h, w) < settings.min_size or float(prob[region].mean()) < settings.box_thresh:
            continue
        d = w * h * settings.unclip_ratio / (2 * (w + h))
        boxes.append([cols.start - d, rows.start - d, cols.stop + d, rows.stop + d])
    limit = np.array([prob.shape[1], prob.shape[0]] * 2, dtype=np.float64)
    found = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(found, 0, limit)


def match_boxes(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(tp, fp, fn) of a one-to-one greedy matching at IoU >= 0.5, best overlaps first."""
    if len(found) == 0 or len(truth) == 0:
        return np.array([0, len(found), len(truth)], dtype=np.int64)
    iou = _iou(found, truth)
    pairs = sorted(zip(*np.nonzero(iou >= MATCH_IOU)), key=lambda ij: -iou[ij])
    used_f: set[int] = set()
    used_t: set[int] = set()
    for i, j in pairs:
        if i not in used_f and j not in used_t:
            used_f.add(int(i))
            used_t.add(int(j))
    tp = len(used_f)
    return np.array([tp, len(found) - tp, len(truth) - tp], dtype=np.int64)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _pixel_counts(binary: np.ndarray, mask: np.ndarray) -> np.ndarray:
    tp = int(np.count_nonzero(binary & mask))
    return np.array([tp, int(np.count_nonzero(binary)) - tp, int(np.count_nonzero(mask)) - tp])


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, _f1(tp, fp, fn)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _truth(coco: dict[str, Any], image_ids: dict[str, int]) -> dict[str, np.ndarray]:
    by_image: dict[int, list[list[float]]] = {}
    for ann in coco["annotations"]:
        x, y, w, h = (float(v) for v in ann["bbox"])
        by_image.setdefault(int(ann["image_id"]), []).append([x, y, x + w, y + h])
    return {
        name: np.asarray(by_image.get(image_id, []), dtype=np.float64).reshape(-1, 4)
        for name, image_id in image_ids.items()
    }


@register_evaluator("text-detection")
def make_text_detection(context: EvalContext) -> TextDetectionEvaluator:
    path = ground_truth_path(context, COCO_FILE)
    if path is None:
        raise UserError(
            f"no ground truth for text detection in {context.data}",
            f"add a COCO {COCO_FILE} with one box per text line beside the images "
            "(`quantlens data make text-pages` writes one), or pass --gt",
        )
    coco = read_coco(path)
    image_ids = coco_image_names(coco, context.sample_names)
    check_match(image_ids, context.sample_names, path)
    images = {int(image["id"]): image for image in coco["images"]}
    sizes = {
        name: (int(images[i]["width"]), int(images[i]["height"])) for name, i in image_ids.items()
    }
    options = context.options
    defaults = DBSettings()
    settings = DBSettings(
        thresh=float(options.get("thresh", defaults.thresh)),
        box_thresh=float(options.get("box_thresh", defaults.box_thresh)),
        unclip_ratio=float(options.get("unclip_ratio", defaults.unclip_ratio)),
    )
    return TextDetectionEvaluator(_truth(coco, image_ids), sizes, settings, options.get("output"))
