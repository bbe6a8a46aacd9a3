"""PicoDet (PaddleDetection) head decoding: an anchor-free GFL head, not a YOLO one.

A PicoDet export without NMS has one score output [1, N_l, classes] (already through a sigmoid)
per level, then one box output [1, N_l, 4 * (reg_max + 1)] per level in the same order: for
each anchor point, a distribution over reg_max + 1 bins of its distance to each side (left, top,
right, bottom), in units of the level's stride (DFL). Decoding follows PaddleDetection's
`PicoHeadV2` post-process as rapid-layout ships it: softmax over the bins, expected distance
times stride from the point's centre ((col + 0.5) * stride, (row + 0.5) * stride), per-class
NMS.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from quantlens.errors import UserError
from quantlens.evaluate.yolo import DecodeOptions, Detections, batched_nms

STRIDE_CANDIDATES = (4, 8, 16, 32, 64, 128)


def decode_picodet(
    outputs: Mapping[str, np.ndarray], input_hw: tuple[int, int], options: DecodeOptions
) -> Detections:
    """All levels' outputs (scores first, then boxes, as exported) -> detections in model-input
    pixels."""
    arrays = list(outputs.values())
    if len(arrays) < 2 or len(arrays) % 2:
        raise _layout_error([tuple(a.shape) for a in arrays])
    levels = len(arrays) // 2
    boxes, scores = [], []
    for score, dist in zip(arrays[:levels], arrays[levels:], strict=True):
        level_boxes, level_scores = _decode_level(score, dist, input_hw)
        boxes.append(level_boxes)
        scores.append(level_scores)
    return _select(torch.cat(boxes), torch.cat(scores), options)


def is_picodet_layout(outputs: Mapping[str, object]) -> bool:
    """Score outputs [1, N_l, C] then box outputs [1, N_l, 4 * bins] with the same N_l."""
    shapes = [tuple(getattr(value, "shape", ())) for value in outputs.values()]
    half = len(shapes) // 2
    if half == 0 or len(shapes) % 2 or any(len(s) != 3 or s[0] != 1 for s in shapes):
        return False
    pairs = zip(shapes[:half], shapes[half:], strict=True)
    return all(a[1] == b[1] and b[2] % 4 == 0 and a[2] != b[2] for a, b in pairs)


def _decode_level(
    score: np.ndarray, dist: np.ndarray, input_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    if score.ndim != 3 or dist.ndim != 3 or score.shape[1] != dist.shape[1] or dist.shape[2] % 4:
        raise _layout_error([tuple(score.shape), tuple(dist.shape)])
    points = score.shape[1]
    stride, cols = level_grid(points, input_hw)
    bins = dist.shape[2] // 4
    logits = torch.as_tensor(dist[0], dtype=torch.float32).reshape(points, 4, bins)
    expected = (logits.softmax(dim=2) * torch.arange(bins, dtype=torch.float32)).sum(dim=2)
    index = torch.arange(points)
    cx = (index % cols + 0.5) * stride
    cy = (index // cols + 0.5) * stride
    centre = torch.stack([cx, cy, cx, cy], dim=1)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    return centre + sign * expected * stride, torch.as_tensor(score[0], dtype=torch.float32)


def level_grid(points: int, input_hw: tuple[int, int]) -> tuple[int, int]:
    """(stride, columns) of the level with `points` anchor points: the stride whose grid
    ceil(H / s) x ceil(W / s) has exactly that many."""
    height, width = input_hw
    for stride in STRIDE_CANDIDATES:
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        if rows * cols == points:
            return stride, cols
    raise UserError(
        f"postprocess 'picodet': no stride in {STRIDE_CANDIDATES} gives {points} points on a "
        f"{height}x{width} input",
        "check the pre-processing size, or pass your own --postprocess file.py:fn",
    )


def _select(boxes: torch.Tensor, scores: torch.Tensor, options: DecodeOptions) -> Detections:
    best, classes = scores.max(dim=1)
    keep = best >= options.score_threshold
    boxes, best, classes = boxes[keep], best[keep], classes[keep]
    if best.numel() > options.max_candidates:
        top = best.topk(options.max_candidates).indices
        boxes, best, classes = boxes[top], best[top], classes[top]
    chosen = batched_nms(boxes, best, classes, options.iou_threshold, options.max_det)
    return Detections(
        boxes[chosen].double().numpy(),
        best[chosen].double().numpy(),
        classes[chosen].numpy().astype(np.int64),
    )


def _layout_error(shapes: Sequence[tuple[int, ...]]) -> UserError:
    return UserError(
        f"postprocess 'picodet' expects per-level score outputs [1, N, classes] then box "
        f"outputs [1, N, 4 * bins], got shapes {[list(s) for s in shapes]}",
        "pick the post-process that matches the model's head",
    )
