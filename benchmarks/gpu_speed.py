"""The emulator, calibration and analysis on a CUDA GPU against the CPU, side by side in one run.

Method. For each zoo model, N rendered samples through the model's own pre-processing, one
target (default `hailo8`, a quantizer on every fused layer's output). The same code then runs
once per device, CPU first, each on its own executor built by `prepare_analysis` (canonicalize,
calibrate, plan: its wall time is a row of its own; each device gets a fresh run folder). The
CUDA rows run with the CPU's plan, so that their answers differ by arithmetic alone (the largest
relative gap between the two devices' calibrated ranges is printed). Rows, all wall-clock
seconds with the device synchronized before the clock is read, the fewest of `--runs` runs after
one warm-up run:

- calibration: percentile histograms of every float tensor (uint8-asym targets), the default
  method, on the session's executor;
- one float pass and one fully quantized pass over the samples, in the batches the analysis uses;
- isolated analysis of every layer (cached cuts, partial re-runs; "both" variant) and the
  gradient estimate (one forward and one backward per batch).

Agreement, so a speed-up is not bought with a different answer: the quantized outputs on CUDA
against those on the CPU (SNR, dB; and once more with torch's default TF32 convolutions, which
the executor turns off), the largest per-layer isolated SNR difference, the Spearman
rank correlation of the gradient estimates, and the fake quantizer's integer codes on CUDA
against the CPU's on 2^24 values that include exact ties (the CPU's codes are ONNX
QuantizeLinear's: `tests/emulate` checks them against ONNX Runtime). CPU rows run on
`--threads` torch threads (default: every core of the machine).

    python benchmarks/gpu_speed.py [--models M ...] [--samples 16] [--target hailo8] [--json out]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from quantlens.analysis import batches, choose_batch_size, run_gradient, run_isolated, spearman
from quantlens.analysis.metrics import OutputNoise, channel_axes
from quantlens.api import resolve_model
from quantlens.calib import calibrate
from quantlens.data.render import SampleKind, write_samples
from quantlens.emulate.executor import exact_fp32_on_cuda
from quantlens.emulate.fakequant import QuantHooks, quantize_to_int
from quantlens.pipeline.analyze import AnalyzeOptions, Setup, prepare_analysis
from quantlens.schemes.formats import int_format

T = TypeVar("T")
SAMPLES: dict[str, SampleKind] = {
    "pplcnet-orientation": "rotated-pages",
    "ppocr-v6-rec-small": "text-lines",
    "doclayout-yolov8n": "pages",
}
Feed = dict[str, np.ndarray]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fewest(runs: int, device: torch.device, fn: Callable[[], T]) -> tuple[T, float]:
    """The last value and the fewest wall seconds of `runs` runs after one warm-up run."""
    value = fn()
    times = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        value = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return value, min(times)


def passes(setup: Setup, size: int, quantized: bool) -> list[dict[str, torch.Tensor]]:
    ex = setup.executor
    hooks = QuantHooks(setup.plan, ex.device) if quantized else None
    with torch.inference_mode():
        return [ex.run(feed, hooks=hooks) for feed in batches(setup.feeds, size)]


def calibration(setup: Setup) -> int:
    import onnx_ir as ir

    fmt = int_format("uint8-asym")
    graph = setup.executor.model.graph
    values = [*graph.inputs, *(value for node in graph for value in node.outputs)]
    targets = {v.name: fmt for v in values if v.name and v.dtype == ir.DataType.FLOAT}
    return len(calibrate(setup.executor, setup.feeds, targets, "percentile").tensors)


def measure(setup: Setup, size: int, runs: int, prepare_s: float) -> dict[str, Any]:
    ex, plan, layers = setup.executor, setup.plan, setup.layers
    device = ex.device
    _, t_cal = fewest(runs, device, lambda: calibration(setup))
    floats, t_float = fewest(runs, device, lambda: passes(setup, size, False))
    outputs, t_quant = fewest(runs, device, lambda: passes(setup, size, True))
    iso, t_iso = fewest(
        runs, device, lambda: run_isolated(ex, plan, layers, batches(setup.feeds, size), ("both",))
    )
    grad, t_grad = fewest(
        runs, device, lambda: run_gradient(ex, plan, layers, batches(setup.feeds, size))
    )
    return {
        "seconds": {
            "prepare (canonicalize, calibrate, plan)": prepare_s,
            "calibration (percentile, every tensor)": t_cal,
            "float pass": t_float,
            "quantized pass": t_quant,
            "isolated analysis (all layers)": t_iso,
            "gradient analysis": t_grad,
        },
        "outputs": [{k: v.detach().cpu() for k, v in batch.items()} for batch in outputs],
        "floats": [{k: v.detach().cpu() for k, v in batch.items()} for batch in floats],
        "quantized vs float, SNR dB": snr(setup, floats, outputs),
        "isolated": {lt.id: iso.snr_db(lt.id) for lt in layers},
        "gradient": {lt.id: grad.snr_db(lt.id) for lt in layers},
    }


def snr(
    setup: Setup, reference: list[dict[str, torch.Tensor]], other: list[dict[str, torch.Tensor]]
) -> float:
    noise = OutputNoise(axes=channel_axes(setup.executor.model.graph.outputs))
    for a, b in zip(reference, other):
        noise.add({k: v.cpu() for k, v in a.items()}, {k: v.cpu() for k, v in b.items()})
    return noise.snr_db


def agreement(setup: Setup, cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, float | None]:
    ids = list(cpu["isolated"])
    gaps = [
        abs(cpu["isolated"][k] - gpu["isolated"][k])
        for k in ids
        if cpu["isolated"][k] is not None
        and gpu["isolated"][k] is not None
        and math.isfinite(cpu["isolated"][k])
        and math.isfinite(gpu["isolated"][k])
    ]
    return {
        "float outputs cuda vs cpu, SNR dB": snr(setup, cpu["floats"], gpu["floats"]),
        "quantized outputs cuda vs cpu, SNR dB": snr(setup, cpu["outputs"], gpu["outputs"]),
        "quantized vs float on cpu, SNR dB": cpu["quantized vs float, SNR dB"],
        "quantized vs float on cuda, SNR dB": gpu["quantized vs float, SNR dB"],
        "max |isolated SNR cuda - cpu|, dB": max(gaps) if gaps else None,
        "Spearman gradient cuda vs cpu": spearman(
            [cpu["gradient"][k] for k in ids], [gpu["gradient"][k] for k in ids]
        ),
    }


def range_gap(cpu: Setup, gpu: Setup) -> float:
    """The largest relative difference of a calibrated clip range between the two devices."""
    worst = 0.0
    for name, a in cpu.calibration.tensors.items():
        b = gpu.calibration.tensors[name]
        span = max(a.clip_max - a.clip_min, 1e-12)
        worst = max(worst, abs(a.clip_min - b.clip_min) / span, abs(a.clip_max - b.clip_max) / span)
    return worst


def tf32_drift(setup: Setup, size: int, reference: list[dict[str, torch.Tensor]]) -> float:
    """The quantized outputs with cuDNN's and cuBLAS's default TF32 against the CPU's: what the
    emulator's IEEE float32 setting (`exact_fp32_on_cuda`) avoids."""
    exact_fp32_on_cuda("tf32")
    try:
        outputs = passes(setup, size, True)
    finally:
        exact_fp32_on_cuda()
    return snr(setup, reference, outputs)


