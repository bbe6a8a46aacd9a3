"""int8 quality side by side: quantlens default vs ONNX Runtime `quantize_static` vs NNCF.

Method: for each zoo model, rendered samples with ground truth (seed 1 for calibration, seed 2
for evaluation) go through the model's own pre-processing and are saved once as .npz tensors, so
all three tools calibrate on identical inputs. Each tool writes a QDQ model with its defaults
(ours: the `ort-cpu` profile's defaults; ONNX Runtime: `quantize_static` with no options; NNCF:
`nncf.quantize` with no options, run in its own venv given by --nncf-python). Every QDQ model runs
in ONNX Runtime on the evaluation set. Reported: mean and worst output SNR (dB) against the float
model in ONNX Runtime (first output), and the task metric of the model's zoo task for float and
each int8 model, computed by quantlens' own evaluator exactly as `quantlens eval` does (top-1,
OCR character accuracy, COCO mAP@[.5:.95], DB text-detection pixel F1); for classifiers also the
share of samples whose int8 top-1 is the float model's (an int8 model can beat float's accuracy
only by flipping lines on the decision boundary, so on a small set accuracy ranks noise; the
agreement says how close to float each tool stays). Also each model's ONNX
Runtime CPU latency (`search.cost.latency`: median of 20 runs over the evaluation inputs, default
session options), float included: a QDQ model is only faster where ONNX Runtime fuses its Q/DQ
pairs into integer kernels, which for Conv needs a quantized output as well as quantized inputs.

    python benchmarks/int8_quality.py [--calib 16] [--eval 16] [--nncf-python PATH]
        [--models NAME ...] [--tools quantlens onnxruntime nncf] [--json OUT]
        [--method percentile] [--optimize 0] [--fix bias_correction ...]

`--method`, `--optimize` and `--fix` change quantlens' side only (its `quantize --method`,
`--optimize LEVEL` and single fixes such as `--bias-correction`), to measure a candidate default
against the same peers on the same sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from quantlens.data import zoo
from quantlens.data.preprocess import load_inputs
from quantlens.data.render import write_samples
from quantlens.evaluate import Sample, make_evaluator
from quantlens.evaluation import EvalOptions
from quantlens.fixes.levels import FixSettings
from quantlens.pipeline.tasks import eval_context, image_size, list_samples, task_model
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.search.cost import latency

SAMPLES = {
    "pplcnet-orientation": "rotated-pages",
    "ppocr-v6-rec-small": "text-lines",
    "doclayout-yolov8n": "pages",
    "picodet-layout-cdla": "cdla-pages",
    "ppocr-v6-det-small": "text-pages",
    "ppocr-v4-det": "text-pages",
    "ppocr-textline-cls": "rotated-lines",
    "mobilenetv2-imagenet": "imagenet-samples",
}
# The evaluator of each zoo task (`quantlens eval --task`).
TASKS = {"ocr-recognition": "ocr"}
HERE = Path(__file__).resolve().parent
TOOLS = ("quantlens", "onnxruntime", "nncf")
Feeds = list[dict[str, np.ndarray]]


def make_set(name: str, count: int, seed: int, root: Path) -> tuple[Path, Feeds, Path]:
    """Render samples, pre-process them, save as .npz; return the folder, feeds and the rendered
    images' folder (with its ground truth)."""
    images = write_samples(SAMPLES[name], count, root / f"img-{seed}", seed=seed)  # type: ignore[arg-type]
    feeds = list(load_inputs(images, zoo.get_entry(name).input))
    folder = root / f"npz-{seed}"
    folder.mkdir()
    for index, feed in enumerate(feeds):
        arrays: dict[str, Any] = dict(feed)  # numpy's stub reads ** against allow_pickle
        np.savez(folder / f"{index:04d}.npz", **arrays)
    return folder, feeds, images


