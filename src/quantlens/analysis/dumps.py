"""Per-layer tensors another runtime dumped, aligned to the tensors of our canonical model.

Formats:
- `npz`: one array per tensor, keyed by our tensor names (or by the name map's keys; names
  no tensor has are skipped and listed with the closest ones, all of them unknown is an error);
- `tpu-mlir`: `model_runner.py --dump_all_tensors` on TPU-MLIR's model: keys are op names
  (`<output tensor>_<OpType>` after TPU-MLIR's fusions, `quantlens.ir.vendors.tpu_mlir_ops`),
  lowering's own ops (casts, tables) are skipped, except that a float op's output read through
  one int8 cast (`<op><consumer>_si8`, or the cast after a reshape that alone reads it) is
  compared as that cast;
- `snpe-raw`: a folder of float32 `.raw` files, one per tensor (`snpe-net-run --debug`,
  `qnn-net-run --debug`), named after the tensor (`/` and `:` kept as folders or turned to `_`),
  one `Result_<n>` subfolder per sample when there are several;
- `onnx-outputs`: an ONNX model sharing our tensor names, run in ONNX Runtime with every tensor
  as an output (needs the inputs).

Samples are stacked along axis 0. Every problem with a dump is one `UserError`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import onnx_ir as ir

from quantlens.analysis.compare import grid_step
from quantlens.errors import UserError
from quantlens.ir.index import ModelIndex, NodeInfo
from quantlens.ir.vendors.tpu_mlir_ops import TpuOp, graph_facts, tpu_ops

DumpFormat = Literal["npz", "tpu-mlir", "snpe-raw", "onnx-outputs"]
DUMP_FORMATS: tuple[str, ...] = get_args(DumpFormat)


@dataclass
class Dump:
    """`arrays`: our tensor -> the dump's values; `names`: our tensor -> the dump's name;
    `inputs`: graph inputs found in the dump; `skipped`: dump name -> why it was not used."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def read_name_map(path: Path | None) -> dict[str, str]:
    """A JSON object: name in the dump -> our tensor name."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read name map {path}: {exc}", "pass a JSON object") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UserError(f"{path}: a name map is a JSON object of strings", '{"dump name": "ours"}')
    return {str(k): v for k, v in data.items()}


def read_dump(
    path: Path,
    fmt: str,
    model: ir.Model,
    name_map: Mapping[str, str] | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
) -> Dump:
    """The dump at `path` in format `fmt`, aligned to `model`'s tensors."""
    if fmt not in DUMP_FORMATS:
        raise UserError(f"unknown dump format {fmt!r}", f"use one of: {', '.join(DUMP_FORMATS)}")
    if not path.exists():
        raise UserError(f"{path} does not exist", "pass the file or folder the runtime wrote")
    ours = _tensor_names(model)
    mapping = dict(name_map or {})
    for source, target in mapping.items():
        if target not in ours:
            raise _unknown(target, ours, f"name map entry {source!r}")
    if fmt == "tpu-mlir":
        return _tpu_mlir(_load_npz(path), model, mapping)
    if fmt == "snpe-raw":
        return _align(_load_raw(path, ours), model, mapping, strict=True)
    if fmt == "onnx-outputs":
        return _align(_run_onnx(path, model, inputs), model, mapping, strict=False)
    return _align(_load_npz(path), model, mapping, strict=True)


def _tensor_names(model: ir.Model) -> list[str]:
    names = [v.name or "" for v in model.graph.inputs]
    return names + [v.name or "" for node in model.graph for v in node.outputs if v.name]


def _unknown(name: str, known: list[str], where: str) -> UserError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "check the dump against the model"
    return UserError(f"{where}: {name!r} is no tensor of the model", hint + " (or --name-map)")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        raise UserError(f"{path} is a folder", "this format is one .npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as .npz: {exc}", "pass an npz file") from exc
    if not arrays:
        raise UserError(f"{path} holds no arrays", "dump the tensors again")
    return arrays


