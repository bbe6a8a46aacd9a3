"""Emulator float time over ONNX Runtime float time on the zoo models, side by side in one run.

Same inputs (rendered samples through each model's own pre-processing), same batch, same thread
count for both. Each timing is the median of `--repeats` runs after `--warmup` runs.

    python benchmarks/emulator_speed.py [--threads 2] [--repeats 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from quantlens.api import prepare
from quantlens.data import zoo
from quantlens.data.preprocess import load_inputs
from quantlens.data.render import write_samples
from quantlens.emulate import Executor
from quantlens.emulate.ort import OrtRunner

SAMPLES = {
    "doclayout-yolov8n": "pages",
    "ppocr-v6-rec-small": "text-lines",
    "pplcnet-orientation": "rotated-pages",
}


def median_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def feeds_for(name: str, workdir: Path) -> dict[str, np.ndarray]:
    folder = write_samples(SAMPLES[name], 1, workdir / name, seed=0)  # type: ignore[arg-type]
    return load_inputs(folder, zoo.get_entry(name).input)[0]


def bench(name: str, threads: int, warmup: int, repeats: int, workdir: Path) -> dict[str, object]:
    path = zoo.fetch(name)
    feeds = feeds_for(name, workdir)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    executor = Executor(prepare(path, shapes).model)
    reference = OrtRunner(path, threads=threads)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    ort_ms = median_ms(lambda: reference.run(feeds), warmup, repeats)
    with torch.inference_mode():
        emu_ms = median_ms(lambda: executor.run(tensors), warmup, repeats)
    return {
        "model": name,
        "input": {k: list(v) for k, v in shapes.items()},
        "onnxruntime_ms": round(ort_ms, 2),
        "emulator_ms": round(emu_ms, 2),
        "ratio": round(emu_ms / ort_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", nargs="*", default=list(SAMPLES))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench(name, args.threads, args.warmup, args.repeats, Path(tmp)))
    print(f"threads={args.threads} torch={torch.__version__} median of {args.repeats} runs")
    print(f"{'model':<22} {'input':<22} {'ORT ms':>9} {'emulator ms':>12} {'ratio':>7}")
    for row in rows:
        shape = "x".join(str(d) for d in next(iter(row["input"].values())))  # type: ignore[attr-defined]
        print(
            f"{row['model']:<22} {shape:<22} {row['onnxruntime_ms']:>9} "
            f"{row['emulator_ms']:>12} {row['ratio']:>7}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
