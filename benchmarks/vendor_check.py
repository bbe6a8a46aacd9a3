"""Vendor files checked in the vendors' own tools: does the tool take our files, honour every
planned tensor, and build a model that agrees with our emulation of the same run?

For each zoo model, each format and two assignments (all-int8, and a mixed one that promotes
three weighted layers in the target's own modes) this script:

1. renders calibration samples (seed 0) and evaluation samples (seed 1) with known ground truth;
2. runs `quantlens quantize` for the format's target (one run folder per target and variant,
   reused by every format of that target) and `quantlens export --format F`;
3. hands the files to a worker in the vendor's own venv (`_vendor_<format>.py`, one JSON job
   in, one JSON line out: accepted?, planned vs honoured counts, the vendor model's outputs);
4. reports the vendor model's output SNR against our emulation of the same run (the torch
   executor with the run's plan) and against the float model, pooled over the evaluation set;
   where the target's plans allow it (not bm1684x), also against the run's plan written as an
   ONNX simulation and run by ONNX Runtime (`quantlens.export.simulation`, the engine the
   search scores qnn-htp candidates on).

Formats whose tool cannot run here (the Hailo DFC, the QNN converter) are checked against their
published grammar instead (`_vendor_grammar.py`), and the table says so.

    python benchmarks/vendor_check.py [--models pplcnet-orientation ...] [--formats tpu-mlir ...]
        [--variants int8 mixed] [--compare]
        [--tpu-mlir-python /work/vendor-venvs/tpu-mlir/bin/python]
        [--aimet-python /work/vendor-venvs/aimet/bin/python] [--calib 16] [--samples 4]
        [--work /tmp/vendor-check] [--json results.json]

The vendor venvs are built by `benchmarks/envs/tpu_mlir.sh` and `benchmarks/envs/aimet.sh`.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _peer_protocol import last_json  # a sibling file: the script's folder is on sys.path

HERE = Path(__file__).resolve().parent
SAMPLES = {
    "pplcnet-orientation": "rotated-pages",
    "ppocr-v6-rec-small": "text-lines",
    "doclayout-yolov8n": "pages",
}
VARIANTS = ("int8", "mixed")


@dataclass(frozen=True)
class Vendor:
    """A format, the target profile whose plan it carries, its worker and that worker's venv."""

    target: str
    worker: str
    venv: str  # "project" (this interpreter) or the argparse dest of a venv's python
    # The promoted layers' modes in the mixed assignment: first, middle, last weighted layer.
    mixed: tuple[str, str, str]


VENDORS = {
    "tpu-mlir": Vendor(
        "bm1684x", "_vendor_tpu_mlir.py", "tpu_mlir_python", ("fp16", "fp32", "bf16")
    ),
    "aimet": Vendor("qnn-htp", "_vendor_aimet.py", "aimet_python", ("a16_w16", "fp16", "a16_w16")),
    "qnn": Vendor("qnn-htp", "_vendor_grammar.py", "project", ("a16_w16", "fp16", "a16_w16")),
    "ort": Vendor("ort-cpu", "_vendor_ort.py", "project", ("a16_w16", "fp32", "a16_w16")),
    "hailo": Vendor("hailo8", "_vendor_grammar.py", "project", ("a16_w16", "a8_w8_a16", "a16_w16")),
}


def run_quiet(command: list[str], log: Path) -> None:
    """A subprocess whose output goes to `log`; its tail is raised on failure."""
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(command[:3])} failed: {' | '.join(tail)}")


def quantlens(*args: str, log: Path) -> None:
    run_quiet([sys.executable, "-m", "quantlens", *args], log)


def render(model: str, count: int, seed: int, root: Path) -> Path:
    from quantlens.data.render import write_samples

    folder = root / f"{SAMPLES[model]}-{count}-seed{seed}"
    if not folder.exists():
        write_samples(SAMPLES[model], count, folder, seed=seed)  # type: ignore[arg-type]
    return folder