def _align(
    arrays: Mapping[str, np.ndarray], model: ir.Model, mapping: Mapping[str, str], strict: bool
) -> Dump:
    """Arrays keyed by our names (after `mapping`); with `strict`, an unknown name is an error."""
    ours = _tensor_names(model)
    known = set(ours)
    sanitized = {_sanitize(name): name for name in ours}
    inputs = {v.name for v in model.graph.inputs}
    dump = Dump()
    for key, array in arrays.items():
        tensor = mapping.get(key, key)
        tensor = tensor if tensor in known else sanitized.get(_sanitize(tensor), tensor)
        if tensor not in known:
            dump.skipped[key] = _closest(key, ours)
            continue
        if tensor in inputs:
            dump.inputs[tensor] = array
        dump.arrays[tensor] = array
        dump.names[tensor] = key
    if not set(dump.arrays) - set(dump.inputs):
        if strict and dump.skipped:
            raise _unknown(next(iter(dump.skipped)), ours, "dump tensor")
        raise UserError(
            "no tensor of the dump but the inputs matches the model",
            "check the format (--format) and the names (--name-map)",
        )
    return dump


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return "no tensor of the model" + (f" (closest: {', '.join(close)})" if close else "")


def _sanitize(name: str) -> str:
    # SNPE/QNN and AIMET write file names with every non-word character turned to `_`.
    return re.sub(r"\W+", "_", name)


def _tpu_mlir(
    arrays: Mapping[str, np.ndarray], model: ir.Model, mapping: Mapping[str, str]
) -> Dump:
    """TPU-MLIR names ops after their output tensor and type, after its fusions."""
    index = ModelIndex.from_model(model)
    ops = tpu_ops(index, graph_facts(model))
    by_op = {op.name: op.output for op in ops}
    layouts = _reordered_layouts(ops, model)
    by_op.update({name: name for name in index.graph_inputs})
    renamed: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    casts = _int8_casts(arrays, by_op, set(index.graph_inputs))
    reshaped = _casts_after_reshapes(casts, by_op, index)
    for key, array in arrays.items():
        tensor = mapping.get(key) or by_op.get(key)
        if tensor is None:
            skipped[key] = "an op TPU-MLIR's lowering adds (cast, table, reshape...)"
            continue
        cast = casts.get(key, reshaped.get(key)) if key not in mapping else None
        if cast is not None and grid_step(array) is None:
            # A float op's output (F16/F32 LayerNorm) read by its consumers through one cast
            # to int8: the cast is what they read, and what our quantizer there gives.
            skipped[key] = f"the float value before TPU-MLIR's cast to int8 {cast} (compared)"
            # A cast after a reshape is the reshape's too: named apart for the op before it.
            key, array = (cast if key in casts else f"{cast} (as {key})"), arrays[cast]
        if key in layouts and array.ndim == len(layouts[key]):
            array = np.ascontiguousarray(array.transpose(layouts[key]))
        renamed[key] = array
        mapping = {**mapping, key: tensor}
    dump = _align(renamed, model, mapping, strict=True)
    dump.skipped.update({k: why for k, why in skipped.items() if k not in dump.names.values()})
    return dump


def _reordered_layouts(ops: list[TpuOp], model: ir.Model) -> dict[str, tuple[int, ...]]:
    """Dump name -> the axes that put it in our layout, for a Transpose TPU-MLIR reordered
    around the Softmax after it (`<op>_r_reordered`, SOFTMAX_REORDER_SOURCE): its one Permute
    does both Transposes, so the dump holds our tensor permuted by the second one (doclayout's
    DFL: ours (1, 21504, 4, 16), the dump's (1, 16, 4, 21504)). Samples stack along axis 0,
    so only a second perm that keeps axis 0 is undone."""
    values = {v.name: v for node in model.graph for v in node.outputs if v.name}
    found: dict[str, tuple[int, ...]] = {}
    for op in ops:
        if "softmax-reorder" not in op.rules or not op.name.endswith("_r_reordered"):
            continue
        value = values.get(op.output)
        softmax = [u.node for u in value.uses()] if value is not None else []
        if len(softmax) != 1 or softmax[0].op_type != "Softmax":
            continue
        after = [u.node for u in softmax[0].outputs[0].uses()]
        perm = after[0].attributes.get_ints("perm") if len(after) == 1 else None
        if after and after[0].op_type == "Transpose" and perm and perm[0] == 0:
            found[op.name] = tuple(int(i) for i in np.argsort(perm))
    return found


def _int8_casts(
    arrays: Mapping[str, np.ndarray], by_op: Mapping[str, str], inputs: set[str]
) -> dict[str, str]:
    """Op name -> the one int8 cast TPU-MLIR's lowering adds after it (`<op><consumer>_si8`,
    `_ui8`) where every cast of that op holds the same values; graph inputs keep their own."""
    found: dict[str, list[str]] = {}
    for key in arrays:
        if not key.endswith(("_si8", "_ui8")):
            continue
        owners = [op for op in by_op if key.startswith(op) and len(op) < len(key) - 4]
        if owners:
            found.setdefault(max(owners, key=len), []).append(key)
    return {
        op: keys[0]
        for op, keys in found.items()
        if by_op[op] not in inputs
        and all(np.array_equal(arrays[keys[0]], arrays[k]) for k in keys[1:])
    }


