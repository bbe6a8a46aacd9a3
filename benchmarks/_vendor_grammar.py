"""Worker for vendor_check.py: formats whose tool cannot run here, checked against the grammar
the vendor publishes (shared/reference/vendor-formats.md), independently of quantlens' own
exporter and importer (which prove nothing about the vendor's tool).

- `hailo` (.alls, Hailo DFC, §1.3-1.4): every line is a documented command shape; precision
  modes are the DFC's enum; layer names are bare or scoped identifiers; no layer gets two
  clipping ranges or two precision modes in exact-name lines.
- `qnn` (quantization overrides JSON, §3.2): the two required sections; each encoding's fields
  and types; integer min/max/scale/offset consistent; per-channel entries symmetric with
  offset -2^(bits-1); keys are tensors of the float model shipped with the file; weighted ops
  float or integer as a whole; no encoding on a tensor the converter fuses away (a MatMul/Gemm
  output read only by its bias Add, a Conv output read only by its Relu or Clip).

    python _vendor_grammar.py JOB.json   # prints one JSON line: accepted, checks, notes
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

# DFC 5.x precision_mode enum (vendor-formats.md 1.3).
HAILO_MODES = {
    "a8_w8", "a8_w4", "a16_w16", "a16_w8", "a8_w8_a16", "a16_w4", "a8_w4_exp",
    "a16_w16_non_zero", "native", "a8_w4_a16", "a16_w16_a8", "a16_w8_a8", "a16_w4_a16",
    "a16_w4_a8", "a8_w8_a8", "a16_w16_a16", "a16_w8_a16", "a8_w4_a8",
}  # fmt: skip
NAME = r"[A-Za-z_][A-Za-z0-9_./-]*"
TARGETS = rf"(?:{NAME}|\[{NAME}(?:, {NAME})*\]|\{{[^{{}}\s]+\}})"
MODE_LINE = re.compile(rf"^quantization_param\(({TARGETS}), precision_mode=(\w+)\)$")
CLIP_LINE = re.compile(
    rf"^pre_quantization_optimization\(activation_clipping, layers=\[({NAME}(?:, {NAME})*)\], "
    r"mode=(percentile|manual), clipping_values=\[(\S+), (\S+)\]\)$"
)
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# Activations the QNN converter folds into the op before them when they are its only reader, so
# the op's output is the activation's: Relu and ReluMinMax (ONNX Clip), QNN SDK 2.12
# qnn_translations.py `squash_relu`; it folds no HardSwish or Sigmoid.
QNN_FUSED_ACTIVATIONS = {"Relu", "Clip"}


def check_hailo(text: str) -> tuple[dict[str, dict[str, int]], list[str]]:
    notes: list[str] = []
    modes = {"planned": 0, "honoured": 0}
    clips = {"planned": 0, "honoured": 0}
    clipped: set[str] = set()
    exact: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("quantization_param("):
            modes["planned"] += 1
            if _hailo_mode_line(line, exact, number, notes):
                modes["honoured"] += 1
        elif line.startswith("pre_quantization_optimization(activation_clipping"):
            clips["planned"] += 1
            if _hailo_clip_line(line, clipped, number, notes):
                clips["honoured"] += 1
        else:
            notes.append(f"line {number}: not a command quantlens writes: {line[:60]}")
    return {"precision_mode_lines": modes, "activation_clipping_lines": clips}, notes


def _hailo_mode_line(line: str, exact: dict[str, str], number: int, notes: list[str]) -> bool:
    match = MODE_LINE.match(line)
    if match is None:
        notes.append(f"line {number}: malformed quantization_param: {line[:80]}")
        return False
    targets, mode = match.groups()
    if mode not in HAILO_MODES:
        notes.append(f"line {number}: {mode} is not a DFC precision mode")
        return False
    ok = True
    if not targets.startswith("{"):
        for name in targets.strip("[]").split(", "):
            if exact.get(name, mode) != mode:
                notes.append(f"line {number}: {name} set to {exact[name]} and {mode}")
                ok = False
            exact[name] = mode
    return ok


def _hailo_clip_line(line: str, clipped: set[str], number: int, notes: list[str]) -> bool:
    match = CLIP_LINE.match(line)
    if match is None:
        notes.append(f"line {number}: malformed activation_clipping: {line[:80]}")
        return False
    names, mode, low, high = match.groups()
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        notes.append(f"line {number}: clipping values are not numbers")
        return False
    if not lo < hi or (mode == "percentile" and not 0 <= lo < hi <= 100):
        notes.append(f"line {number}: clipping_values [{low}, {high}] out of order or range")
        return False
    twice = [n for n in names.split(", ") if n in clipped]
    clipped.update(names.split(", "))
    if twice:
        notes.append(f"line {number}: {', '.join(twice)} clipped twice")
    return not twice


def check_qnn(data: Any, model_path: str | None) -> tuple[dict[str, dict[str, int]], list[str]]:
    notes: list[str] = []
    if not isinstance(data, dict) or set(data) != {"activation_encodings", "param_encodings"}:
        raise ValueError("the overrides need exactly activation_encodings and param_encodings")
    graph = _Graph(model_path) if model_path else None
    checks = {}
    for section in ("activation_encodings", "param_encodings"):
        entries = data[section]
        if not isinstance(entries, dict):
            raise ValueError(f"{section} is not an object")
        ok = 0
        for tensor, encodings in entries.items():
            problem = _encoding_problem(encodings) or (
                graph.problem(tensor, section) if graph else None
            )
            if problem:
                notes.append(f"{section}[{tensor!r}]: {problem}")
            ok += problem is None
        checks[section] = {"planned": len(entries), "honoured": ok}
    if graph is not None:
        checks["weighted_ops_whole"] = graph.whole_ops(data)
        notes += graph.notes
    return checks, notes


def _encoding_problem(encodings: Any) -> str | None:
    if not isinstance(encodings, list) or not encodings:
        return "not a non-empty list"
    for enc in encodings:
        if not isinstance(enc, dict) or not isinstance(enc.get("bitwidth"), int):
            return "an encoding without an integer bitwidth"
        dtype = enc.get("dtype", "int")
        if dtype not in ("int", "float"):
            return f"dtype {dtype!r}"
        if "is_symmetric" in enc and enc["is_symmetric"] not in ("True", "False"):
            return "is_symmetric must be the string True or False"
        if dtype == "int" and (problem := _int_problem(enc, per_channel=len(encodings) > 1)):
            return problem
    return None


def _int_problem(enc: dict[str, Any], per_channel: bool) -> str | None:
    if not all(isinstance(enc.get(k), (int, float)) for k in ("min", "max", "scale", "offset")):
        return "an integer encoding needs min, max, scale and offset"
    bits, scale = enc["bitwidth"], enc["scale"]
    if scale <= 0 or not math.isclose(
        scale, (enc["max"] - enc["min"]) / (2**bits - 1), rel_tol=1e-5
    ):
        return "scale is not (max - min) / (2^bits - 1)"
    if enc["offset"] != round(enc["min"] / scale):
        return "offset is not round(min / scale)"
    if per_channel and (enc.get("is_symmetric") != "True" or enc["offset"] != -(2 ** (bits - 1))):
        return "a per-channel encoding must be symmetric with offset -2^(bits-1)"
    return None


class _Graph:
    """Tensors of the float model the overrides describe, and the converter's fusions."""

    def __init__(self, path: str) -> None:
        import onnx

        model = onnx.load(path)
        graph = model.graph
        self.inits = {i.name for i in graph.initializer}
        self.inputs = {i.name for i in graph.input} - self.inits
        self.nodes = list(graph.node)
        self.outputs = {o for n in self.nodes for o in n.output}
        readers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        self.fused_away = {
            n.output[
                0
            ]: f"{n.op_type} output fused into the following {readers[n.output[0]][0].op_type}"
            for n in self.nodes
            if n.output
            and len(readers.get(n.output[0], [])) == 1
            and self._fused(n, readers[n.output[0]][0])
        }
        self.notes: list[str] = []

    def _fused(self, node: Any, reader: Any) -> bool:
        if node.op_type in ("MatMul", "Gemm") and reader.op_type == "Add":
            return any(i in self.inits for i in reader.input)
        return (
            node.op_type in ("Conv", "Gemm", "MatMul") and reader.op_type in QNN_FUSED_ACTIVATIONS
        )

    def problem(self, tensor: str, section: str) -> str | None:
        if section == "param_encodings":
            return None if tensor in self.inits else "not an initializer of the float model"
        if tensor not in self.outputs | self.inputs:
            return "not a tensor of the float model"
        return self.fused_away.get(tensor)

    def whole_ops(self, data: dict[str, Any]) -> dict[str, int]:
        """Weighted ops with any float tensor must be float as a whole (SNPE guide, §3.2)."""
        acts, params = data["activation_encodings"], data["param_encodings"]
        planned = honoured = 0
        for node in self.nodes:
            if node.op_type not in WEIGHTED:
                continue
            tensors = [(acts, node.output[0])] + [
                (params, i) for i in node.input[1:] if i in params
            ]
            kinds = {_is_float(section[name]) for section, name in tensors if name in section}
            if True in kinds:
                planned += 1
                honoured += kinds == {True}
                if kinds != {True}:
                    self.notes.append(f"{node.name or node.output[0]} is half float")
        return {"planned": planned, "honoured": honoured}


def _is_float(encodings: list[dict[str, Any]]) -> bool:
    return any(e.get("dtype") == "float" for e in encodings)


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    fmt, files = job["format"], job["files"]
    try:
        if fmt == "hailo":
            checks, notes = check_hailo(Path(files[".alls"]).read_text())
        elif fmt == "qnn":
            main_file = next(p for s, p in files.items() if s.endswith(".json"))
            checks, notes = check_qnn(
                json.loads(Path(main_file).read_text()), job.get("float_model")
            )
        else:
            raise ValueError(f"no published grammar check for {fmt}")
    except (ValueError, OSError, StopIteration, json.JSONDecodeError) as exc:
        print(json.dumps({"accepted": False, "error": str(exc), "checks": {}, "outputs": None}))
        return
    accepted = all(c["planned"] == c["honoured"] for c in checks.values())
    notes.insert(0, "grammar only: the vendor's tool cannot run on this machine")
    print(
        json.dumps(
            {
                "accepted": accepted,
                "error": None,
                "checks": checks,
                "outputs": None,
                "notes": notes[:20],
            }
        )
    )


if __name__ == "__main__":
    main()
