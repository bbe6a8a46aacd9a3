"""Ground truth files and their match with the data folder.

A labels file has one `filename<TAB>label` line per sample (as `render.write_samples` writes);
a classification folder may instead hold one sub-folder per class. Every sample needs ground
truth and every ground-truth entry needs its file: a mismatch is the user's data being wrong,
and evaluating only the overlap would report a number for a different dataset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quantlens.errors import UserError, read_user_text
from quantlens.evaluate.base import EvalContext

LABELS_FILE = "labels.txt"
COCO_FILE = "annotations.json"


def ground_truth_path(context: EvalContext, default_name: str) -> Path | None:
    """`--gt` when given (it must exist), else `default_name` in the data folder if present."""
    if context.ground_truth is not None:
        if not context.ground_truth.is_file():
            raise UserError(f"ground truth {context.ground_truth} does not exist", "check --gt")
        return context.ground_truth
    candidate = context.data / default_name
    return candidate if candidate.is_file() else None


def read_labels(path: Path) -> dict[str, str]:
    """`filename<TAB>label` lines; the label keeps inner spaces (OCR text)."""
    labels: dict[str, str] = {}
    text = read_user_text(path, "labels file", "pass `filename<TAB>label` lines in UTF-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, tab, label = line.partition("\t")
        if not tab or not name:
            raise UserError(
                f"{path}:{number} is not `filename<TAB>label`: {line[:60]!r}",
                "separate the file name and its label with one tab",
            )
        if name in labels:
            raise UserError(f"{path}:{number} labels {name!r} a second time", "keep one line")
        labels[name] = label
    if not labels:
        raise UserError(f"labels file {path} is empty", "add `filename<TAB>label` lines")
    return labels


def folder_labels(sample_names: Iterable[str]) -> dict[str, str]:
    """Folder-per-class data: `cat/img.png` is labelled `cat`."""
    labels = {name: name.split("/", 1)[0] for name in sample_names if "/" in name}
    return labels


def check_match(ground_truth: Iterable[str], sample_names: Iterable[str], source: Path) -> None:
    """Raise unless the ground truth names exactly the data folder's samples."""
    truth, data = set(ground_truth), set(sample_names)
    missing_files = sorted(truth - data)
    if missing_files:
        raise UserError(
            f"{source} has ground truth for {len(missing_files)} file(s) not in the data folder "
            f"(e.g. {', '.join(missing_files[:3])})",
            "pass the data folder the ground truth was written for, or remove those entries",
        )
    unlabelled = sorted(data - truth)
    if unlabelled:
        raise UserError(
            f"{len(unlabelled)} file(s) in the data folder have no ground truth in {source} "
            f"(e.g. {', '.join(unlabelled[:3])})",
            "add them to the ground truth or move them out of the data folder",
        )


def read_coco(path: Path) -> dict[str, Any]:
    text = read_user_text(path, "COCO ground truth", "pass a COCO JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"cannot read COCO ground truth {path}: {exc}", "pass a JSON file") from exc
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        raise UserError(
            f"{path} is not COCO detection ground truth",
            "it needs `images`, `annotations` and `categories` lists",
        )
    return data


def coco_image_names(coco: dict[str, Any], sample_names: Iterable[str]) -> dict[str, int]:
    """Sample name -> COCO image id; `file_name` may be a path relative to the data folder
    or a bare file name."""
    by_name: dict[str, int] = {}
    for number, image in enumerate(coco["images"]):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
            raise UserError(
                f"COCO ground truth: images[{number}] has no `file_name` string",
                "give every image a file_name (relative to the data folder) and an integer id",
            )
        if not isinstance(image.get("id"), int) or isinstance(image.get("id"), bool):
            raise UserError(
                f"COCO ground truth: images[{number}] ({image['file_name']}) has id "
                f"{image.get('id')!r}, not an integer",
                "COCO image ids are integers; annotations refer to them by image_id",
            )
        by_name[image["file_name"]] = image["id"]
    names = list(sample_names)
    if set(by_name) <= set(names):
        return by_name
    by_base = {Path(name).name: name for name in names}
    return {by_base.get(Path(file).name, file): image_id for file, image_id in by_name.items()}
