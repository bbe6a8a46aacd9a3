"""Classification, OCR and distance evaluators, the registry and the plug-in loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quantlens.errors import UserError
from quantlens.evaluate import EvalContext, Evaluator, Sample, load_plugin, make_evaluator
from quantlens.evaluate.agreement import DistanceEvaluator
from quantlens.evaluate.ocr import char_accuracy, ctc_alphabet, ctc_greedy_decode, edit_distance

# --- OCR ----------------------------------------------------------------------------------------

CHARS = list("abcde")
ALPHABET = ctc_alphabet(CHARS)  # blank, a..e, space


def _ctc_scores(steps: list[str]) -> np.ndarray:
    """One-hot [T, C] scores; '-' is the blank."""
    scores = np.full((len(steps), len(ALPHABET)), 0.01, np.float32)
    for t, symbol in enumerate(steps):
        scores[t, 0 if symbol == "-" else ALPHABET.index(symbol)] = 1.0
    return scores


def test_ctc_greedy_decode_collapses_repeats_and_drops_blanks() -> None:
    assert ctc_greedy_decode(_ctc_scores(list("aa-ab--b  c")), ALPHABET) == "aabb c"
    assert ctc_greedy_decode(_ctc_scores(list("----")), ALPHABET) == ""


def test_edit_distance_and_char_accuracy() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert char_accuracy("abcd", "abcd") == 1.0
    assert char_accuracy("abxd", "abcd") == 0.75
    assert char_accuracy("completely wrong", "ab") == 0.0
    assert char_accuracy("", "") == 1.0


def _labels(folder: Path, rows: dict[str, str]) -> EvalContext:
    folder.mkdir(parents=True, exist_ok=True)
    for name in rows:
        (folder / name).write_bytes(b"")
    (folder / "labels.txt").write_text("".join(f"{n}\t{t}\n" for n, t in rows.items()))
    return EvalContext(data=folder, sample_names=sorted(rows))


def test_ocr_evaluator_on_known_strings(tmp_path: Path) -> None:
    context = _labels(tmp_path, {"one.png": "abc", "two.png": "dead"})
    context.metadata["character"] = "\n".join(CHARS)
    evaluator = make_evaluator("ocr", context)
    evaluator.update({"y": _ctc_scores(list("a-bbc"))[None]}, Sample(0, "one.png"))
    evaluator.update({"y": _ctc_scores(list("d-ea-e"))[None]}, Sample(1, "two.png"))
    metrics = evaluator.result()
    assert metrics["exact_match"] == 0.5
    assert metrics["char_accuracy"] == pytest.approx(1 - 1 / 7)  # "deae" vs "dead": 1 edit
    assert evaluator.sample_scores() == {"one.png": 1.0, "two.png": 0.75}


def test_ocr_on_a_classifier_output_is_a_user_error(tmp_path: Path) -> None:
    context = _labels(tmp_path, {"one.png": "abc"})
    context.metadata["character"] = "\n".join(CHARS)
    evaluator = make_evaluator("ocr", context)
    with pytest.raises(UserError, match=r"task 'ocr' expects .* got shape \[1, 4\]"):
        evaluator.update({"y": np.zeros((1, 4), np.float32)}, Sample(0, "one.png"))


def test_ocr_without_a_dictionary_says_how_to_pass_one(tmp_path: Path) -> None:
    context = _labels(tmp_path, {"one.png": "abc"})
    with pytest.raises(UserError, match="--dict"):
        make_evaluator("ocr", context)


# --- classification -----------------------------------------------------------------------------


def test_classification_top1_top5(tmp_path: Path) -> None:
    context = _labels(tmp_path, {"a.png": "c2", "b.png": "c5", "c.png": "c0"})
    context.labels = [f"c{k}" for k in range(7)]
    evaluator = make_evaluator("classification", context)
    ranks = np.array([[0.0, 0.1, 0.9, 0.2, 0.3, 0.4, 0.5]], np.float32)  # order 2,6,5,4,3,1,0
    evaluator.update({"y": ranks}, Sample(0, "a.png"))  # top-1 right
    evaluator.update({"y": ranks}, Sample(1, "b.png"))  # third: top-5 only
    evaluator.update({"y": ranks}, Sample(2, "c.png"))  # last: neither
    metrics = evaluator.result()
    assert metrics["top1"] == pytest.approx(1 / 3)
    assert metrics["top5"] == pytest.approx(2 / 3)
    assert evaluator.sample_scores() == {"a.png": 1.0, "b.png": 0.0, "c.png": 0.0}


def test_classification_from_folder_per_class(tmp_path: Path) -> None:
    names = ["0/x.png", "1/y.png"]
    evaluator = make_evaluator("classification", EvalContext(data=tmp_path, sample_names=names))
    evaluator.update({"y": np.array([[0.9, 0.1]])}, Sample(0, "0/x.png"))
    evaluator.update({"y": np.array([[0.9, 0.1]])}, Sample(1, "1/y.png"))
    assert evaluator.result()["top1"] == 0.5


def test_labels_for_files_that_are_not_there(tmp_path: Path) -> None:
    context = _labels(tmp_path, {"a.png": "0", "ghost.png": "1"})
    context.sample_names = ["a.png"]
    with pytest.raises(UserError, match=r"ground truth for 1 file\(s\) not in the data.*ghost"):
        make_evaluator("classification", context)


def test_files_without_labels(tmp_path: Path) -> None:
    context = _labels(tmp_path, {"a.png": "0"})
    context.sample_names = ["a.png", "b.png"]
    with pytest.raises(UserError, match=r"1 file\(s\) in the data folder have no ground truth"):
        make_evaluator("classification", context)


def test_unknown_label_names_the_classes(tmp_path: Path) -> None:
    context = _labels(tmp_path, {"a.png": "45"})
    context.labels = ["0", "90", "180", "270"]
    evaluator = make_evaluator("classification", context)  # "45" reads as class index 45
    with pytest.raises(UserError, match="4 classes"):
        evaluator.update({"y": np.zeros((1, 4))}, Sample(0, "a.png"))
    context = _labels(tmp_path / "b", {"a.png": "sideways"})
    context.labels = ["0", "90", "180", "270"]
    with pytest.raises(UserError, match="use one of: 0, 90, 180, 270"):
        make_evaluator("classification", context)


def test_classification_on_a_sequence_output_is_a_user_error(tmp_path: Path) -> None:
    evaluator = make_evaluator("classification", _labels(tmp_path, {"a.png": "0"}))
    with pytest.raises(UserError, match="task 'classification' expects"):
        evaluator.update({"y": np.zeros((1, 40, 100))}, Sample(0, "a.png"))


# --- distance -----------------------------------------------------------------------------------


def test_distance_metrics() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 6, 10))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    same = DistanceEvaluator()
    same.update({"y": probs}, Sample(0, "s", reference={"y": probs}))
    metrics = same.result()
    assert metrics["snr_db"] == math.inf
    assert metrics["cosine"] == pytest.approx(1.0)
    assert metrics["top1_agreement"] == 1.0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-12)

    noisy = np.clip(probs + rng.normal(0, 0.05, probs.shape), 0, None)
    other = DistanceEvaluator()
    other.update({"y": noisy}, Sample(0, "s", reference={"y": probs}))
    metrics = other.result()
    assert 0 < metrics["snr_db"] < 40
    assert metrics["kl"] > 0
    assert 0 <= metrics["top1_agreement"] <= 1
    assert other.sample_scores()["s"] == pytest.approx(metrics["snr_db"])


# --- registry and plug-ins ----------------------------------------------------------------------

PLUGIN = """
class Count:
    name = "count"
    primary = "seen"

    def __init__(self):
        self.names = []

    def update(self, outputs, sample):
        self.names.append(sample.name)

    def result(self):
        return {"seen": float(len(self.names))}

    def sample_scores(self):
        return {n: 1.0 for n in self.names}


