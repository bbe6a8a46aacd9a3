"""Isolated per-layer analysis: partial re-runs from cached float tensors vs the naive way.

Method. One zoo model, N rendered samples through the model's own pre-processing, calibrated
once for the target (not timed). Then, on the same executor, samples and plan:
- "full pass": one fully quantized pass over the N samples, in the same batches as the modes
  below (the unit);
- naive isolated: for every layer, a full pass from the graph inputs with only that layer's
  quantizers on (`QuantHooks(only=...)`), plus one float pass for the reference, same batches;
- quantlens isolated: one float pass caching the layers' cut tensors, then for every layer only
  its node and its successors re-run from the cache (batched when the model has a dynamic batch);
  once for the "both" variant only and once with the weight-only / activation-only split;
- gradient: one forward + one backward per batch.
It also prints the lower bound for any exact isolated method: re-running, for every layer, only
that layer and what depends on it costs Σ over layers of their re-run's multiply-accumulates,
here in units of one whole float pass's (Conv, ConvTranspose, Gemm and MatMul counted, at
the shapes of the first sample).
Both isolated ways must give the same SNRs (checked). CPU seconds of the process, the fewest of
4 runs for the unit and of 2 for each mode (the first run pays for warm-up), one run for the
naive way, with torch on `--threads` threads. `--naive-layers K` times the
naive way on K evenly spread layers and scales by the layer count (said so in the output).

    python benchmarks/analysis_speed.py [--model pplcnet-orientation] [--samples 4]
        [--target hailo8] [--threads 2] [--naive-layers K]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from quantlens.analysis import OutputNoise, batches, choose_batch_size, run_gradient, spearman
from quantlens.analysis.gradient import ESTIMATORS
from quantlens.analysis.isolated import run_isolated
from quantlens.analysis.metrics import channel_axes
from quantlens.analysis.ownership import LayerTensors
from quantlens.analyze import AnalyzeOptions, Setup, prepare_analysis
from quantlens.api import resolve_model
from quantlens.data.render import SampleKind, write_samples
from quantlens.emulate.fakequant import QuantHooks

T = TypeVar("T")
SAMPLES: dict[str, SampleKind] = {
    "doclayout-yolov8n": "pages",
    "ppocr-v6-rec-small": "text-lines",
    "pplcnet-orientation": "rotated-pages",
}


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """CPU seconds of this process: on a shared machine wall-clock time swings with the load of
    other processes, CPU time much less."""
    start = time.process_time()
    value = fn()
    return value, time.process_time() - start


def full_pass(setup: Setup, size: int) -> None:
    hooks = QuantHooks(setup.plan, setup.executor.device)
    with torch.inference_mode():
        for feed in batches(setup.feeds, size):
            setup.executor.run(feed, hooks=hooks)


def best_of(runs: int, fn: Callable[[], T]) -> tuple[T, float]:
    """The last value and the fewest CPU seconds of `runs` runs (the first pays for warm-up)."""
    results = [timed(fn) for _ in range(runs)]
    return results[-1][0], min(seconds for _, seconds in results)


def naive_isolated(setup: Setup, layers: Sequence[LayerTensors], size: int) -> dict[str, float]:
    ex = setup.executor
    snr: dict[str, float] = {}
    axes = channel_axes(ex.model.graph.outputs)
    with torch.inference_mode():
        feeds = list(batches(setup.feeds, size))
        reference = [ex.run(feed) for feed in feeds]
        for lt in layers:
            hooks = QuantHooks(setup.plan, ex.device, only=lt.quantizers("both"))
            noise = OutputNoise(axes=axes)
            for feed, ref in zip(feeds, reference):
                noise.add(ref, ex.run(feed, hooks=hooks))
            snr[lt.id] = noise.snr_db
    return snr


def mac_bound(setup: Setup) -> float:
    """Σ over layers of the MACs of the steps an isolated re-run from the layer's cut executes,
    over the MACs of the whole graph."""
    ex = setup.executor
    weighted = [s for s in ex.steps if s.ctx.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    names = {n for s in weighted for n in (*s.inputs[:2], s.outputs[0]) if n is not None}
    feed = next(iter(batches(setup.feeds, 1)))
    with torch.inference_mode():
        seen: dict[str, Any] = {**feed, **ex.run(feed, keep=names - set(ex.weights) - set(feed))}
    shape = {
        n: tuple(ex.weights[n].shape) if n in ex.weights else tuple(seen[n].shape) for n in names
    }
    macs = {
        s.index: step_macs(
            s.ctx.op_type, [shape[n] for n in s.inputs[:2] if n], shape[s.outputs[0]]
        )
        for s in weighted
    }
    total = sum(macs.values())
    rerun = 0
    for lt in setup.layers:
        plan = ex.plan(ex.output_names, lt.cut)
        rerun += sum(macs.get(s.index, 0) for s in plan.steps)
    return rerun / total


def step_macs(op: str, inputs: list[tuple[int, ...]], out: tuple[int, ...]) -> int:
    """Multiply-accumulates of one weighted op from its input and output shapes."""
    if op == "Conv":  # each output element: in-channels per group x kernel window
        return math.prod(out) * math.prod(inputs[1][1:])
    if op == "ConvTranspose":  # each input element scatters into out-channels x window
        return math.prod(inputs[0]) * math.prod(inputs[1][1:])
    return math.prod(out) * inputs[0][-1]  # Gemm/MatMul: inner dimension (no transA here)


def spread(layers: Sequence[LayerTensors], count: int | None) -> list[LayerTensors]:
    if count is None or count >= len(layers):
        return list(layers)
    step = len(layers) / count
    return [layers[int(i * step)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pplcnet-orientation")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--target", default="hailo8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--naive-layers", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("QUANTLENS_CACHE", "/tmp/qlcache")
    path = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_samples(SAMPLES[args.model], args.samples, data, 0)
        opts = AnalyzeOptions(calib=data, target=args.target, run_dir=Path(tmp) / "run")
        setup = prepare_analysis(path, opts, None)
        report(setup, args.naive_layers)


def report(setup: Setup, naive_layers: int | None) -> None:
    ex, plan, layers, feeds = setup.executor, setup.plan, setup.layers, setup.feeds
    keep = {n for lt in layers for n in lt.cut}
    size = choose_batch_size(ex, feeds, keep, 2048 << 20, 8)
    _, unit = best_of(4, lambda: full_pass(setup, size))
    subset = spread(layers, naive_layers)
    naive, t_naive = timed(lambda: naive_isolated(setup, subset, size))
    t_naive *= len(layers) / len(subset)
    both, t_both = best_of(
        2, lambda: run_isolated(ex, plan, layers, batches(feeds, size), ("both",))
    )
    _, t_split = best_of(2, lambda: run_isolated(ex, plan, layers, batches(feeds, size)))
    grad, t_grad = best_of(
        2, lambda: run_gradient(ex, plan, layers, batches(feeds, size), estimators=ESTIMATORS)
    )
    _, t_grad = best_of(2, lambda: run_gradient(ex, plan, layers, batches(feeds, size)))
    iso = {lt.id: both.snr_db(lt.id) for lt in layers}
    gap = max(abs(naive[k] - (iso[k] or 0.0)) for k in naive if math.isfinite(naive[k]))
    ids = [lt.id for lt in layers]
    iso_values = [iso[k] or math.nan for k in ids]
    rho = {e: spearman(iso_values, [grad.snr_db(k, estimator=e) for k in ids]) for e in ESTIMATORS}
    scaled = "" if len(subset) == len(layers) else f" (timed on {len(subset)} layers, scaled)"
    print(f"model {setup.path.name}, target {plan.target}, {len(feeds)} samples, batch {size}, ")
    print(f"{len(layers)} layers, {len(ex.steps)} nodes, {torch.get_num_threads()} threads")
    print(f"{'run':44s} {'CPU s':>9s} {'full passes':>12s}")
    rows = [
        ("one full quantized pass (unit)", unit),
        (f"naive isolated, all layers{scaled}", t_naive),
        ("quantlens isolated, all layers (both)", t_both),
        ("quantlens isolated, all layers (both+w+a)", t_split),
        ("gradient (1 forward + 1 backward)", t_grad),
    ]
    for label, seconds in rows:
        print(f"{label:44s} {seconds:9.2f} {seconds / unit:12.1f}")
    print(f"speed-up over naive (both): {t_naive / t_both:.1f}x")
    print(f"lower bound for any exact isolated method: {mac_bound(setup):.1f} float passes of MACs")
    print(f"max |SNR naive - SNR isolated| over timed layers: {gap:.2e} dB")
    ranks = ", ".join(f"{e} {r:.3f}" for e, r in rho.items())
    print(f"Spearman gradient vs isolated, by estimator ({ESTIMATORS[0]} is the default): {ranks}")
    worst = sorted(ids, key=lambda k: iso[k] or math.inf)[:5]
    print("worst isolated:", ", ".join(f"{k} {iso[k]:.1f} dB" for k in worst))


if __name__ == "__main__":
    main()
