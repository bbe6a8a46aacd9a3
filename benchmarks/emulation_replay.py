"""Our emulation re-scored against a vendor run already on disk: how much closer to the chip
does the current code get, with the vendor's side held fixed?

`vendor_check.py --compare` leaves, per model, a run folder (`run-<target>-<variant>`), the
vendor's outputs (`<format>-<variant>/outputs.npz`) and its per-layer dumps (`layers.npz`).
The vendor's model depends only on the exported files, so a change to the emulation alone can
be measured without the vendor's tool: this script copies the run folder, rebuilds its plan
from the run's own calibration with the importable quantlens (as `quantlens quantize` does at
optimize level 0), and reports the vendor's output SNR against our emulation and against float,
and `quantlens compare`'s per-layer code agreement on the dumps. Run it once with the old code
on PYTHONPATH (e.g. a `git archive` of the old commit's src) and once with the new.

With --noise-floor it also re-runs the emulation with other float32 arithmetic for Conv (exact
float64 sums cast to float32, as an integer accumulator would give; and torch's non-oneDNN Conv,
another summation order) and reports each against the vendor and against our default: how far
apart two runs of the same quantized model land when only Conv rounding differs. Where that is
no closer than our distance from the vendor, the vendor's own float32 noise is the floor.

    python benchmarks/emulation_replay.py WORK/MODEL --model MODEL [--format tpu-mlir]
        [--variant int8] [--label after] [--noise-floor] [--json results.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import vendor_check as vc  # noqa: E402


def rebuild_plan(run: Path) -> dict[str, int]:
    """The run's plan from its calibration with the current code; requantized ops by kind."""
    import onnx_ir as ir

    from quantlens.artifacts.calibration import CalibrationStats
    from quantlens.emulate import Executor
    from quantlens.emulate.plan import build_plan, quantization_points
    from quantlens.schemes.assignment import Assignment
    from quantlens.schemes.profiles import get_profile

    assignment = Assignment.load(run / "assignment.json")
    profile = get_profile(assignment.target)
    model = ir.load(run / "model.canonical.onnx")
    stats = CalibrationStats.load(run / "calibration.json")
    points = quantization_points(model, assignment, profile)
    ranges = {n: (t.clip_min, t.clip_max) for n, t in stats.tensors.items()}
    plan = build_plan(points, ranges, Executor(model).weights, profile.name)
    plan.save(run / "plan.json")
    # The folder's manifest holds each file's hash: record the rebuilt plan's.
    manifest = json.loads((run / "run.json").read_text())
    digest = hashlib.sha256((run / "plan.json").read_bytes()).hexdigest()
    manifest["files"]["plan.json"]["sha256"] = digest
    (run / "run.json").write_text(json.dumps(manifest, indent=2))
    kinds: dict[str, int] = {}
    for spec in plan.requant.values():
        kind = getattr(spec, "kind", "add")  # older code has only integer Adds
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def code_agreement(run: Path, dumps: Path, inputs: Path, fmt: str, out: Path) -> dict[str, Any]:
    """`quantlens compare` on the vendor's dumps: tensors with >= 99% of codes equal, etc."""
    dump_format = "tpu-mlir" if fmt == "tpu-mlir" else "npz"
    done = subprocess.run(
        [sys.executable, "-m", "quantlens", "compare", str(run), "--dumps", str(dumps),
         "-f", dump_format, "--inputs", str(inputs), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return {"compare_error": done.stderr.strip().splitlines()[-1:]}
    report = json.loads((out / "compare.json").read_text())
    codes = [t["codes_equal"] for t in report["tensors"] if t.get("codes_equal") is not None]
    return {
        "tensors_ge_99": f"{sum(c >= 0.99 for c in codes)}/{len(codes)}",
        "codes_median": round(statistics.median(codes), 4) if codes else None,
        "first_divergence": report["first_divergence"],
    }


@contextlib.contextmanager
def exact_conv_sums() -> Iterator[None]:
    """Conv computed in float64 and cast to float32: the sum an integer accumulator gives, with
    no float32 summation order of its own."""
    from quantlens.emulate import registry

    registry.find_kernel("Conv", 13)  # loads the built-in kernels
    specs = registry._REGISTRY[("", "Conv")]

    def exact(fn: Any) -> Any:
        return lambda ctx, inputs: fn(ctx, [x if x is None else x.double() for x in inputs]).float()

    registry._REGISTRY[("", "Conv")] = [dataclasses.replace(s, fn=exact(s.fn)) for s in specs]
    try:
        yield
    finally:
        registry._REGISTRY[("", "Conv")] = specs


def noise_floor(
    run: Path, feeds: list[dict[str, np.ndarray]], ours: dict[str, np.ndarray],
    theirs: dict[str, np.ndarray],
) -> dict[str, float | None]:  # fmt: skip
    """Our emulation under other float32 Conv arithmetic, against the vendor and against ours."""
    import torch

    variants = {
        "exact_conv_sums": exact_conv_sums(),
        "torch_conv_without_onednn": torch.backends.mkldnn.flags(enabled=False),
    }
    result: dict[str, float | None] = {}
    for label, arithmetic in variants.items():
        with arithmetic:
            other = vc.emulate(run, feeds)[1]
        result[f"{label}_vs_vendor_db"] = vc.pooled_snr(other, theirs)
        result[f"{label}_vs_emulation_db"] = vc.pooled_snr(ours, other)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a model's folder under vendor_check's --work")
    parser.add_argument("--model", required=True, choices=list(vc.SAMPLES))
    parser.add_argument("--format", default="tpu-mlir", choices=list(vc.VENDORS))
    parser.add_argument("--variant", default="int8", choices=vc.VARIANTS)
    parser.add_argument("--label", default="replay")
    parser.add_argument("--noise-floor", action="store_true", help="other Conv arithmetic too")
    parser.add_argument("--json", type=Path, default=None, help="append the result line here")
    args = parser.parse_args()
    vendor = vc.VENDORS[args.format]
    source = args.root / f"run-{vendor.target}-{args.variant}"
    vendor_dir = args.root / f"{args.format}-{args.variant}"
    run = args.root / f"replay-{args.label}"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(source, run)
    result: dict[str, Any] = {"model": args.model, "label": args.label}
    result["integer_ops"] = rebuild_plan(run)
    theirs = dict(np.load(vendor_dir / "outputs.npz"))
    # The samples vendor_check fed the vendor: as many as it has outputs, of one shape.
    count = len(next(iter(theirs.values())))
    feeds = vc.feeds_of_one_shape(args.model, count, args.root)
    floats, ours = vc.emulate(run, feeds)
    result["vs_emulation_db"] = vc.pooled_snr(ours, theirs)
    result["vs_float_db"] = vc.pooled_snr(floats, theirs)
    if args.noise_floor:
        result.update(noise_floor(run, feeds, ours, theirs))
    if (vendor_dir / "layers.npz").exists():
        result.update(
            code_agreement(
                run,
                vendor_dir / "layers.npz",
                args.root / "inputs.npz",
                args.format,
                args.root / f"replay-{args.label}-compare",
            )
        )
    line = json.dumps(result)
    print(line)
    if args.json:
        with args.json.open("a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
