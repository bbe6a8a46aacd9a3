"""Worker for benchmarks/vendor_check.py: our TPU-MLIR tables in TPU-MLIR 1.30.2 itself.

Runs INSIDE the TPU-MLIR venv (Python 3.10, built by benchmarks/envs/tpu_mlir.sh), so it
imports nothing from quantlens: standard library, numpy and what TPU-MLIR ships.

    <venv>/bin/python benchmarks/_vendor_tpu_mlir.py JOB.json

JOB.json: {"format": "tpu-mlir", "model": name, "variant": "int8"|"mixed",
"float_model": the exported .float.onnx, "files": {".qtable": path, ".cali_table": path},
"inputs": .npz (one float32 array per graph input, N samples), "input_shapes": {name: dims},
"workdir": scratch folder}. Optional: no ".qtable" deploys TPU-MLIR's own all-INT8 build (no
--quantize_table); "reuse": true keeps a workdir's earlier build (its `deployed` marker, written
after a deploy succeeds) and an earlier run's outputs, so a caller that names the workdir after
a hash of the inputs (benchmarks/tpu_mlir_deploy.py) never deploys the same files twice;
"outputs_name": the outputs file's name in the workdir (default outputs.npz); "runner":
"bmodel" (default) or "tpu-mlir" (the `_tpu.mlir` in TPU-MLIR's interpreter, 20-30x faster on
doclayout, whose INT8 outputs equal the bmodel's) with "bmodel_samples": k (the bmodel on the
first k samples too, "bmodel_outputs" in the reply, to check that they agree); "deploy_args":
extra model_deploy.py arguments (e.g. ["--disable_layer_group"]).

Steps: model_transform.py, model_deploy.py --quantize INT8 --chip bm1684x with both tables
(--debug keeps the `_tpu.mlir`), counts from the `_tpu.mlir` of what was honoured, then the
bmodel on TPU-MLIR's CPU model (model_runner.py) for every sample. The last stdout line is
one JSON object: {"accepted", "error", "checks", "outputs", "notes"}; the rest goes to stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

CHIP = "bm1684x"
# The float types a qtable mode becomes in the tpu dialect.
FLOAT_TYPES = {"F16": "f16", "BF16": "bf16", "F32": "f32"}
# Relative tolerance of a scale against threshold/qmax: the table has 7 decimals and TPU-MLIR
# keeps the threshold as a double, so a match is far tighter than this.
SCALE_RTOL = 1e-5
STEP_TIMEOUT_S = 1800
# Written into the workdir after model_deploy succeeds: the build there is complete.
DEPLOYED = "deployed.json"
_LOC = re.compile(r'^#(loc\d+) = loc\((?:fused\[)?"([^"]*)"')
_LOC_ALIAS = re.compile(r"^#(loc\d+) = loc\(fused\[#(loc\d+)")
_OP = re.compile(r'= "(tpu|top)\.(\w+)"\(.*->\s*(.*?)\s+loc\(#(loc\d+)\)\s*$')
_UNIFORM = re.compile(r"!quant\.uniform<([a-z]*\d+)(?:<[^>]*>)?:f\d+, ([0-9.eE+-]+)(?::(-?\d+))?>")
# Float ops keep their range in the type: !quant.calibrated<f16<min:max>>.
_CALIBRATED = re.compile(r"!quant\.calibrated<(b?f\d+)<([0-9.eE+-]+):([0-9.eE+-]+)>>")
# Ops that are not layers (weights, empty operands) share names with layers' prefixes.
_NOT_OPS = ("top.Weight", "top.None")
# The op a crashing pass was rewriting, as tpuc-opt prints it before the diagnosis.
_AT_OP = re.compile(r'loc\("([^"]+)"\)')
_ELEMENT = re.compile(r"x(f16|bf16|f32|si8|ui8|i8|i32|si32)>")


class ToolError(Exception):
    """A TPU-MLIR step failed; the message is the tool's last error line."""


@dataclass
class Op:
    name: str
    kind: str
    # Output element type: "i8"/"u8" (quantized), "f16", "bf16", "f32".
    element: str
    # The integer grid's scale, or a float op's calibrated threshold.
    scale: float | None = None


