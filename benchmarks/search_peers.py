"""Mixed-precision search side by side: `quantlens search`, NNCF accuracy control, AIMET AMP.

Method: one detection model (default the zoo's doclayout-yolov8n) and rendered pages with
ground truth, as the demo makes them (seed 1 for calibration, seed 2 for evaluation), or the
folders given. Both tools see identical tensors: the pages go through quantlens' pre-processing
for the model (`spec_for`) and are saved once as .npz. Both are scored by the same code:
quantlens' detection evaluator (mAP50-95 on the evaluation pages) over ONNX Runtime outputs.

- quantlens: the `search.json` of a `quantlens search` run on the same data (--search-json), or
  one run here (--run-search; hailo8, --max-cost 1.1, as the demo).
- NNCF: `benchmarks/_nncf_accuracy_control.py` in NNCF's own venv (--nncf-python). It runs
  `nncf.quantize`, takes the float - int8 gap on the evaluation pages, then
  `nncf.quantize_with_accuracy_control` with an absolute max_drop of 10% of that gap (the same
  goal as `quantlens search`'s default). Its validation function sends the model's outputs here
  to be scored, so NNCF needs neither quantlens nor torch.
- AIMET-ONNX: `benchmarks/_aimet_amp.py` in AIMET's venv (--aimet-python): QuantizationSimModel
  defaults (w8a8), then `choose_mixed_precision` over w16a16 / w8a8 with an allowed drop of 10%
  of its own fp32 - w8a8 gap (phase 1 on 2 pages, phase 2 on all), scored the same way.

Not comparable one to one: quantlens models a chip (hailo8: int8 with 16-bit promotions under
the chip's rules; cost relative to all-int8), NNCF quantizes for ONNX Runtime CPU (per-tensor
here: the model's opset is below 13) and reverts operations to float, AIMET moves quantizer
groups between w16a16 and w8a8. The metric, data, evaluator and runtime are the same.

    python benchmarks/search_peers.py --nncf-python PATH [--aimet-python PATH] \
        [--search-json runs/search/search.json | --run-search] [--calib DIR --data DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quantlens.data.preprocess import load_inputs
from quantlens.data.render import write_samples
from quantlens.emulate.ort import OrtRunner
from quantlens.evaluate import make_evaluator
from quantlens.evaluation import EvalOptions, TaskScorer

HERE = Path(__file__).resolve().parent
MODEL = "doclayout-yolov8n"
# The rendered samples with ground truth that each zoo detector reads.
SAMPLE_KINDS = {
    "doclayout-yolov8n": "pages",
    "picodet-layout-cdla": "cdla-pages",
    "ppocr-v6-det-small": "text-pages",
    "ppocr-v4-det": "text-pages",
}


class OrtExecutor:
    """What TaskScorer needs of an executor, over ONNX Runtime (float model only)."""

    device = "cpu"

    def __init__(self, model: Path) -> None:
        self.runner = OrtRunner(model)

    def run(self, feed: Mapping[str, np.ndarray], hooks: object = None) -> dict[str, np.ndarray]:
        return self.runner.run(feed)


def save_npz(feeds: list[dict[str, np.ndarray]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, feed in enumerate(feeds):
        np.savez(folder / f"{index:04d}.npz", **feed)
    return folder


def score_outputs(scorer: TaskScorer, request: dict[str, Any]) -> float:
    """The primary metric of outputs a peer computed, on the evaluation samples it names."""
    evaluator = make_evaluator(scorer.task, scorer.context)
    names = request["output_names"]
    with np.load(request["outputs"]) as arrays:
        for position, index in enumerate(request["indices"]):
            outputs = {name: arrays[f"s{position}_o{k}"] for k, name in enumerate(names)}
            evaluator.update(outputs, scorer.samples[index][0])
    return float(evaluator.result()[scorer.primary])


def run_peer(
    command: list[str], log_path: Path, scorer: TaskScorer, timeout_s: float | None = None
) -> dict[str, Any]:
    """Run a peer's helper, scoring each evaluation it asks for; return its report. A helper
    still running after `timeout_s` is stopped, and that is its result (TimeoutError)."""
    start = time.perf_counter()
    scoring = 0.0
    seen: list[float] = []
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        ) as helper,
    ):
        assert helper.stdin is not None and helper.stdout is not None
        timer = threading.Timer(timeout_s, helper.kill) if timeout_s else None
        if timer is not None:
            timer.start()
        try:
            for line in helper.stdout:
                message = json.loads(line)
                if "report" in message:
                    report = message["report"]
                    break
                tick = time.perf_counter()
                seen.append(score_outputs(scorer, message))
                scoring += time.perf_counter() - tick
                helper.stdin.write(json.dumps({"metric": seen[-1]}) + "\n")
                helper.stdin.flush()
            else:
                helper.wait()
                tail = log_path.read_text().strip().splitlines()[-3:]
                raise RuntimeError(f"helper exited {helper.returncode}: {' | '.join(tail)}")
        except (OSError, RuntimeError) as exc:  # a stopped helper breaks the pipe or exits
            if timer is not None and timer.finished.is_set():
                last = seen[-1] if seen else float("nan")
                raise TimeoutError(
                    f"stopped unfinished after {timeout_s:.0f} s, {len(seen)} evaluations "
                    f"scored here (the last {last:.4f})"
                ) from exc
            raise
        finally:
            if timer is not None:
                timer.cancel()
    report["total_seconds"] = time.perf_counter() - start
    report["scoring_seconds_here"] = scoring
    report["log"] = str(log_path)
    return report


def nncf_row(python: str, files: list[str], work: Path, scorer: TaskScorer, args: Any) -> Any:
    command = [python, str(HERE / "_nncf_accuracy_control.py"), *files]
    command += [f"--fraction={args.fraction}", f"--threads={args.threads}"]
    if args.max_drop is not None:
        command.append(f"--max-drop={args.max_drop}")
    report = run_peer(command, work / "nncf.log", scorer, args.peer_timeout)
    calls, per_eval = report["validation"], report["samples_per_full_evaluation"]
    row = {
        "float": report["float"],
        "int8": report["int8"],
        "result": report["accuracy_control"],
        "changed": f"{len(report['reverted_ops'])} ops to float",
        "evaluations": f"{calls['calls']} calls, {calls['samples'] / per_eval:.0f} full-equiv",
        "seconds": report["accuracy_control_seconds"],
        # What a user waits for from the float model: nncf.quantize, then accuracy control.
        "total_seconds": report["quantize_seconds"] + report["accuracy_control_seconds"],
    }
    return report, row


def aimet_row(python: str, files: list[str], work: Path, scorer: TaskScorer, args: Any) -> Any:
    command = [python, str(HERE / "_aimet_amp.py"), *files, f"--fraction={args.fraction}"]
    report = run_peer(command, work / "aimet.log", scorer, args.peer_timeout)
    per_eval = report["samples_per_full_evaluation"]
    samples = sum(report["samples"][k] for k in ("phase1", "phase2"))
    calls = sum(report["calls"][k] for k in ("phase1", "phase2"))
    widths = ", ".join(f"{n}x{w}" for w, n in sorted(report["enabled_quantizers_by_width"].items()))
    row = {
        "float": report["float"],
        "int8": report["int8"],
        "result": report["amp"],
        "changed": widths,
        "evaluations": f"{calls} calls, {samples / per_eval:.0f} full-equiv",
        "seconds": report["amp_seconds"],
    }
    return report, row


def run_ours(model: Path, calib: Path, data: Path, out: Path, task: str, args: Any) -> Path:
    command = [sys.executable, "-m", "quantlens", "search", str(model), "--calib", str(calib)]
    command += ["--data", str(data), "--task", task, "--target", args.target, "-o", str(out)]
    if args.max_cost:
        command += ["--max-cost", str(args.max_cost)]
    if args.max_drop is not None:
        command += ["--max-drop", str(args.max_drop)]
    subprocess.run(command, check=True)
    return out / "search.json"


def ours_row(path: Path) -> dict[str, Any]:
    report = json.loads(path.read_text())
    points = {p["key"]: p for p in report["points"]}
    base, chosen = points[report["baseline"]], points[report["chosen"]]
    # The gap is the plain all-int8's: when the fix trial kept its fixes the baseline is the
    # fixed point, and the plain one is kept under its own key.
    plain = points.get((report.get("fix_trial") or {}).get("without") or "", base)
    return {
        "float": report["float_metric"],
        "int8": plain["metric"],
        "fixed_int8": base["metric"],
        "result": chosen["metric"],
        "label": chosen["label"],
        "cost": chosen["cost"],
        "changed_nodes": len(chosen["modes"]),
        "full_evaluations": report["full_evaluations"],
        "seconds": report["seconds"],
        "total_seconds": report["seconds"],  # search.json's seconds: the whole command
        "target": report["target"],
        "goal": report["goal"],
    }


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(model: str, scorer: TaskScorer, float_here: float, rows: dict[str, Any]) -> None:
    print(f"{model}: {len(scorer.samples)} evaluation pages, metric {scorer.primary}")
    print(f"float (ONNX Runtime, scored here): {float_here:.4f}")
    head = f"{'tool':<34} {'float':>6} {'int8':>6} {'result':>7} {'recovered':>9} "
    print(head + f"{'changed':>22} {'evaluations':>24} {'seconds':>8} {'total s':>8}")
    for name, row in rows.items():
        if "error" in row:
            print(f"{name:<34} {row['error']}")
            continue
        gap = (row["float"] or 0) - (row["int8"] or 0)
        recovered = (row["result"] - row["int8"]) / gap if gap > 0 else None
        print(
            f"{name:<34} {fmt(row['float']):>6} {fmt(row['int8']):>6} {fmt(row['result']):>7} "
            f"{fmt(recovered, 2):>9} {row['changed']:>22} {row['evaluations']:>24} "
            f"{row['seconds']:>8.0f} {fmt(row.get('total_seconds'), 0):>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--calib", type=Path, default=None, help="pages (default: render 16)")
    parser.add_argument("--data", type=Path, default=None, help="pages + annotations.json")
    parser.add_argument("--calib-count", type=int, default=16)
    parser.add_argument("--eval-count", type=int, default=8)
    parser.add_argument("--nncf-python", default=None, help="python of a venv with nncf==3.4.0")
    parser.add_argument("--aimet-python", default=None, help="python of a venv with aimet-onnx")
    parser.add_argument("--fraction", type=float, default=0.1, help="NNCF max_drop / its gap")
    parser.add_argument(
        "--max-drop", type=float, default=None, help="absolute metric drop, for both tools"
    )
    parser.add_argument("--target", default="hailo8", help="target of our search")
    parser.add_argument("--max-cost", type=float, default=1.1, help="ours; 0: none")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (NNCF side)")
    parser.add_argument("--search-json", type=Path, default=None, help="our search.json")
    parser.add_argument("--run-search", action="store_true", help="run quantlens search here")
    parser.add_argument("--work", type=Path, default=None, help="keep files here")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--peer-timeout", type=float, default=None, help="stop a peer after this many seconds"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        kind = SAMPLE_KINDS.get(args.model, "pages")
        calib = args.calib or write_samples(kind, args.calib_count, work / "calib", seed=1)
        data = args.data or write_samples(kind, args.eval_count, work / "eval", seed=2)
        from quantlens.api import resolve_model
        from quantlens.data.zoo import get_entry

        model = resolve_model(args.model)
        task = get_entry(args.model).task if args.model in SAMPLE_KINDS else "detection"
        scorer = TaskScorer(
            model,
            data,
            task,
            OrtExecutor(model),
            EvalOptions(),  # type: ignore[arg-type]
        )
        float_here = scorer.score(None)[scorer.primary]
        calib_npz = save_npz(load_inputs(calib, scorer.prepared.spec), work / "calib-npz")
        eval_npz = save_npz([feed for _, feed in scorer.samples], work / "eval-npz")

        rows: dict[str, Any] = {}
        results: dict[str, Any] = {"model": args.model, "float_onnxruntime": float_here}
        search_json = args.search_json
        if args.run_search:
            search_json = run_ours(model, calib, data, work / "ours", task, args)
        if search_json is not None:
            ours = ours_row(search_json)
            results["quantlens"] = ours
            rows[f"quantlens search ({ours['target']})"] = {
                **ours,
                "changed": f"{ours['changed_nodes']} nodes, {ours['cost']:.3f}x",
                "evaluations": f"{ours['full_evaluations']} full",
            }
        files = [str(model), str(calib_npz), str(eval_npz), str(work)]
        peers = {
            "nncf": ("NNCF accuracy control (ORT CPU)", args.nncf_python, nncf_row),
            "aimet": ("AIMET-ONNX AMP (ORT CPU)", args.aimet_python, aimet_row),
        }
        for key, (label, python, make_row) in peers.items():
            if not python:
                continue
            try:
                results[key], rows[label] = make_row(python, files, work, scorer, args)
            except Exception as exc:  # a peer failing is a result too
                rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
                results[key] = {"error": str(exc)}
        print_table(args.model, scorer, float_here, rows)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