def code_agreement(device: torch.device) -> dict[str, float]:
    """The fraction of QuantizeLinear codes equal on `device` and the CPU, per tensor and per
    channel, on values drawn over several magnitudes plus exact ties halfway between codes."""
    gen = torch.Generator().manual_seed(0)
    n = 1 << 24
    x = torch.randn(n, generator=gen) * torch.exp2(torch.randint(-6, 6, (n,), generator=gen))
    scale = torch.tensor([0.0173])
    ties = (torch.randint(-140, 140, (n // 8,), generator=gen) + 0.5) * scale
    x[: n // 8] = ties
    zero = torch.tensor([3.0])
    per_tensor = _equal(x, scale, zero, None, device)
    channels = 64
    xc = x.reshape(channels, -1)
    scales = torch.rand(channels, generator=gen) * 0.05 + 1e-3
    codes = torch.randint(-127, 127, (channels, 1024), generator=gen)
    xc[:, :1024] = (codes + 0.5) * scales[:, None]
    per_channel = _equal(xc, scales, torch.zeros(channels), 0, device)
    return {"per-tensor codes equal": per_tensor, "per-channel codes equal": per_channel}


def _equal(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int | None, device: torch.device
) -> float:
    cpu = quantize_to_int(x, scale, zero, -128, 127, axis)
    gpu = quantize_to_int(x.to(device), scale.to(device), zero.to(device), -128, 127, axis).cpu()
    return float((cpu == gpu).double().mean())


def run_model(
    name: str, samples: int, target: str, runs: int, gpu: str, tmp: Path
) -> dict[str, Any]:
    path = resolve_model(name)
    data = write_samples(SAMPLES[name], samples, tmp / f"{name}-data", 0)
    results: dict[str, Any] = {"model": name, "samples": samples, "target": target}
    setups: dict[str, Setup] = {}
    size = 0
    for key, device in (("cpu", "cpu"), ("cuda", gpu)):
        opts = AnalyzeOptions(
            calib=data, target=target, run_dir=tmp / f"{name}-{device}", device=device
        )
        start = time.perf_counter()
        setup = prepare_analysis(path, opts, None)
        sync(setup.executor.device)
        prepare_s = time.perf_counter() - start
        if not size:  # one batch size for both devices: the one the analysis would take here
            keep = {n for lt in setup.layers for n in lt.cut}
            size = choose_batch_size(setup.executor, setup.feeds, keep, 2048 << 20, 8)
        if key == "cuda":  # the CPU's plan, so that the rows below compare arithmetic alone
            results["ranges"] = range_gap(setups["cpu"], setup)
            setup = dataclasses.replace(setup, plan=setups["cpu"].plan)
        setups[key] = setup
        results[key] = measure(setup, size, runs, prepare_s)
        print(f"  {name} on {device}: done", flush=True)
    results["batch"] = size
    results["layers"] = len(setups["cpu"].layers)
    results["agreement"] = agreement(setups["cpu"], results["cpu"], results["cuda"])
    results["agreement"]["quantized outputs cuda with TF32 vs cpu, SNR dB"] = tf32_drift(
        setups["cuda"], size, results["cpu"]["outputs"]
    )
    for device in ("cpu", "cuda"):
        del results[device]["outputs"], results[device]["floats"]
    return results


def table(results: Sequence[dict[str, Any]], codes: dict[str, float]) -> None:
    for res in results:
        print(
            f"\n{res['model']} ({res['samples']} samples, batch {res['batch']}, "
            f"{res['layers']} layers, {res['target']})"
        )
        print(f"{'run':42s} {'CPU s':>9s} {'CUDA s':>9s} {'speed-up':>9s}")
        for row, cpu_s in res["cpu"]["seconds"].items():
            gpu_s = res["cuda"]["seconds"][row]
            print(f"{row:42s} {cpu_s:9.3f} {gpu_s:9.3f} {cpu_s / gpu_s:8.1f}x")
        print(f"  largest relative calibration range gap cuda vs cpu: {res['ranges']:.2e}")
        for label, value in res["agreement"].items():
            print(f"  {label}: {value if value is None else round(value, 4)}")
    for label, value in codes.items():
        print(f"fake quantizer, {label} (cuda vs cpu): {value:.8f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(SAMPLES), choices=list(SAMPLES))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--target", default="hailo8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None)
    # `--device cpu` runs the script end to end on a machine without a GPU (a dry run).
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark compares the CPU with a GPU")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}", flush=True)
    codes = code_agreement(device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results.append(
                run_model(name, args.samples, args.target, args.runs, args.device, Path(tmp))
            )
    table(results, codes)
    if args.json is not None:
        args.json.write_text(json.dumps({"codes": codes, "models": results}, indent=2))


if __name__ == "__main__":
    main()
