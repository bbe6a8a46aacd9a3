"""Top-1 / top-5 accuracy against a labels file or a folder per class.

A label may list acceptable classes separated by `|` (`281|282|285`: any of them is right), as
ImageNet-ReaL labels images that show more than one class.
"""

from __future__ import annotations

import numpy as np

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
    LABELS_FILE,
    check_match,
    folder_labels,
    ground_truth_path,
    read_labels,
)


class ClassificationEvaluator:
    name = "classification"
    primary = "top1"

    def __init__(self, targets: dict[str, tuple[int, ...]], output: str | None = None) -> None:
        self.targets = targets
        self.output = output
        self._top1: dict[str, float] = {}
        self._top5: dict[str, float] = {}

    def update(self, outputs: Outputs, sample: Sample) -> None:
        scores = _class_scores(single_output(outputs, self.name, self.output))
        targets = self.targets[sample.name]
        if max(targets) >= scores.size:
            raise UserError(
                f"label of {sample.name} is class {max(targets)}, the model has {scores.size} "
                "classes",
                "check the labels against the model's classes",
            )
        order = np.argsort(-scores, kind="stable")
        self._top1[sample.name] = float(int(order[0]) in targets)
        self._top5[sample.name] = float(any(int(i) in targets for i in order[:5]))

    def result(self) -> dict[str, float]:
        count = len(self._top1)
        if count == 0:
            return {"top1": 0.0, "top5": 0.0, "samples": 0.0}
        return {
            "top1": sum(self._top1.values()) / count,
            "top5": sum(self._top5.values()) / count,
            "samples": float(count),
        }

    def sample_scores(self) -> dict[str, float]:
        return dict(self._top1)


def _class_scores(output: np.ndarray) -> np.ndarray:
    """[1, C] or [1, C, 1, 1] -> [C]; anything else is not one classification per sample."""
    if output.ndim < 2 or output.shape[0] != 1 or any(d != 1 for d in output.shape[2:]):
        raise wrong_task("classification", tuple(output.shape), "[1, classes] scores")
    return output.reshape(-1).astype(np.float64)


def label_index(label: str, classes: list[str]) -> int | None:
    if label in classes:
        return classes.index(label)
    # ASCII digits only: "²" is a digit to str.isdigit() but no class index, and "-1" is none.
    text = label.strip()
    return int(text) if text.isascii() and text.isdigit() else None


@register_evaluator("classification")
def make_classification(context: EvalContext) -> ClassificationEvaluator:
    path = ground_truth_path(context, LABELS_FILE)
    if path is not None:
        labels = read_labels(path)
        source = path
    else:
        labels = folder_labels(context.sample_names)
        source = context.data
        if not labels:
            raise UserError(
                f"no ground truth for classification in {context.data}",
                f"add a {LABELS_FILE} (`filename<TAB>label` lines), use one sub-folder per "
                "class, or pass --gt",
            )
    check_match(labels, context.sample_names, source)
    targets: dict[str, tuple[int, ...]] = {}
    for name, label in labels.items():
        # A class whose name holds '|' stays one class; otherwise '|' separates alternatives.
        parts = [label] if label in context.labels else label.split("|")
        indices = [label_index(part, context.labels) for part in parts]
        if any(index is None for index in indices):
            known = ", ".join(context.labels) if context.labels else "class indices 0, 1, ..."
            raise UserError(
                f"{source}: label {label!r} of {name} is not a class of the model",
                f"use one of: {known} (alternatives separated by '|')",
            )
        targets[name] = tuple(index for index in indices if index is not None)
    return ClassificationEvaluator(targets, context.options.get("output"))