def make(context):
    return Count()


def not_an_evaluator(context):
    return 42
"""


def test_plugin_task_loads_from_a_file(tmp_path: Path) -> None:
    plugin = tmp_path / "my_task.py"
    plugin.write_text(PLUGIN)
    evaluator = make_evaluator(f"{plugin}:make", EvalContext(data=tmp_path, sample_names=[]))
    assert isinstance(evaluator, Evaluator)
    evaluator.update({}, Sample(0, "a"))
    assert evaluator.result() == {"seen": 1.0}
    assert callable(load_plugin(f"{plugin}:make"))


def test_plugin_without_the_named_function(tmp_path: Path) -> None:
    plugin = tmp_path / "my_task.py"
    plugin.write_text(PLUGIN)
    with pytest.raises(UserError, match=r"defines no callable 'missing'.*make"):
        load_plugin(f"{plugin}:missing")
    with pytest.raises(UserError, match="not an evaluator"):
        make_evaluator(f"{plugin}:not_an_evaluator", EvalContext(tmp_path, []))
    with pytest.raises(UserError, match="does not exist"):
        load_plugin(f"{tmp_path / 'nope.py'}:make")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="boom"):
        load_plugin(f"{broken}:make")


def test_unknown_task_lists_the_built_ins(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="classification, detection, distance, ocr"):
        make_evaluator("segmentation", EvalContext(tmp_path, []))


def test_nan_in_the_candidate_is_total_loss() -> None:
    reference = np.ones((1, 4), np.float32)
    broken = np.array([[1.0, np.nan, 1.0, np.inf]], np.float32)
    evaluator = DistanceEvaluator()
    evaluator.update({"y": broken}, Sample(0, "s", reference={"y": reference}))
    metrics = evaluator.result()
    assert metrics["snr_db"] == -math.inf
    assert metrics["nonfinite_fraction"] == 0.5
    assert evaluator.sample_scores()["s"] == -math.inf
