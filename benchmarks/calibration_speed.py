"""Calibration time and peak memory: quantlens observers vs ONNX Runtime's calibrators.

Method. One zoo model (default pplcnet-orientation) and N rendered samples (default 32, batch
1, each through the model's own pre-processing) are written once to an .npz file. Every
calibrator then runs in its own fresh subprocess on that same data, with the same thread count
(torch.set_num_threads / ORT intra_op_num_threads, inter-op 1), calibrating every float
activation tensor plus the graph inputs. quantlens: load + canonicalize + Executor (setup), then
`calibrate` with uint8-asym targets (ORT's default activation type); ONNX Runtime:
`create_calibrator` on the original model file (graph augmentation + session: setup), then
`collect_data` through a CalibrationDataReader and `compute_data`. ORT runs with its own
defaults (Percentile: 2048 bins of |x|, 99.999; Entropy: 128 bins) and, for the like-for-like
row, Entropy with our 2048 bins / 128 quantized bins. quantlens makes one pass over the data for
every method (its histograms grow with the range); `--two-pass` adds rows for its exact two-pass
mode (min/max first, then fixed-range histograms). Times are wall-clock seconds of one run
(calibration is a one-off job, and each run reads the data several times over). Memory is the
peak resident set size of the worker process (ru_maxrss, which includes the interpreter and
libraries) and its growth during setup + calibration over the peak before it.

    python benchmarks/calibration_speed.py [--model pplcnet-orientation] [--samples 32]
        [--threads 2] [--skip-ort-entropy-2048] [--two-pass]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLES = {
    "doclayout-yolov8n": "pages",
    "ppocr-v6-rec-small": "text-lines",
    "pplcnet-orientation": "rotated-pages",
}
# (label, engine, method, extra options: `calibrate` keywords or ORT extra_options)
RUNS: list[tuple[str, str, str, dict[str, int]]] = [
    ("minmax", "quantlens", "minmax", {}),
    ("minmax", "onnxruntime", "MinMax", {}),
    ("percentile", "quantlens", "percentile", {}),
    ("percentile", "quantlens", "percentile", {"passes": 2}),
    ("percentile", "onnxruntime", "Percentile", {}),
    ("entropy", "quantlens", "entropy", {}),
    ("entropy", "quantlens", "entropy", {"passes": 2}),
    ("entropy", "onnxruntime", "Entropy", {}),
    ("entropy", "onnxruntime", "Entropy", {"num_bins": 2048, "num_quantized_bins": 128}),
]


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    with np.load(path) as data:
        count = len({key.split("/", 1)[0] for key in data.files})
        return [
            {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(f"{i}/")}
            for i in range(count)
        ]


def run_quantlens(
    model: Path, feeds: list[dict[str, np.ndarray]], method: str, extra: dict[str, int]
) -> tuple[int, float]:
    """(tensors calibrated, setup seconds)."""
    start = time.perf_counter()
    import onnx_ir as ir

    from quantlens.api import prepare
    from quantlens.calib import calibrate
    from quantlens.emulate import Executor
    from quantlens.schemes.formats import int_format

    shapes = {name: list(array.shape) for name, array in feeds[0].items()}
    canonical = prepare(model, shapes).model
    executor = Executor(canonical)
    fmt = int_format("uint8-asym")
    graph = canonical.graph
    values = [*graph.inputs, *(value for node in graph for value in node.outputs)]
    targets = {v.name: fmt for v in values if v.name and v.dtype == ir.DataType.FLOAT}
    setup = time.perf_counter() - start
    return len(calibrate(executor, feeds, targets, method, **extra).tensors), setup


def run_onnxruntime(
    model: Path, feeds: list[dict[str, np.ndarray]], method: str, extra: dict[str, int], tmp: Path
) -> tuple[int, float]:
    start = time.perf_counter()
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    calibrator = create_calibrator(
        model,
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=CalibrationMethod[method],
        extra_options=extra,
    )
    setup = time.perf_counter() - start
    calibrator.collect_data(Reader())
    return len(calibrator.compute_data().data), setup


def pin_ort_threads(threads: int) -> None:
    """ORT's calibrators build their own SessionOptions; give them our thread count."""
    import onnxruntime

    base = onnxruntime.SessionOptions

    def options() -> onnxruntime.SessionOptions:
        made = base()
        made.intra_op_num_threads = threads
        made.inter_op_num_threads = 1
        return made

    onnxruntime.SessionOptions = options


