"""What the vendor arithmetic of a profile changes in the emulation: int8 output SNR against
float and the number of activation quantizers, with the profile's `arithmetic` as shipped and
with it switched off (a quantizer on every node output, signed symmetric grids), on the same
calibrated ranges and evaluation inputs.

    python benchmarks/placement_ab.py RUN_DIR INPUTS.npz --target hailo8 [--target bm1684x ...]

RUN_DIR is a `quantize` run folder whose calibration covers every node output in the 8-bit
grid the targets use (a `qnn-htp` run: uint8 asymmetric, which is also Hailo's 8-bit grid; a
`bm1684x` run for int8 symmetric); INPUTS.npz holds the evaluation inputs, samples stacked.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import onnx_ir as ir
import torch

from quantlens.artifacts.calibration import CalibrationStats
from quantlens.emulate import Executor
from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.plan import build_plan, quantization_points
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import Arithmetic, TargetProfile, get_profile


def output_snr(executor: Executor, hooks: QuantHooks, inputs: dict[str, np.ndarray]) -> float:
    """Worst over outputs of the SNR pooled over samples."""
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    count = len(next(iter(inputs.values())))
    with torch.inference_mode():
        for i in range(count):
            feed = {k: v[i : i + 1] for k, v in inputs.items()}
            ref = executor.run(feed)
            got = executor.run(feed, hooks=hooks)
            for name, value in ref.items():
                diff = (got[name].double() - value.double()).pow(2).sum().item()
                signal[name] = signal.get(name, 0.0) + value.double().pow(2).sum().item()
                noise[name] = noise.get(name, 0.0) + diff
    return min(10 * math.log10(signal[n] / noise[n]) if noise[n] else math.inf for n in signal)


def measure(model: ir.Model, profile: TargetProfile, stats: CalibrationStats, inputs) -> tuple:  # type: ignore[no-untyped-def]
    points = quantization_points(model, Assignment(target=profile.name), profile)
    ranges = {n: (t.clip_min, t.clip_max) for n, t in stats.tensors.items()}
    missing = [n for n in points.calibration_targets() if n not in ranges]
    if missing:
        raise SystemExit(f"the run's calibration lacks {missing[:3]}: use a qnn-htp/bm1684x run")
    executor = Executor(model)
    plan = build_plan(points, ranges, executor.weights, profile.name)
    quantized = sum(1 for q in plan.activations.values() if q.is_int)
    return output_snr(executor, QuantHooks(plan), inputs), quantized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("inputs")
    parser.add_argument("--target", action="append", required=True)
    args = parser.parse_args()
    model = ir.load(f"{args.run_dir}/model.canonical.onnx")
    stats = CalibrationStats.load(f"{args.run_dir}/calibration.json")
    inputs = dict(np.load(args.inputs))
    for target in args.target:
        shipped = get_profile(target)
        plain = shipped.model_copy(update={"arithmetic": Arithmetic()})
        for label, profile in (("without arithmetic", plain), ("with arithmetic", shipped)):
            snr, quantized = measure(model, profile, stats, inputs)
            print(f"{target} {label}: int8 output SNR {snr:.2f} dB, {quantized} quantizers")


if __name__ == "__main__":
    main()
