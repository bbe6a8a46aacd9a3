"""`evaluate_three_way` on a small model built in code: arms, float check, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from quantlens import evaluation
from quantlens.emulate.ort import OrtRunner
from quantlens.errors import UserError
from quantlens.evaluation import EvalOptions, EvalReport, evaluate_three_way
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan
from tests.helpers import quantlens
from tests.models import conv_bn_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Model, data folder (.npy + labels.txt from the float model's own argmax, so float
    top-1 is exactly 1) and a quantize run folder."""
    root = tmp_path_factory.mktemp("eval")
    model = root / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    data = root / "data"
    data.mkdir()
    runner = OrtRunner(model)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.save(data / f"s{i}.npy", x)
        rows.append(f"s{i}.npy\t{int(runner.run({'x': x})['y'].argmax())}\n")
    (data / "labels.txt").write_text("".join(rows))
    run = root / "run"
    quantize_model(model, QuantizeOptions(calib=data, target="ort-cpu", run_dir=run))
    return model, data, run


def test_three_way_from_a_run_folder(setup: tuple[Path, Path, Path]) -> None:
    model, data, run = setup
    report = evaluate_three_way(model, data, "classification", EvalOptions(run_dir=run))
    assert report.samples == 8
    assert report.primary == "top1"
    assert report.float_vs_gt is not None and report.float_vs_gt["top1"] == 1.0
    assert report.float_onnxruntime_vs_gt == report.float_vs_gt
    assert report.quantized_vs_gt is not None and report.quantized_onnxruntime_vs_gt is not None
    assert report.float_vs_quantized is not None
    assert 0 < report.float_vs_quantized["snr_db"] < 80
    assert report.float_check.passed
    assert report.float_check.emulator_vs_onnxruntime["relative_error"] < 1e-4
    saved = EvalReport.load(run / "eval.json")
    assert saved.per_sample == report.per_sample
    # Worst first: the drop from float to quantized never shrinks down the list.
    drops = [(r.quantized_score or 0) - (r.float_score or 0) for r in report.per_sample]
    assert drops == sorted(drops)


def test_a_qnn_htp_run_is_also_scored_on_its_onnx_simulation(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """qnn-htp's simulator (AIMET's) runs in ONNX Runtime: its eval gets the plan's ONNX
    simulation as an arm (the engine its search scores on), close to the emulator's outputs;
    an ort-cpu run does not (its QDQ export is the deliverable)."""
    model, data, run = setup
    plain = evaluate_three_way(model, data, "classification", EvalOptions(run_dir=run))
    assert plain.quantized_simulation_vs_gt is None
    htp = tmp_path / "htp"
    quantize_model(model, QuantizeOptions(calib=data, target="qnn-htp", run_dir=htp))
    report = evaluate_three_way(model, data, "classification", EvalOptions(run_dir=htp))
    simulated, emulated = report.quantized_simulation_vs_gt, report.quantized_vs_gt
    assert simulated is not None and emulated is not None
    assert simulated["top1"] == emulated["top1"]
    assert report.float_vs_quantized_simulation is not None
    assert report.float_vs_quantized is not None
    gap = report.float_vs_quantized_simulation["snr_db"] - report.float_vs_quantized["snr_db"]
    assert abs(gap) < 1.0
    shown = quantlens("eval", str(model), "--data", str(data), "--task", "classification",
                      "--run", str(htp))  # fmt: skip
    assert shown.returncode == 0 and "quantized vs ground truth (ONNX simulation)" in shown.stdout


def test_distance_task_needs_no_ground_truth(setup: tuple[Path, Path, Path]) -> None:
    model, data, run = setup
    report = evaluate_three_way(model, data, "distance", EvalOptions(run_dir=run, limit=3))
    assert report.samples == 3
    assert report.float_vs_gt is None and report.quantized_vs_gt is None
    assert report.float_vs_quantized is not None
    snrs = [r.snr_db for r in report.per_sample]
    assert snrs == sorted(snrs)


def test_float_only_and_quantized_from_an_assignment(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, data, _ = setup
    report = evaluate_three_way(model, data, "classification")
    assert report.quantized_vs_gt is None
    assert "only the float model" in report.notes[0]
    keep = Assignment(target="ort-cpu", default="fp32")
    report = evaluate_three_way(
        model, data, "classification", EvalOptions(assignment=keep, run_dir=tmp_path / "r")
    )
    # Nothing quantized: the "quantized" model is the float one.
    assert report.quantized_vs_gt == report.float_vs_gt
    assert (tmp_path / "r" / "eval.json").is_file()


def test_float_mismatch_with_onnxruntime_stops(
    setup: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data, run = setup
    real_run = OrtRunner.run

    def wrong(self: OrtRunner, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: -v for k, v in real_run(self, feeds).items()}

    monkeypatch.setattr(evaluation.OrtRunner, "run", wrong)
    with pytest.raises(UserError, match="differently in the emulator and in ONNX Runtime: top1"):
        evaluate_three_way(model, data, "classification", EvalOptions(run_dir=run))


def test_wrong_task_for_the_outputs(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, data, _ = setup
    dictionary = tmp_path / "dict.txt"
    dictionary.write_text("a\nb\n")
    with pytest.raises(UserError, match=r"task 'ocr' expects .* got shape \[1, 10\]"):
        evaluate_three_way(
            model, data, "ocr", EvalOptions(task_options={"dictionary": str(dictionary)})
        )


def test_ground_truth_that_does_not_match_the_data(
    setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, data, _ = setup
    labels = tmp_path / "labels.txt"
    labels.write_text((data / "labels.txt").read_text() + "ghost.npy\t3\n")
    with pytest.raises(UserError, match=r"ghost\.npy"):
        evaluate_three_way(model, data, "classification", EvalOptions(ground_truth=labels))


def test_plan_of_another_model_is_refused(setup: tuple[Path, Path, Path]) -> None:
    model, data, _ = setup
    plan = QuantPlan(target="ort-cpu")
    plan.activations = QuantPlan.load(setup[2] / "plan.json").activations
    plan.activations = {f"other/{k}": v for k, v in plan.activations.items()}
    with pytest.raises(UserError, match="this model lacks"):
        evaluate_three_way(model, data, "classification", EvalOptions(plan=plan))
