"""Scale-out on Ray: one process against 1 and 2 Ray workers on the zoo detector.

Method. doclayout-yolov8n (1x3x1024x1024) for `hailo8`; rendered DocLayNet-like pages (seed 1
for calibration, seed 2 for evaluation, as `quantlens demo`). Two jobs, each run three ways in
a fresh run folder (so every way calibrates, on its workers when it has them):

- isolated analysis: `analyze --mode isolated` (the "both" variant) on `--analysis-samples`
  pages, batch 1;
- search: `search --no-fixes` with `--eval` evaluation pages (mAP50-95), `--max-evals` full
  evaluations at most, proxy SNR on 4 pages, unit noise on 2.

Ways: one process (torch on every core), `--workers 1` (one actor, every core) and `--workers 2`
(two actors, one thread each), all on a local Ray runtime started once (not timed; its start is
printed). Wall-clock seconds of each stage call, which include starting the actors and sending
them the model. Results are checked equal across ways where the thread count does not change the
rounding (the chosen point, the ranking); the numbers are printed.

From T1 and T2 (1 and 2 workers) a model T(N) = S + P/N is fitted (S: what does not spread:
the driver's folding, plans, starting actors; P: what does) and T(N) printed for larger N.

    python benchmarks/scale_out.py [--eval 64] [--calib 8] [--analysis-samples 2]
        [--max-evals 4] [--ways 0,1,2] [--jobs analysis,search] [--threads N]
        [--run-dir runs/bench-scale]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.pipeline.analyze import AnalyzeOptions, analyze_model
from quantlens.pipeline.flows import search_model
from quantlens.pipeline.search import SearchOptions
from quantlens.scale import ScaleOptions

MODEL = "doclayout-yolov8n"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def scale_for(workers: int) -> ScaleOptions | None:
    return ScaleOptions(workers=workers) if workers else None


def analysis(model: Path, calib: Path, args: argparse.Namespace, workers: int) -> Any:
    opts = AnalyzeOptions(
        calib=calib,
        target="hailo8",
        run_dir=args.run_dir / f"analyze-{workers}",
        mode="isolated",
        samples=args.analysis_samples,
        split=0,
        max_batch=1,
        scale=scale_for(workers),
    )
    return analyze_model(model, opts)


def search(model: Path, calib: Path, data: Path, args: argparse.Namespace, workers: int) -> Any:
    opts = SearchOptions(
        calib=calib,
        target="hailo8",
        run_dir=args.run_dir / f"search-{workers}",
        data=data,
        task="detection",
        max_cost=1.10,
        max_evals=args.max_evals,
        samples=4,
        sensitivity_samples=2,
        export=False,
        # Like for like: a search on workers tries no fixes (the workers hold the unfixed
        # weights), so the one-process way skips them too.
        try_fixes=False,
        scale=scale_for(workers),
    )
    return search_model(model, opts)


def fit(t1: float, t2: float) -> tuple[float, float]:
    """S and P of T(N) = S + P / N through (1, t1) and (2, t2)."""
    parallel = 2.0 * (t1 - t2)
    return t1 - parallel, parallel


def report(name: str, seconds: dict[int, float]) -> None:
    base = seconds.get(0)
    print(f"\n{name}: wall seconds")
    for workers, value in sorted(seconds.items()):
        way = "one process" if workers == 0 else f"{workers} worker(s)"
        ratio = f"  {value / base:5.2f}x one process" if base else ""
        print(f"  {way:14} {value:8.1f}{ratio}")
    if 1 in seconds and 2 in seconds:
        serial, parallel = fit(seconds[1], seconds[2])
        if serial < 0 or parallel < 0:
            # More than 2x (or slower) from 1 to 2 workers: not the work spreading; the load or
            # the threads per worker changed more than the worker count did.
            print("  no fit: T1/T2 is outside [1, 2]")
            return
        print(f"  fit T(N) = {serial:.1f} + {parallel:.1f}/N s:", end="")
        print("  ".join(f" N={n}: {serial + parallel / n:.1f}" for n in (4, 8, 16)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", type=int, default=64)
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--analysis-samples", type=int, default=2)
    parser.add_argument("--max-evals", type=int, default=4)
    parser.add_argument("--ways", default="0,1,2")
    parser.add_argument("--jobs", default="analysis,search")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-scale"))
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of the one-process way (0: all)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # the workers set their own

    model = zoo.fetch(MODEL)
    calib = write_samples("pages", args.calib, args.run_dir / "data" / "calib", seed=1)
    data = write_samples("pages", args.eval, args.run_dir / "data" / "eval", seed=2)
    _, started = timed(
        lambda: ray.init(
            address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False
        )
    )
    print(
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads "
        f"in one process), ray {ray.__version__}"
    )
    print(f"local Ray runtime started in {started:.1f} s (not counted below)")
    ways = [int(w) for w in args.ways.split(",")]
    jobs = args.jobs.split(",")
    if "analysis" in jobs:
        found = {w: timed(lambda w=w: analysis(model, calib, args, w)) for w in ways}
        report(
            f"isolated analysis, {args.analysis_samples} pages",
            {w: s for w, (_, s) in found.items()},
        )
        for w, (result, _) in found.items():
            print(f"  {w} worker(s): stages {result.seconds}, worst 3 {result.ranking[:3]}")
    if "search" in jobs:
        found = {w: timed(lambda w=w: search(model, calib, data, args, w)) for w in ways}
        report(f"search, {args.eval} evaluation pages", {w: s for w, (_, s) in found.items()})
        for w, (result, _) in found.items():
            chosen = result.point(result.chosen)
            print(
                f"  {w} worker(s): float {result.float_metric:.4f}, chosen {result.chosen} "
                f"(metric {chosen.metric if chosen else None}), "
                f"{result.full_evaluations} full evaluations, {len(result.points)} points"
            )


if __name__ == "__main__":
    main()
