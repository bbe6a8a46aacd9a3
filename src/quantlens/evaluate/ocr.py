"""Text-line recognition: greedy CTC decoding, character accuracy and exact match.

The dictionary follows PaddleOCR: index 0 is the CTC blank, then one character per line of the
model's `character` metadata (or a `--dict` file), then a space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quantlens.errors import UserError, read_user_text
from quantlens.evaluate.base import (
    EvalContext,
    Outputs,
    Sample,
    register_evaluator,
    single_output,
    wrong_task,
)
from quantlens.evaluate.ground_truth import LABELS_FILE, check_match, ground_truth_path, read_labels

BLANK = "blank"


def ctc_alphabet(characters: Sequence[str]) -> list[str]:
    return [BLANK, *characters, " "]


def ctc_greedy_decode(scores: np.ndarray, alphabet: Sequence[str]) -> str:
    """[T, C] per-step scores -> text: best class per step, repeats collapsed, blanks dropped."""
    best = np.asarray(scores).argmax(axis=-1)
    keep = np.ones(best.shape, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return "".join(alphabet[i] for i in best[keep] if i != 0)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def char_accuracy(predicted: str, truth: str) -> float:
    """1 - edits / characters of the truth, floored at 0 (an empty truth needs an empty guess)."""
    if not truth:
        return 1.0 if not predicted else 0.0
    return max(0.0, 1.0 - edit_distance(predicted, truth) / len(truth))


class OcrEvaluator:
    name = "ocr"
    primary = "char_accuracy"

    def __init__(self, texts: dict[str, str], alphabet: list[str], output: str | None = None):
        self.texts = texts
        self.alphabet = alphabet
        self.output = output
        self.predictions: dict[str, str] = {}

    def update(self, outputs: Outputs, sample: Sample) -> None:
        scores = single_output(outputs, self.name, self.output)
        if scores.ndim != 3 or scores.shape[0] != 1:
            raise wrong_task(self.name, tuple(scores.shape), "[1, steps, alphabet] CTC scores")
        if scores.shape[2] != len(self.alphabet):
            raise UserError(
                f"task 'ocr': the model scores {scores.shape[2]} symbols but the dictionary "
                f"gives {len(self.alphabet)} (blank + {len(self.alphabet) - 2} characters + space)",
                "pass the model's own dictionary with --dict",
            )
        self.predictions[sample.name] = ctc_greedy_decode(scores[0], self.alphabet)

    def result(self) -> dict[str, float]:
        names = list(self.predictions)
        edits = sum(edit_distance(self.predictions[n], self.texts[n]) for n in names)
        chars = sum(len(self.texts[n]) for n in names)
        exact = sum(self.predictions[n] == self.texts[n] for n in names)
        return {
            "char_accuracy": max(0.0, 1.0 - edits / chars) if chars else 0.0,
            "exact_match": exact / len(names) if names else 0.0,
            "samples": float(len(names)),
        }

    def sample_scores(self) -> dict[str, float]:
        return {n: char_accuracy(p, self.texts[n]) for n, p in self.predictions.items()}


def read_dictionary(context: EvalContext) -> list[str]:
    """Characters from `options['dictionary']` (a file, one per line) or the model metadata."""
    file = context.options.get("dictionary")
    if file is not None:
        text = read_user_text(file, "dictionary", "check --dict")
    elif "character" in context.metadata:
        text = context.metadata["character"]
    else:
        raise UserError(
            "task 'ocr' needs the model's character dictionary, and the model has no "
            "`character` metadata",
            "pass the dictionary file (one character per line) with --dict",
        )
    return text.splitlines()


@register_evaluator("ocr")
def make_ocr(context: EvalContext) -> OcrEvaluator:
    path = ground_truth_path(context, LABELS_FILE)
    if path is None:
        raise UserError(
            f"no ground truth for ocr in {context.data}",
            f"add a {LABELS_FILE} with `filename<TAB>text` lines, or pass --gt",
        )
    texts = read_labels(path)
    check_match(texts, context.sample_names, path)
    alphabet = ctc_alphabet(read_dictionary(context))
    return OcrEvaluator(texts, alphabet, context.options.get("output"))
