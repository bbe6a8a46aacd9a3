"""Mixed-precision search on doclayout-yolov8n: how much of the float-int8 gap each strategy
recovers, at what modeled cost, with how many full task-metric evaluations.

The pages are rendered with known layout boxes (calibration seed 1, evaluation seed 2, as in
`quantlens demo`); the metric is mAP50-95 from faster-coco-eval. All strategies share one run
folder with `resume`, so the calibration, the per-unit noise and any assignment two strategies
both try are computed once; each strategy's count of full evaluations is its own (cached or not).

    python benchmarks/search_quality.py --target hailo8 --calib 16 --eval 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.search.strategies import STRATEGIES
from quantlens.search_run import SearchOptions, search_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="hailo8")
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="samples for output-SNR checks")
    parser.add_argument("--sensitivity-samples", type=int, default=2)
    parser.add_argument("--max-cost", type=float, default=1.10)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-search"))
    args = parser.parse_args()

    model = zoo.fetch("doclayout-yolov8n")
    calib = write_samples("pages", args.calib, args.run_dir / "data" / "calib", seed=1)
    data = write_samples("pages", args.eval, args.run_dir / "data" / "eval", seed=2)
    rows = []
    for strategy in args.strategies.split(","):
        opts = SearchOptions(
            calib=calib,
            target=args.target,
            run_dir=args.run_dir,
            data=data,
            task="detection",
            strategy=strategy,
            max_cost=args.max_cost,
            samples=args.samples,
            sensitivity_samples=args.sensitivity_samples,
            resume=True,
            export=False,
        )
        start = time.perf_counter()
        report = search_model(model, opts, say=lambda m, s=strategy: print(f"  [{s}] {m}"))
        seconds = time.perf_counter() - start
        chosen, base = report.point(report.chosen), report.point(report.baseline)
        assert chosen is not None and base is not None
        gap = (report.float_metric or 0.0) - (base.metric or 0.0)
        recovered = ((chosen.metric or 0.0) - (base.metric or 0.0)) / gap if gap > 0 else 1.0
        rows.append((strategy, report, chosen, base, recovered, seconds))

    print(
        f"\ndoclayout-yolov8n on {args.target}: {args.calib} calibration / {args.eval} eval pages"
    )
    print(
        f"{'strategy':10} {'float':>7} {'int8':>7} {'chosen':>7} {'recovered':>9} "
        f"{'cost':>7} {'nodes':>6} {'full evals':>10} {'points':>6} {'seconds':>8}"
    )
    for strategy, report, chosen, base, recovered, seconds in rows:
        print(
            f"{strategy:10} {report.float_metric or 0:7.4f} {base.metric or 0:7.4f} "
            f"{chosen.metric if chosen.metric is not None else float('nan'):7.4f} "
            f"{recovered:9.1%} {chosen.cost:6.3f}x {len(chosen.modes):6d} "
            f"{report.full_evaluations:10d} {len(report.points):6d} {seconds:8.1f}"
        )


if __name__ == "__main__":
    main()