def mixed_assignment(int8_run: Path, target: str, modes: tuple[str, str, str], path: Path) -> Path:
    """Promote the first, middle and last weighted layers of the run's canonical model."""
    from quantlens.vendor_io import load_run

    weighted = [node.name for node in load_run(int8_run).model.nodes if node.params]
    picks = [weighted[0], weighted[len(weighted) // 2], weighted[-1]]
    layers = dict(zip(picks, modes))
    path.write_text(json.dumps({"target": target, "default": "a8_w8", "layers": layers}))
    return path


def quantize_run(model: str, vendor: Vendor, variant: str, calib: Path, root: Path) -> Path:
    run_dir = root / f"run-{vendor.target}-{variant}"
    if (run_dir / "quantize.json").exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [model, "--target", vendor.target, "--calib", str(calib), "-o", str(run_dir)]
    if variant == "mixed":
        int8_run = quantize_run(model, vendor, "int8", calib, root)
        path = root / f"{vendor.target}-mixed.json"
        assignment = mixed_assignment(int8_run, vendor.target, vendor.mixed, path)
        args += ["--assignment", str(assignment)]
    quantlens("quantize", *args, log=root / f"quantize-{vendor.target}-{variant}.log")
    return run_dir


def feeds_of(model: str, images: Path) -> list[dict[str, np.ndarray]]:
    from quantlens.data import zoo
    from quantlens.data.preprocess import load_inputs

    return list(load_inputs(images, zoo.get_entry(model).input))


def feeds_of_one_shape(model: str, count: int, root: Path) -> list[dict[str, np.ndarray]]:
    """`count` rendered samples (seed 1) of the first one's shape: the vendors' simulators take
    one fixed input shape, and a recognizer's rendered lines vary in width (ppocr's 11th line
    is 340 px wide where the first ten are 320). Samples of another shape are skipped, and more
    are rendered (the same seed gives the same first samples) until `count` are found."""
    for rendered in (count, 2 * count, 4 * count):
        feeds = feeds_of(model, render(model, rendered, 1, root))
        first = {name: array.shape for name, array in feeds[0].items()}
        same = [f for f in feeds if {n: a.shape for n, a in f.items()} == first]
        if len(same) >= count:
            if rendered > count:  # some of the first `count` had another shape
                print(
                    f"{model}: {count} of {rendered} rendered samples have the first one's "
                    f"shape {first}; the others are skipped",
                    file=sys.stderr,
                )
            return same[:count]
    raise SystemExit(f"{model}: fewer than {count} of {4 * count} samples share one shape")


def emulate(
    run_dir: Path, feeds: list[dict[str, np.ndarray]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(float, quantized) outputs of the run's canonical model in our executor, stacked."""
    import torch

    from quantlens.emulate import Executor
    from quantlens.emulate.fakequant import QuantHooks
    from quantlens.vendor_io import load_run

    ctx = load_run(run_dir)
    assert ctx.canonical is not None, f"{run_dir} has no model.canonical.onnx"
    executor = Executor(ctx.canonical)
    hooks = QuantHooks(ctx.plan)

    def run(feed: dict[str, np.ndarray], quantized: bool) -> dict[str, np.ndarray]:
        result = executor.run(feed, hooks=hooks if quantized else None)
        return {name: value.cpu().numpy() for name, value in result.items()}

    with torch.inference_mode():
        floats = _stacked(run(feed, False) for feed in feeds)
        return floats, _stacked(run(feed, True) for feed in feeds)


def simulate(
    run_dir: Path, feeds: list[dict[str, np.ndarray]], work: Path
) -> dict[str, np.ndarray] | None:
    """The run's plan as an ONNX simulation run by ONNX Runtime, stacked (None: the target
    computes on integer codes, which the simulation does not write)."""
    from quantlens.emulate.ort import OrtRunner
    from quantlens.export.simulation import export_simulation, simulation_refusal
    from quantlens.schemes.profiles import get_profile
    from quantlens.vendor_io import load_run

    ctx = load_run(run_dir)
    assert ctx.canonical is not None, f"{run_dir} has no model.canonical.onnx"
    if simulation_refusal(get_profile(ctx.plan.target)) is not None:
        return None
    runner = OrtRunner(export_simulation(ctx.canonical, ctx.plan, work), optimize=False)
    return _stacked(runner.run(feed) for feed in feeds)


def _stacked(results: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-sample outputs concatenated along the batch axis, by output name."""
    collected: dict[str, list[np.ndarray]] = {}
    for result in results:
        for name, value in result.items():
            collected.setdefault(name, []).append(value)
    return {name: np.concatenate(values) for name, values in collected.items()}


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = float(np.sum((candidate.astype(np.float64).reshape(reference.shape) - reference) ** 2))
    signal = float(np.sum(reference**2))
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def pooled_snr(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float | None:
    """Worst over outputs of the SNR pooled over samples; outputs matched by name, else order."""
    if not candidate:
        return None
    names = list(reference)
    pairs = [
        (reference[name], candidate.get(name, list(candidate.values())[index]))
        for index, name in enumerate(names)
        if name in candidate or index < len(candidate)
    ]
    return round(min(snr_db(r, c) for r, c in pairs), 2)


def check_one(
    fmt: str,
    model: str,
    variant: str,
    run_dir: Path,
    inputs: Path,
    shapes: dict[str, list[int]],
    args: argparse.Namespace,
    root: Path,
) -> dict[str, Any]:
    from quantlens.vendor_io import export_vendor

    vendor = VENDORS[fmt]
    work = root / f"{fmt}-{variant}"
    work.mkdir(parents=True, exist_ok=True)
    exported = export_vendor(run_dir, fmt, work / f"model{_main_suffix(fmt)}")
    files = {Path(f).name[len("model") :]: f for f in exported.files}
    job = {
        "format": fmt,
        "model": model,
        "variant": variant,
        "float_model": files.get(".float.onnx"),
        "files": files,
        "inputs": str(inputs),
        "input_shapes": shapes,
        "workdir": str(work),
        "deploy_args": _deploy_args(fmt, exported.usage),
    }
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    python = sys.executable if vendor.venv == "project" else getattr(args, vendor.venv)
    if python is None:
        return {"accepted": None, "error": f"no --{vendor.venv.replace('_', '-')} given: skipped"}
    start = time.perf_counter()
    done = subprocess.run(
        [python, str(HERE / vendor.worker), str(job_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    (work / "worker.log").write_text(done.stderr)
    result = last_json(done.stdout) or {
        "accepted": False,
        "error": f"worker exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}",
    }
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["export_warnings"] = exported.warnings
    result["dropped"] = [d.model_dump() for d in exported.dropped]
    return result


def _deploy_args(fmt: str, usage: str) -> list[str]:
    """model_deploy arguments the export's own usage line adds: a mixed INT8 + float table
    deploys without layer groups (they broke such bmodels on TPU-MLIR 1.30.2)."""
    from quantlens.export.vendors.tpu_mlir import NO_LAYER_GROUP

    return [NO_LAYER_GROUP] if fmt == "tpu-mlir" and NO_LAYER_GROUP in usage else []


def _main_suffix(fmt: str) -> str:
    from quantlens.export.vendors import get_format

    return get_format(fmt).suffixes[0]


def bench_model(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    root = args.work / model
    root.mkdir(parents=True, exist_ok=True)
    calib = render(model, args.calib, 0, root)
    feeds = feeds_of_one_shape(model, args.samples, root)
    inputs = root / "inputs.npz"
    stacked: dict[str, Any] = {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
    np.savez(inputs, **stacked)  # typed Any: numpy's stub reads ** against allow_pickle
    shapes = {name: list(array.shape[1:]) for name, array in feeds[0].items()}
    shapes = {name: [1, *dims] for name, dims in shapes.items()}
    rows = []
    for variant in args.variants:
        for fmt in args.formats:
            print(f"{model} {variant} {fmt} ...", file=sys.stderr, flush=True)
            row: dict[str, Any] = {"model": model, "variant": variant, "format": fmt}
            try:
                run_dir = quantize_run(model, VENDORS[fmt], variant, calib, root)
                result = check_one(fmt, model, variant, run_dir, inputs, shapes, args, root)
                if result.get("outputs"):
                    floats, ours = emulate(run_dir, feeds)
                    theirs = dict(np.load(result["outputs"]))
                    result["snr_vs_emulation_db"] = pooled_snr(ours, theirs)
                    result["snr_vs_float_db"] = pooled_snr(floats, theirs)
                    result["emulation_vs_float_db"] = pooled_snr(floats, ours)
                    simulated = simulate(run_dir, feeds, root / f"{fmt}-{variant}.sim.onnx")
                    if simulated is not None:
                        result["snr_vs_simulation_db"] = pooled_snr(simulated, theirs)
                        result["simulation_vs_float_db"] = pooled_snr(floats, simulated)
                    if args.compare:
                        result["compare"] = compare_layers(fmt, run_dir, inputs, args, root)
                row.update(result)
            except Exception as exc:  # one failing cell must not hide the others
                row.update({"accepted": False, "error": f"{type(exc).__name__}: {exc}"})
            rows.append(row)
            print(summary_line(row), flush=True)
    return rows


def compare_layers(
    fmt: str, run_dir: Path, inputs: Path, args: argparse.Namespace, root: Path
) -> dict[str, Any]:
    """The vendor model's per-layer tensors (`_vendor_layers.py`) through `quantlens compare`:
    the first tensor below 40 dB against our emulation, with its likely cause."""
    work = root / f"{fmt}-{run_dir.name.split('-')[-1]}"
    job = json.loads((work / "job.json").read_text())
    job["layers"] = str(work / "layers.npz")
    (work / "layers-job.json").write_text(json.dumps(job, indent=1))
    python = getattr(args, VENDORS[fmt].venv)
    done = subprocess.run(
        [python, str(HERE / "_vendor_layers.py"), str(work / "layers-job.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    (work / "layers.log").write_text(done.stderr)
    dumped = last_json(done.stdout) or {"error": f"exited {done.returncode}"}
    if dumped.get("error"):
        return {"error": dumped["error"]}
    out = work / "compare"
    dump_format = "tpu-mlir" if fmt == "tpu-mlir" else "npz"
    quantlens(
        "compare", str(run_dir), "--dumps", str(work / "layers.npz"), "-f", dump_format,
        "--inputs", str(inputs), "-o", str(out), log=work / "compare.log",
    )  # fmt: skip
    report = json.loads((out / "compare.json").read_text())
    outputs = [t for t in report["tensors"] if t["tensor"] in _graph_outputs(run_dir)]
    return {
        "tensors": len(report["tensors"]),
        "first_divergence": report["first_divergence"],
        "outputs_codes_equal": [t["codes_equal"] for t in outputs],
        # compare.json spells an infinite SNR "Infinity"; float() reads it back.
        "worst_db": min(
            (float(t["vs_emulation"]["snr_db"]) for t in report["tensors"]), default=None
        ),
    }


def _graph_outputs(run_dir: Path) -> set[str]:
    import onnx

    graph = onnx.load(str(run_dir / "model.canonical.onnx"), load_external_data=False).graph
    return {v.name for v in graph.output}


def summary_line(row: dict[str, Any]) -> str:
    checks = row.get("checks") or {}
    counts = ", ".join(
        f"{name} {c.get('honoured')}/{c.get('planned')}" for name, c in checks.items()
    )
    status = {True: "accepted", False: "REFUSED", None: "skipped"}[row.get("accepted")]
    snr = ""
    if row.get("snr_vs_emulation_db") is not None:
        snr = (
            f"; vs our emulation {row['snr_vs_emulation_db']} dB, vs float "
            f"{row['snr_vs_float_db']} dB (ours vs float {row['emulation_vs_float_db']} dB)"
        )
    if row.get("snr_vs_simulation_db") is not None:
        snr += (
            f"; vs our ONNX simulation {row['snr_vs_simulation_db']} dB (it vs float "
            f"{row['simulation_vs_float_db']} dB)"
        )
    first = (row.get("compare") or {}).get("first_divergence")
    if first:
        snr += f"; first layer below 40 dB: {first['tensor']} ({first['snr_db']:.1f} dB)"
        if first.get("kind"):  # the replay of its op from the vendor's own inputs
            snr += f", {first['kind']}"
    error = f" — {row['error']}" if row.get("error") else ""
    return (
        f"{row['model']:<20} {row['variant']:<6} {row['format']:<9} {status}: {counts}{snr}{error}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SAMPLES), choices=list(SAMPLES))
    parser.add_argument("--formats", nargs="+", default=list(VENDORS), choices=list(VENDORS))
    parser.add_argument("--tpu-mlir-python", default=None, help="TPU-MLIR venv's python")
    parser.add_argument("--aimet-python", default=None, help="AIMET-ONNX venv's python")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also dump the vendor model's per-layer tensors and run `quantlens compare`",
    )
    parser.add_argument("--calib", type=int, default=16, help="calibration samples")
    parser.add_argument("--samples", type=int, default=4, help="evaluation samples")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vendor-check"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [row for model in args.models for row in bench_model(model, args)]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    refused = [r for r in rows if r.get("accepted") is False]
    print(f"{len(rows)} checks, {len(refused)} refused")


if __name__ == "__main__":
    main()