def worker(args: argparse.Namespace) -> None:
    """One calibration in this process; prints a JSON line with time and memory."""
    import contextlib
    import io

    import torch

    torch.set_num_threads(args.threads)
    pin_ort_threads(args.threads)
    feeds = load_feeds(args.data)
    before = peak_rss_mb()
    start = time.perf_counter()
    # ORT's calibrators print progress; keep stdout for the result line.
    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as tmp:
        extra = json.loads(args.extra)
        if args.engine == "quantlens":
            tensors, setup = run_quantlens(args.model, feeds, args.method, extra)
        else:
            tensors, setup = run_onnxruntime(args.model, feeds, args.method, extra, Path(tmp))
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    print(
        json.dumps(
            {
                "seconds": seconds - setup,
                "setup": setup,
                "peak_mb": peak,
                "growth_mb": peak - before,
                "tensors": tensors,
            }
        )
    )


def write_data(name: str, samples: int, folder: Path) -> tuple[Path, Path]:
    from quantlens.data import zoo
    from quantlens.data.preprocess import load_inputs
    from quantlens.data.render import write_samples

    model = zoo.fetch(name)
    images = write_samples(SAMPLES[name], samples, folder / "images", seed=0)  # type: ignore[arg-type]
    feeds = load_inputs(images, zoo.get_entry(name).input)
    arrays = {f"{i}/{key}": value for i, feed in enumerate(feeds) for key, value in feed.items()}
    path = folder / "feeds.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return model, path


def measure(
    label: str,
    engine: str,
    method: str,
    extra: dict[str, int],
    args: argparse.Namespace,
    paths: tuple[Path, Path],
) -> dict[str, object]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--engine",
        engine,
        "--method",
        method,
        "--extra",
        json.dumps(extra),
        "--model-path",
        str(paths[0]),
        "--data",
        str(paths[1]),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    note = f" ({extra['num_bins']} bins)" if "num_bins" in extra else ""
    note = f" ({extra['passes']} passes)" if "passes" in extra else note
    return {"label": label, "engine": engine + note, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pplcnet-orientation", choices=sorted(SAMPLES))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-ort-entropy-2048", action="store_true")
    parser.add_argument("--two-pass", action="store_true", help="also time quantlens passes=2")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", dest="model_path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.model = args.model_path
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_data(args.model, args.samples, Path(tmp))
        for label, engine, method, extra in RUNS:
            if "num_bins" in extra and args.skip_ort_entropy_2048:
                continue
            if "passes" in extra and not args.two_pass:
                continue
            rows.append(measure(label, engine, method, extra, args, paths))
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def print_table(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    print(f"model={args.model} samples={args.samples} (batch 1) threads={args.threads}")
    print(
        f"{'method':<11} {'engine':<27} {'tensors':>7} {'setup s':>8} {'calib s':>8} "
        f"{'ORT/ours':>9} {'peak RSS MB':>12} {'growth MB':>10}"
    )
    ours = {row["label"]: _num(row, "seconds") for row in rows if row["engine"] == "quantlens"}
    for row in rows:
        seconds = _num(row, "seconds")
        ratio = seconds / ours[str(row["label"])]
        print(
            f"{row['label']!s:<11} {row['engine']!s:<27} {row['tensors']!s:>7} "
            f"{_num(row, 'setup'):>8.2f} {seconds:>8.2f} {ratio:>9.2f} "
            f"{_num(row, 'peak_mb'):>12.0f} {_num(row, 'growth_mb'):>10.0f}"
        )
    print("ORT/ours = ORT calibration seconds / quantlens calibration seconds (setup excluded)")


def _num(row: dict[str, object], key: str) -> float:
    value = row[key]
    assert isinstance(value, (int, float))
    return float(value)


if __name__ == "__main__":
    main()
