"""Emulator float time over ONNX Runtime float time on the zoo models, side by side in one run,
and the overhead of quantized emulation over float emulation.

Same inputs (rendered samples through each model's own pre-processing), same batch, same thread
count for both. The four ways (ONNX Runtime, float emulation, two quantized) run in turn, one
call each per round, `--warmup` rounds then `--repeats` timed ones; each timing is the fastest
of its rounds (load from other processes only ever adds time, and taking turns exposes every way
to the same load). Quantized
emulation uses min-max ranges from the same input under three profiles: `ort-cpu` (quantizers
on the inputs of weighted layers), `hailo8` (a quantizer on every tensor, the worst case) and
`qnn-htp` (the same, rounded as AIMET's sim rounds). The hailo8 and qnn-htp plans also run as
their ONNX simulation in ONNX Runtime (`quantlens.export.simulation`, graph optimizations off:
the engine the search scores qnn-htp candidates on), timed in the same rounds.

    python benchmarks/emulator_speed.py [--threads 2] [--repeats 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from quantlens.api import prepare
from quantlens.calib import calibrate
from quantlens.data import zoo
from quantlens.data.preprocess import load_inputs
from quantlens.data.render import write_samples
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.ort import OrtRunner
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.export.simulation import export_simulation
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan

SAMPLES = {
    "doclayout-yolov8n": "pages",
    "ppocr-v6-rec-small": "text-lines",
    "pplcnet-orientation": "rotated-pages",
}


def fastest_ms(
    ways: dict[str, Callable[[], object]], warmup: int, repeats: int
) -> dict[str, float]:
    """Wall-clock ms of each way, the fastest of `repeats` rounds in which every way runs once.
    A pause follows each call: ONNX Runtime's pool threads spin for a while after a run, and
    on 2 cores they would slow down whatever runs next."""
    for _ in range(warmup):
        for fn in ways.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            time.sleep(PAUSE_S)
    return {name: 1000.0 * min(values) for name, values in times.items()}


def feeds_for(name: str, workdir: Path) -> dict[str, np.ndarray]:
    folder = write_samples(SAMPLES[name], 1, workdir / name, seed=0)  # type: ignore[arg-type]
    return load_inputs(folder, zoo.get_entry(name).input)[0]


TARGETS = ("ort-cpu", "hailo8", "qnn-htp")
SIMULATED = ("hailo8", "qnn-htp")
PAUSE_S = 0.05


def bench(name: str, threads: int, warmup: int, repeats: int, workdir: Path) -> dict[str, object]:
    path = zoo.fetch(name)
    feeds = feeds_for(name, workdir)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    executor = Executor(prepare(path, shapes).model)
    reference = OrtRunner(path, threads=threads)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    plans = {target: plan_for(executor, feeds, target) for target in TARGETS}
    ways: dict[str, Callable[[], object]] = {
        "ort": lambda: reference.run(feeds),
        "float": lambda: executor.run(tensors),
    }
    for target, plan in plans.items():
        hooks = QuantHooks(plan)
        ways[target] = lambda h=hooks: executor.run(tensors, hooks=h)  # type: ignore[misc]
    for target in SIMULATED:
        sim = export_simulation(executor.model, plans[target], workdir / f"{name}-{target}.onnx")
        runner = OrtRunner(sim, threads=threads, optimize=False)
        ways[f"sim-{target}"] = lambda r=runner: r.run(feeds)  # type: ignore[misc]
    with torch.inference_mode():
        ms = fastest_ms(ways, warmup, repeats)
    ort_ms, emu_ms = ms["ort"], ms["float"]
    quant_ms = {target: ms[target] for target in TARGETS}
    return {
        "model": name,
        "input": {k: list(v) for k, v in shapes.items()},
        "onnxruntime_ms": round(ort_ms, 2),
        "emulator_ms": round(emu_ms, 2),
        "ratio": round(emu_ms / ort_ms, 2),
        "quantized_ms": {k: round(v, 2) for k, v in quant_ms.items()},
        "quantized_over_float": {k: round(v / emu_ms, 2) for k, v in quant_ms.items()},
        "simulation_ms": {t: round(ms[f"sim-{t}"], 2) for t in SIMULATED},
        "simulation_over_emulation": {t: round(ms[f"sim-{t}"] / ms[t], 2) for t in SIMULATED},
    }


def plan_for(executor: Executor, feeds: dict[str, np.ndarray], target: str) -> QuantPlan:
    """The all-int8 plan for `target` with min-max ranges from `feeds`."""
    profile = get_profile(target)
    points = quantization_points(executor.model, Assignment(target=target), profile)
    stats = calibrate(executor, [feeds], points.calibration_targets(), "minmax")
    ranges = {name: (t.clip_min, t.clip_max) for name, t in stats.tensors.items()}
    return build_plan(points, ranges, executor.weights, target)


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
    print(f"threads={args.threads} torch={torch.__version__} fastest of {args.repeats} rounds")
    header = f"{'model':<22} {'input':<16} {'ORT ms':>8} {'emulator ms':>12} {'ratio':>6}"
    print(f"{header} {'int8 ort-cpu ms':>16} {'x float':>8} {'int8 hailo8 ms':>15} {'x float':>8}")
    for row in rows:
        shape = "x".join(str(d) for d in next(iter(row["input"].values())))  # type: ignore[attr-defined]
        quant, over = row["quantized_ms"], row["quantized_over_float"]
        print(
            f"{row['model']:<22} {shape:<16} {row['onnxruntime_ms']:>8} "
            f"{row['emulator_ms']:>12} {row['ratio']:>6} {quant['ort-cpu']:>16} "  # type: ignore[index]
            f"{over['ort-cpu']:>8} {quant['hailo8']:>15} {over['hailo8']:>8}"  # type: ignore[index]
        )
    print(
        f"{'model':<22} {'int8 qnn-htp ms':>16} "
        + " ".join(f"{'sim ' + t + ' ms':>16} {'x emulated':>10}" for t in SIMULATED)
    )
    for row in rows:
        sim, over = row["simulation_ms"], row["simulation_over_emulation"]
        cells = " ".join(f"{sim[t]:>16} {over[t]:>10}" for t in SIMULATED)  # type: ignore[index]
        print(f"{row['model']:<22} {row['quantized_ms']['qnn-htp']:>16} {cells}")  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