@dataclass
class Counts:
    planned: int = 0
    honoured: int = 0
    unsigned: int = 0
    # Why the rest were not: the op is in the top graph but lowering removed it (Reshape,
    # Permute...); TPU-MLIR ran it in float anyway; it has an integer grid of another scale;
    # the name is no op of TPU-MLIR's top graph at all (a naming error on our side).
    absorbed: int = 0
    kept_float: int = 0
    # Another scale that TPU-MLIR documents choosing itself (Softmax's output on [0, 1]).
    documented: int = 0
    overridden: int = 0
    unknown: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        """Every count, in field order (the problems are notes, not counts)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "problems"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_tool(args: list[str], cwd: Path, name: str) -> float:
    """Run one TPU-MLIR tool in `cwd`; its output goes to `<name>.log` there. Seconds taken."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    logfile = cwd / f"{name}.log"
    start = time.perf_counter()
    log(f"[tpu-mlir] {' '.join(args)}")
    with logfile.open("w") as sink:
        try:
            done = subprocess.run(
                args,
                cwd=cwd,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise ToolError(f"{name} timed out after {STEP_TIMEOUT_S} s") from err
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise ToolError(f"{name} exited {done.returncode}: {last_error(logfile)}")
    log(f"[tpu-mlir] {name}: {seconds:.1f} s")
    return seconds


def last_error(logfile: Path) -> str:
    """What went wrong: TPU-MLIR's own diagnosis (with the op it was at) before the Python
    traceback that wraps it, else the last line naming an error, else the last line."""
    lines = [ln.strip() for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
    signals = ("can't", "cannot", "assertion", "unreachable", "not support", "check failed")
    for index, line in enumerate(lines):
        if any(key in line.lower() for key in signals):
            near = [m.group(1) for m in map(_AT_OP.search, lines[max(0, index - 3) : index]) if m]
            return (line + (f" (at {near[-1]})" if near else ""))[:500]
    keys = ("error", "failed", "exception", "abort")
    for line in reversed(lines):
        if any(key in line.lower() for key in keys):
            return line[:500]
    return lines[-1][:500] if lines else "(no output)"


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def read_qtable(path: Path) -> dict[str, str]:
    modes: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if len(parts) == 2 and not raw.lstrip().startswith("#"):
            modes[parts[0]] = parts[1].upper()
    return modes


def read_cali_table(path: Path) -> dict[str, float]:
    thresholds: dict[str, float] = {}
    for raw in path.read_text().splitlines():
        parts = raw.split()
        if raw.startswith("#") or not raw.strip():
            if thresholds:
                break  # a later `#int4_th`-style section is not the int8 table
            continue
        if len(parts) == 4:
            thresholds[parts[0]] = float(parts[1])
    return thresholds


def read_mlir_ops(path: Path) -> dict[str, Op]:
    """Named ops of a tpu-dialect file with the type of their (first) output."""
    text = path.read_text().splitlines()
    locs: dict[str, str] = {}
    for line in text:
        match = _LOC.match(line)
        if match:
            locs[match.group(1)] = match.group(2)
    for line in text:  # a fused loc of locs is named after its first member
        alias = _LOC_ALIAS.match(line)
        if alias and alias.group(2) in locs:
            locs[alias.group(1)] = locs[alias.group(2)]
    ops: dict[str, Op] = {}
    for line in text:
        match = _OP.search(line)
        if match is None or match.group(4) not in locs:
            continue
        dialect, kind, result, loc = match.groups()
        if f"{dialect}.{kind}" in _NOT_OPS:
            continue
        ops.setdefault(locs[loc], element_of(f"{dialect}.{kind}", result, locs[loc]))
    return ops


def element_of(kind: str, result: str, name: str) -> Op:
    uniform = _UNIFORM.search(result)
    if uniform:
        element = "u8" if uniform.group(1).startswith("u") else "i8"
        return Op(name, kind, element, float(uniform.group(2)))
    calibrated = _CALIBRATED.search(result)
    if calibrated:
        low, high = float(calibrated.group(2)), float(calibrated.group(3))
        return Op(name, kind, calibrated.group(1), max(abs(low), abs(high)))
    plain = _ELEMENT.search(result)
    return Op(name, kind, plain.group(1) if plain else "?")


def find_op(ops: dict[str, Op], name: str) -> Op | None:
    """The op TPU-MLIR made of `name`; lowering may split it (`<name>_reshape`, ...)."""
    if name in ops:
        return ops[name]
    grown = [op for key, op in ops.items() if key.startswith(name + "_")]
    quantized = [op for op in grown if op.element in ("i8", "u8")]
    return (quantized or grown or [None])[0]


def check_qtable(planned: dict[str, str], ops: dict[str, Op]) -> Counts:
    counts = Counts(planned=len(planned))
    for name, mode in planned.items():
        op = find_op(ops, name)
        want = FLOAT_TYPES.get(mode)
        if (op is not None and want is not None and op.element == want) or (
            op is not None and mode in ("INT8", "UINT8") and op.element in ("i8", "u8")
        ):
            counts.honoured += 1
        else:
            found = "missing" if op is None else f"{op.kind} {op.element}"
            counts.problems.append(f"qtable {name} {mode}: {found}")
    return counts


def check_thresholds(
    thresholds: dict[str, float], floats: set[str], ops: dict[str, Op], top: dict[str, Op]
) -> Counts:
    """INT8 thresholds: the op's scale is threshold/127 (signed) or threshold/255 (unsigned)."""
    counts = Counts()
    for name, threshold in thresholds.items():
        if name in floats:
            continue
        counts.planned += 1
        op = find_op(ops, name)
        if op is None or op.scale is None:
            if name in top:
                counts.absorbed += 1
            else:
                counts.unknown += 1
                counts.problems.append(f"threshold {name}: no such op in the top mlir")
            continue
        verdict = _threshold_verdict(op, threshold)
        if verdict in ("signed", "unsigned"):
            counts.honoured += 1
            counts.unsigned += verdict == "unsigned"
            continue
        if verdict == "float":
            counts.kept_float += 1
        elif verdict == "documented":
            counts.documented += 1
        else:
            counts.overridden += 1
        counts.problems.append(
            f"threshold {name} {threshold:.7f}: {op.kind} {op.element} scale {op.scale:.9g}"
        )
    return counts


def _threshold_verdict(op: Op, threshold: float) -> str:
    assert op.scale is not None
    if op.element in FLOAT_TYPES.values():
        # The graph input is a float op carrying the threshold that its INT8 cast uses; any
        # other float op is one TPU-MLIR keeps float in an INT8 deploy (LayerNorm, Softmax).
        matches = np.isclose(op.scale, threshold, rtol=SCALE_RTOL)
        return "signed" if op.kind == "top.Input" and matches else "float"
    if op.element == "i8" and np.isclose(op.scale, threshold / 127, rtol=SCALE_RTOL):
        return "signed"
    if op.element == "u8" and np.isclose(op.scale, threshold / 255, rtol=SCALE_RTOL):
        return "unsigned"
    # Scales TPU-MLIR picks itself, whatever the table says (measured in the `_tpu.mlir` of the
    # zoo models; quantlens's tpu_mlir_ops.KNOWN_DIFFERENCES): an INT8 Softmax outputs UINT8
    # over [0, 1]; a Mul by a constant becomes MulShift, its output scale following its input's.
    softmax = op.kind == "tpu.Softmax" and op.element == "u8" and np.isclose(op.scale, 1 / 255)
    if softmax or op.kind == "tpu.MulShift":
        return "documented"
    return "other"


def shape_text(shapes: dict[str, list[int]], names: list[str]) -> str:
    return "[" + ",".join("[" + ",".join(str(d) for d in shapes[n]) + "]" for n in names) + "]"


def samples(inputs: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> list[dict[str, Any]]:
    """The batches to run: one sample at a time where the compiled batch is smaller."""
    first = next(iter(inputs.values()))
    batch = shapes[next(iter(inputs))][0] if shapes else first.shape[0]
    total = first.shape[0]
    if batch >= total:
        return [{n: a.astype(np.float32) for n, a in inputs.items()}]
    return [
        {n: a[i : i + batch].astype(np.float32) for n, a in inputs.items()}
        for i in range(0, total, batch)
    ]


def graph_names(float_model: Path) -> tuple[list[str], list[str]]:
    import onnx  # TPU-MLIR's pinned onnx 1.14: only the graph's names are read

    graph = onnx.load(str(float_model), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in weights]
    return inputs, [v.name for v in graph.output]


def output_key(result: dict[str, np.ndarray], onnx_name: str) -> str:
    """TPU-MLIR keys outputs by op name (`<tensor>_<OpType>`, lowering may add suffixes)."""
    if onnx_name in result:
        return onnx_name
    grown = sorted((k for k in result if k.startswith(onnx_name + "_")), key=len)
    if not grown:
        raise ToolError(f"model_runner gave no output for {onnx_name}: {sorted(result)[:5]}")
    # The interpreter returns the output op and its cast to f32 (`..._f32`), which is the one
    # the bmodel returns: prefer it.
    return next((k for k in grown if k.endswith("_f32")), grown[0])


def run_model(
    model: Path, batches: list[dict[str, Any]], outputs: list[str], work: Path, prefix: str = ""
) -> Path:
    """`model_runner.py` on every batch: a bmodel runs on TPU-MLIR's CPU model, a `.mlir` in
    TPU-MLIR's interpreter. Outputs stacked by ONNX output name in `<prefix>outputs.npz`."""
    collected: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    for i, batch in enumerate(batches):
        feed, got = work / f"{prefix}sample{i}_in.npz", work / f"{prefix}sample{i}_out.npz"
        np.savez(feed, **batch)
        run_tool(
            [
                tool("model_runner.py"),
                "--input",
                str(feed),
                "--model",
                str(model),
                "--output",
                str(got),
            ],
            work,
            f"{prefix}runner{i}",
        )
        result = dict(np.load(got))
        for name in outputs:
            collected[name].append(np.asarray(result[output_key(result, name)], np.float32))
    path = work / f"{prefix}outputs.npz"
    np.savez(path, **{name: np.concatenate(parts, axis=0) for name, parts in collected.items()})
    return path


def run_outputs(
    job: dict[str, Any], work: Path, tpu_mlir: Path, outputs: list[str], notes: list[str]
) -> dict[str, str]:
    """The model's outputs on every sample ("outputs"), from the bmodel on the CPU model or,
    with job["runner"] "tpu-mlir", from the `_tpu.mlir` in TPU-MLIR's interpreter; then also
    the bmodel on the first job["bmodel_samples"] samples ("bmodel_outputs"), to show both
    give the same outputs. Files named in the job and present already are reused."""
    runner = job.get("runner", "bmodel")
    if runner not in ("bmodel", "tpu-mlir"):
        raise ToolError(f"unknown runner {runner!r}: bmodel or tpu-mlir")
    arrays = dict(np.load(job["inputs"]))
    batches = samples(arrays, job["input_shapes"])
    model = work / "m.bmodel" if runner == "bmodel" else tpu_mlir
    wanted = {"outputs": (job.get("outputs_name", "outputs.npz"), model, batches, "")}
    count = int(job.get("bmodel_samples", 0)) if runner == "tpu-mlir" else 0
    if count:
        name = f"bmodel{count}-{job.get('outputs_name', 'outputs.npz')}"
        wanted["bmodel_outputs"] = (name, work / "m.bmodel", batches[:count], "bmodel-")
    found: dict[str, str] = {}
    for key, (name, path, todo, prefix) in wanted.items():
        kept = work / name
        if job.get("reuse") and kept.exists():
            notes.append(f"{key} reused from an earlier run on the same inputs")
        else:
            start = time.perf_counter()
            run_model(path, todo, outputs, work, prefix).replace(kept)
            where = "CPU model" if path.suffix == ".bmodel" else "interpreter"
            notes.append(
                f"{key}: {len(todo)} batches on the {where}: {time.perf_counter() - start:.1f} s"
            )
        found[key] = str(kept)
    return found


def qtable_args(files: dict[str, str]) -> list[str]:
    """--quantize_table with the file; none for TPU-MLIR's own all-INT8 build."""
    qtable = files.get(".qtable")
    return ["--quantize_table", str(Path(qtable).resolve())] if qtable else []


def deployed_mlir(work: Path) -> Path | None:
    """The `_tpu.mlir` of a deploy that finished in `work` (its marker is written last)."""
    found = sorted(work.glob(f"m_{CHIP}_*_tpu.mlir"))
    done = (work / DEPLOYED).exists() and (work / "m.bmodel").exists()
    return found[0] if done and found else None


def compile_model(job: dict[str, Any], work: Path, notes: list[str]) -> Path:
    """model_transform then model_deploy; returns the `_tpu.mlir` kept by --debug."""
    if job.get("reuse"):
        kept = deployed_mlir(work)
        if kept is not None:
            notes.append("deploy reused from an earlier run of the same files")
            return kept
    (work / DEPLOYED).unlink(missing_ok=True)
    float_model = Path(job["float_model"]).resolve()
    inputs, _ = graph_names(float_model)
    shapes = job["input_shapes"]
    seconds = run_tool(
        [
            tool("model_transform.py"),
            "--model_name",
            "m",
            "--model_def",
            str(float_model),
            "--input_shapes",
            shape_text(shapes, inputs),
            "--mlir",
            "m.mlir",
        ],
        work,
        "model_transform",
    )
    notes.append(f"model_transform {seconds:.1f} s")
    files = job["files"]
    seconds = run_tool(
        [
            tool("model_deploy.py"),
            "--mlir",
            "m.mlir",
            "--quantize",
            "INT8",
            "--chip",
            CHIP,
            "--calibration_table",
            str(Path(files[".cali_table"]).resolve()),
            *qtable_args(files),
            "--model",
            "m.bmodel",
            "--debug",
            *[str(a) for a in job.get("deploy_args", [])],
        ],
        work,
        "model_deploy",
    )
    notes.append(f"model_deploy {seconds:.1f} s")
    found = sorted(work.glob(f"m_{CHIP}_*_tpu.mlir"))
    if not found:
        raise ToolError("model_deploy --debug left no *_tpu.mlir")
    (work / DEPLOYED).write_text(json.dumps(notes))
    return found[0]


def check(job: dict[str, Any]) -> dict[str, Any]:
    work = Path(job["workdir"]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    report: dict[str, Any] = {"accepted": False, "error": None, "checks": {}, "outputs": None}
    report["notes"] = notes
    try:
        tpu_mlir = compile_model(job, work, notes)
        report["accepted"] = True
        ops = read_mlir_ops(tpu_mlir)
        qtable = job["files"].get(".qtable")
        planned = read_qtable(Path(qtable)) if qtable else {}
        floats = {name for name, mode in planned.items() if mode in FLOAT_TYPES}
        modes = check_qtable(planned, ops)
        table = read_cali_table(Path(job["files"][".cali_table"]))
        top = read_mlir_ops(work / "m.mlir")
        thresholds = check_thresholds(table, floats, ops, top)
        report["checks"] = {
            "qtable_modes": {"planned": modes.planned, "honoured": modes.honoured},
            "int8_thresholds": thresholds.summary(),
        }
        notes += (modes.problems + thresholds.problems)[:20]
        _, outputs = graph_names(Path(job["float_model"]))
        report.update(run_outputs(job, work, tpu_mlir, outputs, notes))
    except ToolError as err:
        report["error"] = str(err)
    except Exception as err:  # a broken job or file must still give one JSON line
        report["error"] = f"{type(err).__name__}: {err}"
    return report


def main() -> None:
    if len(sys.argv) != 2:
        log("usage: _vendor_tpu_mlir.py JOB.json")
        sys.exit(2)
    job = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(check(job)), flush=True)


if __name__ == "__main__":
    main()