# Data movement that keeps the order of the elements: a reshaped tensor's values are its input's.
RESHAPES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _casts_after_reshapes(
    casts: Mapping[str, str], by_op: Mapping[str, str], index: ModelIndex
) -> dict[str, str]:
    """Op name -> the int8 cast TPU-MLIR puts after the reshape that alone reads the op's
    output, for an op without a cast of its own: the reshape moves the float values as they
    are and the cast after it is what our quantizer on the op's output gives (ppocr's last
    F16 LayerNorm `Add.205_LayerNormalization` -> `p2o.pd_op.reshape.58.0_Reshape` in f16 ->
    `p2o.pd_op.reshape.58.0_Reshapep2o.pd_op.transpose.7.0_Transpose_si8`)."""
    op_of = {tensor: op for op, tensor in by_op.items()}
    readers: dict[str, list[NodeInfo]] = {}
    for node in index.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    found: dict[str, str] = {}
    for op, tensor in by_op.items():
        reads = readers.get(tensor, [])
        if op in casts or len(reads) != 1 or reads[0].op_type not in RESHAPES:
            continue
        cast = casts.get(op_of.get(reads[0].outputs[0], ""))
        if cast is not None and tensor not in index.graph_outputs:
            found[op] = cast
    return found


def _load_raw(path: Path, ours: list[str]) -> dict[str, np.ndarray]:
    """`.raw` float32 files, per sample folder `Result_<n>` when there are several."""
    if not path.is_dir():
        raise UserError(f"{path} is not a folder", "pass the folder snpe-net-run wrote (--debug)")
    results = sorted(
        (p for p in path.iterdir() if p.is_dir() and re.fullmatch(r"Result_\d+", p.name)),
        key=lambda p: int(p.name.split("_")[1]),
    )
    samples = [_raw_files(folder) for folder in results] or [_raw_files(path)]
    names = set(samples[0])
    for number, sample in enumerate(samples):
        if set(sample) != names:
            missing = sorted(names ^ set(sample))[:3]
            raise UserError(f"sample {number} of {path} has other tensors: {missing}", "re-dump")
    if not names:
        raise UserError(f"{path} holds no .raw files", "run the net with --debug")
    return {name: np.stack([s[name] for s in samples]) for name in sorted(names)}


def _raw_files(folder: Path) -> dict[str, np.ndarray]:
    found = {}
    for file in folder.rglob("*.raw"):
        name = file.relative_to(folder).as_posix().removesuffix(".raw")
        found[name] = np.fromfile(file, dtype=np.float32)
    return found


def _run_onnx(
    path: Path, model: ir.Model, inputs: Mapping[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """Every tensor of the ONNX model at `path` that shares a name with ours, run in ORT."""
    import onnxruntime as ort

    if not inputs:
        raise UserError("an onnx-outputs dump needs the inputs", "pass --inputs FILE.npz")
    try:
        other = ir.load(path)
    except Exception as exc:  # onnx_ir raises several types for a file that is not ONNX
        raise UserError(f"cannot load {path} as ONNX: {exc}", "pass an .onnx model") from exc
    ours = set(_tensor_names(model))
    existing = {v.name for v in other.graph.outputs}
    for node in other.graph:
        for value in node.outputs:
            if value.name in ours and value.name not in existing:
                other.graph.outputs.append(value)
                existing.add(value.name)
    proto = ir.serde.serialize_model(other)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name: np.asarray(inputs[i.name]) for i in session.get_inputs() if i.name in inputs}
    batches = _batches(feeds, other)
    runs = [dict(zip(names, session.run(names, batch), strict=True)) for batch in batches]
    return {name: np.concatenate([r[name] for r in runs]) for name in names}


def _batches(feeds: Mapping[str, np.ndarray], model: ir.Model) -> list[dict[str, np.ndarray]]:
    """The feeds cut into the model's batch size (1 when the model fixes it)."""
    first = next(iter(model.graph.inputs))
    dim = first.shape[0] if first.shape is not None and len(first.shape) else None
    size = dim if isinstance(dim, int) else None
    total = len(next(iter(feeds.values())))
    step = size or total
    return [{k: v[i : i + step] for k, v in feeds.items()} for i in range(0, total, step)]
