"""YOLOv8 head decoding and class-aware NMS in torch (no torchvision).

A YOLOv8 export without NMS outputs [1, 4 + classes, anchors]: cx, cy, w, h in input pixels,
then per-class scores already through a sigmoid. Decoding follows Ultralytics' predict path:
best class per anchor, score threshold, per-class greedy NMS, at most `max_det` boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from quantlens.data.preprocess import InputSpec, letterbox_geometry
from quantlens.errors import UserError

Tensor = torch.Tensor


@dataclass
class Detections:
    """Boxes as [K, 4] x1, y1, x2, y2 with [K] scores and [K] class indices."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    @classmethod
    def from_array(cls, rows: np.ndarray) -> Detections:
        """[K, 6] rows of x1, y1, x2, y2, score, class (what a post-process hook may return)."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        return cls(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float) -> Detections:
        keep = self.scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


@dataclass(frozen=True)
class DecodeOptions:
    score_threshold: float = 0.001
    iou_threshold: float = 0.7
    max_det: int = 300
    # Candidates kept (by score) before NMS. Ultralytics allows 30000 with torchvision's NMS; our
    # NMS builds a dense IoU matrix, so fewer (a collapsed int8 head can light up every anchor).
    max_candidates: int = 3000


def decode_yolov8(output: np.ndarray | Tensor, options: DecodeOptions | None = None) -> Detections:
    """[1, 4 + nc, N] raw head output -> detections in model-input pixels."""
    opts = options or DecodeOptions()
    pred = torch.as_tensor(output).detach().to("cpu", torch.float32)
    if pred.dim() != 3 or pred.shape[0] != 1 or pred.shape[1] < 5:
        raise UserError(
            f"task 'detection' expects a YOLOv8 output [1, 4 + classes, anchors], got shape "
            f"{list(pred.shape)}",
            "pick the task that matches the model, or pass a post-process hook with --postprocess",
        )
    pred = pred[0].T  # [N, 4 + nc]
    scores, classes = pred[:, 4:].max(dim=1)
    keep = scores >= opts.score_threshold
    boxes, scores, classes = _xywh_to_xyxy(pred[keep, :4]), scores[keep], classes[keep]
    if scores.numel() > opts.max_candidates:
        top = scores.topk(opts.max_candidates).indices
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    chosen = batched_nms(boxes, scores, classes, opts.iou_threshold, opts.max_det)
    return Detections(
        boxes[chosen].double().numpy(),
        scores[chosen].double().numpy(),
        classes[chosen].numpy().astype(np.int64),
    )


def _xywh_to_xyxy(xywh: Tensor) -> Tensor:
    half = xywh[:, 2:] / 2
    return torch.cat([xywh[:, :2] - half, xywh[:, :2] + half], dim=1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[A, 4] x [B, 4] xyxy boxes -> [A, B] intersection over union."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, limit: int | None = None) -> Tensor:
    """Greedy NMS: indices of kept boxes, by decreasing score (torchvision.ops.nms semantics),
    stopping after `limit` boxes."""
    order = torch.argsort(scores, descending=True, stable=True)
    if order.numel() == 0:
        return order
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        if limit is not None and len(kept) >= limit:
            break
        suppressed |= overlaps[i]
    return order[torch.as_tensor(kept, dtype=torch.long)]


def batched_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float, limit: int | None = None
) -> Tensor:
    """Per-class NMS: boxes of different classes are shifted apart so they never overlap."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offset, scores, iou_threshold, limit)


def to_image_coords(
    detections: Detections, image_size: tuple[int, int], spec: InputSpec
) -> Detections:
    """Undo the input resize: model-input pixels -> pixels of the original (width, height) image,
    clipped to the image."""
    width, height = image_size
    size = spec.image_size()
    boxes = detections.boxes.astype(np.float64).copy()
    if spec.resize == "letterbox":
        scale, dx, dy = letterbox_geometry(width, height, size)
        boxes = (boxes - np.array([dx, dy, dx, dy])) / scale
    elif spec.resize == "stretch":
        boxes = (
            boxes * np.array([width, height, width, height]) / (np.array([size[1], size[0]] * 2))
        )
    else:
        raise UserError(
            f"cannot map boxes back through resize mode {spec.resize!r}",
            "use a letterbox or stretch pre-processing for detection",
        )
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return Detections(boxes, detections.scores, detections.classes)
