"""int8 task metric and time per optimization level (`quantize --optimize 0..3`) on the zoo.

Method: for each zoo model, rendered samples with ground truth (seed 1 for calibration, seed 2
for evaluation). Each level quantizes with `quantize_model(..., optimize=LEVEL)` for the target
and is timed; the QDQ model it exports runs in ONNX Runtime through `evaluate_three_way`, which
reports the task metric (orientation top-1, OCR character accuracy, doclayout mAP50-95) of the
float model and the int8 one. With --nncf-python, NNCF's default `nncf.quantize` (which runs its
fast bias correction) quantizes the same calibration tensors and its QDQ model is evaluated by
the same code (dropped into a copy of the level-0 run folder). With --aimet-python, AIMET-ONNX's
cross-layer equalization and AdaRound (each followed by its default w8a8 quantsim, encodings on
the same calibration tensors; worker _aimet_fixes.py, whose docstring gives AIMET's scheme) add
the rows "aimet-cle" and "aimet-adaround", evaluated the same way.

    python benchmarks/optimize_levels.py [--target hailo8] [--calib 16] [--eval 32]
        [--levels 0 1 2 3] [--budget 120] [--nncf-python PATH]
        [--aimet-python PATH] [--adaround-iterations 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from quantlens.data import zoo
from quantlens.data.preprocess import load_inputs
from quantlens.data.render import write_samples
from quantlens.evaluation import EvalOptions, evaluate_three_way
from quantlens.quantize import QuantizeOptions, quantize_model

MODELS = {
    "pplcnet-orientation": ("rotated-pages", "classification"),
    "ppocr-v6-rec-small": ("text-lines", "ocr"),
    "doclayout-yolov8n": ("pages", "detection"),
}
HERE = Path(__file__).resolve().parent


def _metric(run: Path, model: Path, data: Path, task: str) -> tuple[float | None, float | None]:
    report = evaluate_three_way(model, data, task, EvalOptions(run_dir=run, out=run / "eval.json"))
    return report.primary_metric("float_vs_gt"), report.primary_metric(
        "quantized_onnxruntime_vs_gt"
    )


def _level(name: str, level: int, calib: Path, data: Path, args: argparse.Namespace, root: Path):
    model = zoo.fetch(name)
    run = root / f"O{level}"
    start = time.perf_counter()
    report = quantize_model(
        model,
        QuantizeOptions(
            calib=calib,
            target=args.target,
            run_dir=run,
            optimize=level,
            fix_budget_s=args.budget,
        ),
    )
    seconds = time.perf_counter() - start
    float_metric, int8 = _metric(run, model, data, MODELS[name][1])
    fixes = {f["name"]: f["seconds"] for f in report.optimize.fixes}
    return {
        "level": level,
        "seconds": round(seconds, 1),
        "fix_seconds": fixes,
        "float": float_metric,
        "int8": int8,
        "worst_output_snr_db": round(report.worst_snr(), 2),
    }


def _npz(name: str, images: Path, out: Path) -> Path:
    if out.exists():  # shared by the peers
        return out
    out.mkdir()
    for index, feed in enumerate(load_inputs(images, zoo.get_entry(name).input)):
        np.savez(out / f"{index:04d}.npz", **feed)
    return out


def _nncf(name: str, calib: Path, data: Path, args: argparse.Namespace, root: Path):
    model = zoo.fetch(name)
    run = root / "nncf"
    shutil.copytree(root / "O0", run)
    start = time.perf_counter()
    subprocess.run(
        [
            args.nncf_python,
            str(HERE / "_nncf_quantize.py"),
            str(model),
            str(_npz(name, calib, root / "npz")),
            str(run / "model.qdq.onnx"),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    float_metric, int8 = _metric(run, model, data, MODELS[name][1])
    return {"level": "nncf", "seconds": round(seconds, 1), "float": float_metric, "int8": int8}


def _aimet(
    technique: str, name: str, calib: Path, data: Path, args: argparse.Namespace, root: Path
) -> dict[str, object]:
    model = zoo.fetch(name)
    run = root / f"aimet-{technique}"
    shutil.copytree(root / "O0", run)
    command = [args.aimet_python, str(HERE / "_aimet_fixes.py"), technique, str(model)]
    command += [str(_npz(name, calib, root / "npz")), str(run / "model.qdq.onnx")]
    command += ["--adaround-iterations", str(args.adaround_iterations)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:  # the worker's last words, not the command line
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    worker = json.loads(done.stdout.strip().splitlines()[-1])
    float_metric, int8 = _metric(run, model, data, MODELS[name][1])
    return {"seconds": round(seconds, 1), **worker, "float": float_metric, "int8": int8}


def _aimet_rows(
    name: str, calib: Path, data: Path, args: argparse.Namespace, root: Path
) -> Iterator[dict[str, object]]:
    for technique in ("cle", "adaround"):
        label = f"aimet-{technique}"
        try:
            row = {"level": label, **_aimet(technique, name, calib, data, args, root)}
        except Exception as exc:  # a failing peer is a result too
            row = {"level": label, "error": f"{type(exc).__name__}: {str(exc)[-300:]}"}
        yield {"model": name, **row}


def bench_model(name: str, args: argparse.Namespace, root: Path) -> list[dict[str, object]]:
    kind = MODELS[name][0]
    calib = write_samples(kind, args.calib, root / "calib", seed=1)  # type: ignore[arg-type]
    data = write_samples(kind, args.eval, root / "eval", seed=2)  # type: ignore[arg-type]
    rows = []
    for level in args.levels:
        try:
            row = _level(name, level, calib, data, args, root)
        except Exception as exc:  # a failing level is a result too
            row = {"level": level, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append({"model": name, **row})
        print(json.dumps(rows[-1]), flush=True)
    if args.nncf_python and (root / "O0").exists():
        try:
            row = _nncf(name, calib, data, args, root)
        except Exception as exc:
            row = {"level": "nncf", "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        rows.append({"model": name, **row})
        print(json.dumps(rows[-1]), flush=True)
    if args.aimet_python and (root / "O0").exists():
        for row in _aimet_rows(name, calib, data, args, root):
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="hailo8")
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--levels", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--budget", type=float, default=None, help="seconds per learned fix")
    parser.add_argument("--nncf-python", default=None, help="python of a venv with nncf==3.4.0")
    parser.add_argument("--aimet-python", default=None, help="python of a venv with aimet-onnx")
    parser.add_argument("--adaround-iterations", type=int, default=20, help="per layer")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            rows.extend(bench_model(name, args, Path(tmp)))
    print(f"target {args.target}, calibration {args.calib}, evaluation {args.eval} (other seed)")
    for row in rows:
        print(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