def run(model: Path, feeds: Feeds) -> list[dict[str, np.ndarray]]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, feed), strict=True)) for feed in feeds]


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((candidate.astype(np.float64) - reference) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def ort_static(model: Path, calib: Path, out: Path) -> Path:
    import logging

    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    # quantize_static logs one warning per non-initializer bias (94 on picodet) to the root logger.
    logging.getLogger().setLevel(logging.ERROR)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([dict(np.load(f)) for f in sorted(calib.glob("*.npz"))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(str(model), str(out), Reader())
    return out


def nncf_quantize(python: str, model: Path, calib: Path, out: Path) -> Path:
    subprocess.run(
        [python, str(HERE / "_nncf_quantize.py"), str(model), str(calib), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def ours(
    model: Path,
    calib: Path,
    run_dir: Path,
    method: str = "percentile",
    optimize: int = 0,
    fixes: Sequence[str] = (),
) -> Path:
    options = QuantizeOptions(
        calib=calib,
        target="ort-cpu",
        run_dir=run_dir,
        method=method,
        optimize=optimize,
        fixes=dict.fromkeys(fixes, True),
    )
    report = quantize_model(model, options)
    return Path(report.files["qdq_model"])


def task_metric(
    name: str, model: Path, outputs: list[dict[str, np.ndarray]], images: Path
) -> float:
    """The primary metric of the zoo task, by the evaluator `quantlens eval` uses."""
    zoo_task: str = zoo.get_entry(name).task
    task = TASKS.get(zoo_task, zoo_task)
    options = EvalOptions()
    prepared = task_model(model, options)
    files = list_samples(images)
    context = eval_context(images, [n for n, _ in files], prepared, options, task)
    evaluator = make_evaluator(task, context)
    for index, ((sample_name, path), output) in enumerate(zip(files, outputs, strict=True)):
        evaluator.update(output, Sample(index, sample_name, path, image_size(path)))
    return float(evaluator.result()[evaluator.primary])


def top1_agreement(
    name: str, reference: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]]
) -> float | None:
    """Share of samples whose top-1 class is the float model's (classifiers only)."""
    if zoo.get_entry(name).task != "classification":
        return None
    first = next(iter(reference[0]))
    same = [
        int(np.argmax(r[first])) == int(np.argmax(o[first])) for r, o in zip(reference, outputs)
    ]
    return round(float(np.mean(same)), 4)


def evaluate(
    name: str,
    model: Path,
    float_model: Path,
    feeds: Feeds,
    reference: list[dict[str, np.ndarray]],
    images: Path,
) -> dict[str, object]:
    outputs = run(model, feeds)
    first = next(iter(reference[0]))
    snrs = [snr_db(r[first], o[first]) for r, o in zip(reference, outputs)]
    return {
        "mean_snr_db": round(float(np.mean(snrs)), 2),
        "worst_snr_db": round(min(snrs), 2),
        "task": task_metric(name, float_model, outputs, images),
        "float_top1_agreement": top1_agreement(name, reference, outputs),
        "ort_ms": round(1000 * latency(model, feeds), 2),
    }


def bench_model(name: str, args: argparse.Namespace, root: Path) -> dict[str, object]:
    model = zoo.fetch(name)
    calib, _, _ = make_set(name, args.calib, 1, root)
    _, eval_feeds, images = make_set(name, args.eval, 2, root)
    reference = run(model, eval_feeds)
    makers: dict[str, Callable[[], Path]] = {
        "quantlens": lambda: ours(
            model, calib, root / "ours", args.method, args.optimize, args.fix
        ),
        "onnxruntime": lambda: ort_static(model, calib, root / "ort.qdq.onnx"),
    }
    if args.nncf_python:
        makers["nncf"] = lambda: nncf_quantize(args.nncf_python, model, calib, root / "nncf.onnx")
    tools = {tool: make for tool, make in makers.items() if tool in args.tools}
    row: dict[str, object] = {
        "model": name,
        "calib_samples": args.calib,
        "eval_samples": args.eval,
        "float_task": task_metric(name, model, reference, images),
        "float_ms": round(1000 * latency(model, eval_feeds), 2),
    }
    for tool, make in tools.items():
        try:
            row[tool] = evaluate(name, make(), model, eval_feeds, reference, images)
        except Exception as exc:  # a peer failing on a model is a result too
            row[tool] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--models", nargs="*", default=list(SAMPLES))
    parser.add_argument("--tools", nargs="*", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--nncf-python", default=None, help="python of a venv with nncf==3.4.0")
    parser.add_argument(
        "--method", default="percentile", help="quantlens' activation calibration (--method)"
    )
    parser.add_argument("--optimize", type=int, default=0, help="quantlens' --optimize level")
    parser.add_argument(
        "--fix",
        action="append",
        default=[],
        choices=[f.name for f in dataclasses.fields(FixSettings)],
        help="a single quantlens fix on top of --optimize (repeatable)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(bench_model(name, args, Path(tmp)))
    print(
        f"calibration {args.calib} samples, evaluation {args.eval} samples (other seed);"
        f" quantlens --method {args.method} --optimize {args.optimize}"
        + "".join(f" --fix {name}" for name in args.fix)
    )
    print(
        f"{'model':<22} {'tool':<12} {'mean SNR dB':>12} {'worst SNR dB':>13} {'task (float)':>14}"
        f" {'ORT ms (float)':>15}"
    )
    for row in rows:
        for tool in TOOLS:
            result = row.get(tool)
            if not isinstance(result, dict):
                continue
            if "error" in result:
                print(f"{row['model']:<22} {tool:<12} {result['error']}")
                continue
            task = result["task"]
            task_text = "-" if task is None else f"{task:.4f} ({row['float_task']:.4f})"
            agree = result["float_top1_agreement"]
            print(
                f"{row['model']:<22} {tool:<12} {result['mean_snr_db']:>12} "
                f"{result['worst_snr_db']:>13} {task_text:>14} "
                f"{result['ort_ms']:>7} ({row['float_ms']})"
                + ("" if agree is None else f"  top-1 as float {agree:.4f}")
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
