"""Probe how TPU-MLIR lowers a Sub and quantizes a Conv's weights in an INT8 deploy: the
measurements behind `bm1684x.json`'s `float_when_input_exceeds_output` and
`power_of_two_weight_ops` (the rules are not in TPU-MLIR's public sources).

Tiny ONNX models are deployed with `model_transform.py` / `model_deploy.py --quantize INT8
--chip bm1684x` from the TPU-MLIR venv, each with calibration tables that differ in one
threshold, and the `_tpu.mlir` is read back: which Subs became `tpu.Sub` in f16, and each
Conv's filter codes and multiplier. 2-5 s per deploy.

    python benchmarks/tpu_mlir_probe.py --tpu-mlir-python /work/vendor-venvs/tpu-mlir/bin/python
        [--work /tmp/tpu_mlir_probe]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# Sub probes: Sub(a, b), Sub(anchor, a), Sub(b, Sub(anchor, a)), with the table's threshold of
# one Sub set below or above its inputs' ranges (None: the calibrated one).
SUB_TABLES: dict[str, dict[str, float]] = {
    "calibrated": {},
    "s1 above its inputs": {"s1": 2.3},
    "s2 below the anchors": {"s2": 7.0},
    "s3 below s2": {"s3": 8.6},
}
# Conv probes: weights 0..7 times or plus these.
CONV_WEIGHTS: dict[str, tuple[float, float]] = {
    "0..7": (1.0, 0.0),
    "0..7 x 0.25": (0.25, 0.0),
    "0..7 + 0.5": (1.0, 0.5),
    "0..7 x 0.3": (0.3, 0.0),
}


def sub_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> Convs a, b; s1 = a - b, s2 = anchor - a, s3 = b - s2, s4 = s2 + b; Convs after."""
    inits = [
        numpy_helper.from_array(
            (rng.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32), f"w{i}"
        )
        for i in range(5)
    ]
    inits.append(
        numpy_helper.from_array(rng.uniform(0, 8, (1, 4, 8, 8)).astype(np.float32), "anchor")
    )
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="a"),
        helper.make_node("Conv", ["x", "w1"], ["b"], name="b"),
        helper.make_node("Sub", ["a", "b"], ["s1"], name="s1"),
        helper.make_node("Sub", ["anchor", "a"], ["s2"], name="s2"),
        helper.make_node("Sub", ["b", "s2"], ["s3"], name="s3"),
        helper.make_node("Add", ["s2", "b"], ["s4"], name="s4"),
    ]
    outs = []
    for i, s in enumerate(("s1", "s3", "s4")):
        nodes.append(helper.make_node("Conv", [s, f"w{i + 2}"], [f"y_{s}"], name=f"y_{s}"))
        outs.append(f"y_{s}")
    return _model(nodes, inits, outs)


def conv_model(scale: float, offset: float) -> onnx.ModelProto:
    w = np.arange(8, dtype=np.float32).reshape(2, 4, 1, 1) * np.float32(scale) + np.float32(offset)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="r"),
        helper.make_node("Conv", ["r", "w"], ["c"], name="c"),
    ]
    return _model(nodes, [numpy_helper.from_array(w, "w")], ["c"])


def _model(nodes: list, inits: list, outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def calibration_table(model: onnx.ModelProto, x: np.ndarray, overrides: Mapping[str, float]) -> str:
    """TPU-MLIR's table (`<tensor>_<OpType> threshold min max`) from one float run, with some
    thresholds replaced."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    types = {n.output[0]: n.op_type for n in model.graph.node}
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in types if t not in known
    )
    session = ort.InferenceSession(probe.SerializeToString())
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    lines = ["# tpu_mlir_probe", "###", "# op_name threshold min max"]
    lines.append(f"x {np.abs(x).max():.7f} {x.min():.7f} {x.max():.7f}")
    for name, v in values.items():
        threshold = overrides.get(name, float(np.abs(v).max()))
        lines.append(f"{name}_{types[name]} {threshold:.7f} {v.min():.7f} {v.max():.7f}")
    return "\n".join(lines) + "\n"


def f16_subs(tpu_mlir: str) -> list[str]:
    """The Subs of a `_tpu.mlir` lowered to f16 (their loc names)."""
    locs = dict(re.findall(r"^#(loc\d+) = loc\(\"([^\"]+)\"\)", tpu_mlir, re.M))
    found = []
    for line in tpu_mlir.splitlines():
        if '"tpu.Sub"' in line and "f16" in line.split("->")[-1]:
            loc = re.search(r"loc\(#(loc\d+)\)", line)
            found.append(locs.get(loc.group(1), "?") if loc else "?")
    return found


def deploy(bin_dir: Path, model: onnx.ModelProto, table: str, work: Path) -> str:
    """The `_tpu.mlir` TPU-MLIR writes for `model` with `table`."""
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(model, work / "probe.onnx")
    (work / "probe.cali_table").write_text(table)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    for command in (
        ["model_transform.py", "--model_name", "p", "--model_def", "probe.onnx",
         "--input_shapes", "[[1,4,8,8]]", "--mlir", "p.mlir"],
        ["model_deploy.py", "--mlir", "p.mlir", "--quantize", "INT8", "--chip", "bm1684x",
         "--calibration_table", "probe.cali_table", "--model", "p.bmodel", "--debug"],
    ):  # fmt: skip
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return (work / "p_bm1684x_int8_sym_tpu.mlir").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tpu-mlir-python", required=True, type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tpu_mlir_probe"))
    args = parser.parse_args()
    bin_dir = args.tpu_mlir_python.parent
    rng = np.random.default_rng(0)
    model = sub_model(rng)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    print("| Sub table | Subs lowered f16 |\n|---|---|")
    for label, overrides in SUB_TABLES.items():
        mlir = deploy(
            bin_dir,
            model,
            calibration_table(model, x, overrides),
            args.work / "sub" / label.replace(" ", "_"),
        )
        print(f"| {label} {dict(overrides)} | {', '.join(f16_subs(mlir)) or 'none'} |")
    print("\n| Conv weights | filter codes (channel 0, then 1) | multipliers |\n|---|---|---|")
    for label, (scale, offset) in CONV_WEIGHTS.items():
        model = conv_model(scale, offset)
        work = args.work / "conv" / label.replace(" ", "_").replace(".", "")
        mlir = deploy(bin_dir, model, calibration_table(model, x, {}), work)
        weights = np.load(work / "p_tpu_lowered_bm1684x_int8_sym_weight.npz")
        codes = next(weights[k] for k in weights.files if "filter" in k).ravel().tolist()
        found = re.search(r"multiplier = \[([0-9, ]+)\].*?rshift = \[([0-9, ]+)\]", mlir)
        pairs = f"[{found.group(1)}] >> [{found.group(2)}]" if found else "?"
        print(f"| {label} | {codes} | {pairs} |")


if __name__ == "__main__":
    main()
