"""Bias correction: one sweep (the default since this benchmark) vs one pass per layer.

Method: for a zoo model, N rendered calibration samples (seed 1) are prepared as the search
prepares them (`prepare_search`: the target's all-int8 plan from min-max ranges, a zero bias on
every Conv/Gemm that lacks one). Empirical bias correction then runs twice on the same executor,
plan and samples, one after the other, each timed with `time.perf_counter`:

- "passes": `BiasCorrectionOptions(max_passes=<layers>)`, the exact layer-by-layer method as it
  ran before: the quantized model is run up to each layer again, once per layer;
- "sweep": the default, one quantized pass that keeps each sample's tensors at the cut after a
  layer, recomputes the layer once its bias moved, and goes on from there.

It prints both times, their ratio, and how far the two sets of corrected biases are apart (the
largest absolute difference over all biases, and over the largest bias move), as JSON.

    python benchmarks/bias_correction_speed.py [--model picodet-layout-cdla]
        [--target ort-cpu] [--samples 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from quantlens.api import resolve_model
from quantlens.data.render import write_samples
from quantlens.fixes.bias_correction import BiasCorrectionOptions, bias_correction
from quantlens.pipeline.search import prepare_search
from quantlens.search_run import SearchOptions

KINDS = {
    "doclayout-yolov8n": "pages",
    "picodet-layout-cdla": "cdla-pages",
    "ppocr-v6-det-small": "text-pages",
    "ppocr-v6-rec-small": "text-lines",
    "pplcnet-orientation": "rotated-pages",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="picodet-layout-cdla", choices=sorted(KINDS))
    parser.add_argument("--target", default="ort-cpu")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = write_samples(KINDS[args.model], args.samples, work / "calib", seed=1)
        opts = SearchOptions(
            calib=calib, target=args.target, run_dir=work / "run", samples=args.samples
        )
        setup = prepare_search(resolve_model(args.model), opts)
        executor, plan, feeds = setup.executor, setup.int8, list(setup.feeds)
        layers = sum(1 for q in plan.weights.values() if q.bias_of is not None)
        times, results = {}, {}
        for name, options in (
            ("passes", BiasCorrectionOptions(samples=len(feeds), max_passes=layers)),
            ("sweep", BiasCorrectionOptions(samples=len(feeds))),
        ):
            start = time.perf_counter()
            results[name] = bias_correction(executor, plan, feeds, options)
            times[name] = time.perf_counter() - start
    exact, swept = results["passes"].weights, results["sweep"].weights
    diffs = [float(np.abs(swept[n] - v).max()) for n, v in exact.items() if n in swept]
    moves = [float(np.abs(v).max()) for v in exact.values()]
    print(
        json.dumps(
            {
                "model": args.model,
                "target": args.target,
                "samples": len(feeds),
                "layers_with_bias": layers,
                "biases_moved": {"passes": len(exact), "sweep": len(swept)},
                "seconds": {k: round(v, 1) for k, v in times.items()},
                "passes_over_sweep": round(times["passes"] / times["sweep"], 2),
                "max_abs_bias_difference": max(diffs, default=0.0),
                "largest_bias_move": max(moves, default=0.0),
                "load_average": [round(x, 1) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
