"""ONNX Runtime `TensorQuantOverrides` for `onnxruntime.quantization.quantize_static`.

The file holds the overrides (exact scale and zero point per activation, per channel for
weights) plus the other `quantize_static` arguments that make ORT quantize what the plan
quantizes: the float layers as `nodes_to_exclude`, the weighted op types, the default types.
`quantize_static_kwargs` turns it into keyword arguments (QuantType enums, float32 scales).
The tensor names are the canonical model's, which is written beside the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

from quantlens.errors import UserError
from quantlens.export.qdq_lower import Fresh, lower, lowerings
from quantlens.export.vendors.base import (
    Dropped,
    ExportContext,
    ModelIndex,
    NodeInfo,
    Rendered,
    compact_assignment,
    register,
    unknown_name_error,
)
from quantlens.export.vendors.encodings import attach_float_model, tensor_names
from quantlens.ir.layers import WEIGHTED_OPS
from quantlens.ir.passes.infer_shapes import infer_shapes
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.modes import get_mode
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import TensorQuant

QUANT_TYPES = {
    "uint8": "QUInt8",
    "int8": "QInt8",
    "uint16": "QUInt16",
    "int16": "QInt16",
    "uint4": "QUInt4",
    "int4": "QInt4",
}
BITS = {name: int(onnx_type.lstrip("uint")) for onnx_type, name in QUANT_TYPES.items()}
# What keeps quantize_static to the plan (placement "weighted-inputs": a weighted layer's
# activation input and weight, the int32 bias derived from them): no output quantizers on the
# layers (its QDQ Conv/MatMul/Gemm quantize outputs too), and the weight scales as written
# (it widens a weight scale whose bias would overflow int32 unless told not to).
EXTRA_OPTIONS: dict[str, Any] = {
    "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
    "QDQDisableWeightAdjustForInt32Bias": True,
}
# For plans that quantize integer ops' outputs (ort-cpu-fast): ORT quantizes every tensor the
# included nodes read and write, which the overrides name; weights as written.
INTEGER_EXTRA_OPTIONS: dict[str, Any] = {"QDQDisableWeightAdjustForInt32Bias": True}
# A layer with an integer weight whose output the plan leaves float (it writes a graph output):
# quantize_static cannot say that for one node (OpTypesToExcludeOutputQuantization is per op
# type, and an excluded node's weight stays float).
FLOAT_OUTPUT = (
    "quantize_static quantizes a layer's output with its weight; this layer's output is float "
    "in the plan, so it is excluded and its weight is not the plan's (float, or quantized by "
    "ORT's own optimizer at load); the QDQ export keeps the plan's int8 weight"
)
USAGE = (
    'python -c "import sys; from quantlens.export.vendors.ort import quantize_with_overrides; '
    'quantize_with_overrides(sys.argv[1], sys.argv[2])" FILE out.qdq.onnx'
)


@register
class OrtFormat:
    name: str = "ort"
    description: str = "ONNX Runtime TensorQuantOverrides for quantize_static"
    suffixes: tuple[str, ...] = (".ort.json",)
    targets: tuple[str, ...] = ("ort-cpu", "ort-cpu-fast")
    default_target: str = "ort-cpu"

    def export(self, ctx: ExportContext) -> Rendered:
        out = Rendered(texts={}, entries=0, usage=USAGE)
        overrides = {
            name: _override(quant)
            for name, quant in {**ctx.plan.activations, **ctx.plan.weights}.items()
            if isinstance(quant.format, IntFormat) and quant.bias_of is None
        }
        if _integer_placement(ctx):
            op_types, excluded = _integer_ops(ctx, out)
            extra = INTEGER_EXTRA_OPTIONS
        else:
            excluded = [node.name for node in ctx.model.nodes if _check_node(ctx, node, out)]
            excluded += [n.name for n in ctx.model.nodes if _unplanned_op(ctx, n)]
            op_types, extra = list(WEIGHTED_OPS), EXTRA_OPTIONS
        payload = {
            "usage": USAGE,
            "qdq_model": ctx.qdq_model,
            "quant_format": "QDQ",
            "activation_type": "QUInt8",
            "weight_type": "QInt8",
            "per_channel": any(q.axis is not None for q in ctx.plan.weights.values()),
            "op_types_to_quantize": op_types,
            "nodes_to_exclude": excluded,
            "extra_options": extra,
            # quantlens's own key (quantize_static ignores it): `quantize_with_overrides`
            # rewrites ORT's model as our export is (`qdq_lower`: HardSigmoid as QLinearAdd...).
            "lowerings": lowerings(ctx.run_target or ctx.plan.target),
            "TensorQuantOverrides": overrides,
        }
        out.entries = len(overrides) + len(excluded)
        out.texts[".ort.json"] = json.dumps(payload, indent=2) + "\n"
        attach_float_model(ctx, out)
        return out

    def parse(
        self, text: str, source: str, model: ModelIndex, name_map: Mapping[str, str] | None
    ) -> Assignment:
        payload = _load(text, source)
        bits = _override_bits(payload, source, model)
        excluded = set(payload.get("nodes_to_exclude") or [])
        for name in excluded - set(model.names):
            raise unknown_name_error("node", name, model.names, f"{source} (nodes_to_exclude)")
        # An excluded op without a constant weight is no layer: kept out so ORT adds nothing.
        modes = {
            node.name: "fp32" if node.name in excluded and node.params else _node_mode(node, bits)
            for node in model.nodes
        }
        return compact_assignment(modes, self.default_target)


def _integer_placement(ctx: ExportContext) -> bool:
    """A plan that quantizes integer ops' outputs too (ort-cpu-fast), not only layer inputs."""
    try:
        return get_profile(ctx.run_target or ctx.plan.target).placement == "all-outputs"
    except UserError:
        return False


def _integer_ops(ctx: ExportContext, out: Rendered) -> tuple[list[str], list[str]]:
    """(op types to quantize, nodes to exclude) that make quantize_static place exactly the
    plan's quantizers: a node is quantized where the plan quantizes every activation it reads
    and writes (ORT then fuses it), or where it is a layer with an integer weight; every other
    node is excluded, so ORT adds no quantizer of its own (checked in the tests: the tensors
    ORT quantizes are the overrides)."""
    planned = {n for n, q in ctx.plan.activations.items() if isinstance(q.format, IntFormat)}
    weights = {n for n, q in ctx.plan.weights.items() if isinstance(q.format, IntFormat)}
    mode_of = ctx.assignment.mode_name
    produced = set(ctx.model.producers()) | set(ctx.model.graph_inputs)
    op_types: set[str] = set()
    excluded: list[str] = []
    # A Relu/Clip the plan quantizes behind (ORT deletes it before the Q): the op before it
    # writes the quantized tensor, and the activation passes it on.
    absorbed = _absorbed_outputs(ctx, planned)
    for node in ctx.model.nodes:
        _float16_dropped(ctx, node, out)
        acts = [absorbed.get(i, i) for i in node.inputs if i in produced]
        outs = [absorbed.get(o, o) for o in node.outputs]
        if acts and all(t in planned for t in (*acts, *outs)):
            op_types.add(node.op_type)
            continue
        excluded.append(node.name)
        if node.params and node.params[0] in weights:
            mode = mode_of(node.name)
            out.dropped.append(Dropped(layer=node.name, mode=mode, reason=FLOAT_OUTPUT))
    return sorted(op_types), excluded


def _absorbed_outputs(ctx: ExportContext, planned: set[str]) -> dict[str, str]:
    """Unplanned tensor -> the planned output of the lone Relu/Clip that reads it."""
    readers: dict[str, list[NodeInfo]] = {}
    for node in ctx.model.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    found = {}
    for tensor, nodes in readers.items():
        if tensor in planned or len(nodes) != 1 or nodes[0].op_type not in ("Relu", "Clip"):
            continue
        if nodes[0].outputs and nodes[0].outputs[0] in planned:
            found[tensor] = nodes[0].outputs[0]
    return found


def _float16_dropped(ctx: ExportContext, node: NodeInfo, out: Rendered) -> None:
    mode = get_mode(ctx.assignment.mode_name(node.name))
    if mode.is_float and mode.float_type != "fp32":
        reason = "quantize_static has no float16 layers; excluded, so it runs in float32"
        out.dropped.append(Dropped(layer=node.name, mode=mode.name, reason=reason))


def _override(quant: TensorQuant) -> list[dict[str, Any]]:
    assert isinstance(quant.format, IntFormat)
    qtype = QUANT_TYPES[quant.format.onnx_type]
    pairs = [{"scale": s, "zero_point": z} for s, z in zip(quant.scale, quant.zero_point)]
    head: dict[str, Any] = {"quant_type": qtype}
    if quant.axis is not None and len(pairs) > 1:
        head["axis"] = quant.axis
    return [{**head, **pairs[0]}, *pairs[1:]]


def _unplanned_op(ctx: ExportContext, node: NodeInfo) -> bool:
    """An op ORT would quantize (a MatMul of two activations) whose inputs the plan leaves
    float: excluded, or ORT adds quantizers of its own there."""
    planned = any(i in ctx.plan.activations for i in node.inputs)
    return node.op_type in WEIGHTED_OPS and not node.params and not planned


def _check_node(ctx: ExportContext, node: NodeInfo, out: Rendered) -> bool:
    """Report what ORT cannot do for this node; True when it must be excluded (float)."""
    mode = get_mode(ctx.assignment.mode_name(node.name))
    if mode.is_float:
        _float16_dropped(ctx, node, out)
        return node.op_type in WEIGHTED_OPS
    if mode.name == ctx.assignment.default:
        return False
    if node.op_type not in WEIGHTED_OPS:
        reason = "ORT quantizes only the inputs of Conv/ConvTranspose/Gemm/MatMul here"
        out.dropped.append(Dropped(layer=node.name, mode=mode.name, reason=reason))
    elif mode.act_out_bits != mode.act_in_bits:
        reason = "outputs are quantized by their consumers here; give the consumer 16-bit inputs"
        out.dropped.append(Dropped(layer=node.name, mode=mode.name, reason=reason))
    return False


def _load(text: str, source: str) -> dict[str, Any]:
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: not JSON ({exc})", "pass a TensorQuantOverrides file") from exc
    if isinstance(payload, dict) and "TensorQuantOverrides" not in payload:
        payload = {"TensorQuantOverrides": payload}  # a bare overrides mapping
    if not isinstance(payload, dict) or not isinstance(payload["TensorQuantOverrides"], dict):
        raise UserError(f"{source}: TensorQuantOverrides is not a tensor map", "see the ORT docs")
    return payload


def _override_bits(payload: dict[str, Any], source: str, model: ModelIndex) -> dict[str, int]:
    known = set(tensor_names(model))
    bits = {}
    for name, entries in payload["TensorQuantOverrides"].items():
        if name not in known:
            raise unknown_name_error("tensor", name, known, source)
        qtype = entries[0].get("quant_type") if entries and isinstance(entries[0], dict) else None
        if qtype is not None and str(qtype).split(".")[-1] not in BITS:
            raise UserError(
                f"{source}: tensor {name!r} has quant_type {qtype!r}", f"use one of {list(BITS)}"
            )
        if qtype is not None:
            bits[name] = BITS[str(qtype).split(".")[-1]]
    return bits


def _node_mode(node: NodeInfo, bits: Mapping[str, int]) -> str:
    if node.op_type not in WEIGHTED_OPS or not node.params:
        return "a8_w8"
    weight = bits.get(node.params[0], 8)
    source = next((i for i in node.inputs if i and i not in node.params), "")
    if weight == 4:
        return "a8_w4"
    if weight == 16:
        return "a16_w16"
    return "a16_w8" if bits.get(source, 8) == 16 else "a8_w8"


def quantize_static_kwargs(path: str | Path) -> dict[str, Any]:
    """Keyword arguments for `quantize_static` from an exported file (ORT types, not JSON)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    payload = _load(Path(path).read_text(), str(path))
    overrides = {
        name: _typed(entries, QuantType)
        for name, entries in payload["TensorQuantOverrides"].items()
    }
    extra = {**(payload.get("extra_options") or {}), "TensorQuantOverrides": overrides}
    return {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType[payload.get("activation_type", "QUInt8")],
        "weight_type": QuantType[payload.get("weight_type", "QInt8")],
        "per_channel": bool(payload.get("per_channel", False)),
        "op_types_to_quantize": payload.get("op_types_to_quantize"),
        "nodes_to_exclude": payload.get("nodes_to_exclude") or [],
        "extra_options": extra,
    }


def quantize_with_overrides(
    file: str | Path, output: str | Path, reader: Any = None, float_model: str | Path | None = None
) -> None:
    """`quantize_static` on the float model written beside `file` (FILE.float.onnx for
    FILE.ort.json) with the file's arguments. Every quantized tensor has an override, so the
    calibration data only feeds ORT's pass over the graph: one all-zero sample by default."""
    from onnxruntime.quantization import quantize_static

    path = Path(file)
    source = Path(float_model) if float_model else path.with_name(_float_name(path.name))
    quantize_static(source, output, reader or _ZeroReader(source), **quantize_static_kwargs(path))
    payload = _load(path.read_text(), str(path))
    # Files written before "lowerings" carry only the HardSigmoid flag.
    rewrites = payload.get("lowerings") or (
        ["hardsigmoid"] if payload.get("lower_hardsigmoid") else []
    )
    if rewrites:
        _lower_saved(Path(output), list(rewrites))


def _lower_saved(path: Path, rewrites: list[str]) -> None:
    """ORT's quantize_static leaves HardSigmoid, a spatial ReduceMean and the erf GELU in float
    between a DQ and a Q; the same rewrites as our QDQ export give the kernels ORT fuses."""
    model = ir.load(str(path))
    infer_shapes(model)  # quantize_static's model has no shapes: a ReduceMean needs its rank
    if lower(model.graph, rewrites, Fresh.of(model.graph)):
        TopologicalSortPass()(model)
        ir.save(model, str(path))


def _float_name(name: str) -> str:
    return name.removesuffix(".json").removesuffix(".ort") + ".float.onnx"


class _ZeroReader:
    """One all-zero sample shaped as the model's inputs (dynamic dims as 1)."""

    def __init__(self, model: Path) -> None:
        import onnx

        graph = onnx.load(model, load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        feeds = {
            v.name: np.zeros(
                [d.dim_value or 1 for d in v.type.tensor_type.shape.dim],
                onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type),
            )
            for v in graph.input
            if v.name not in inits
        }
        self._feeds = iter([feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _typed(entries: list[dict[str, Any]], quant_type: Any) -> list[dict[str, Any]]:
    """ORT wants QuantType enums, float32 scales (a float64 one becomes a double initializer)
    and zero points in the grid's dtype; channels after the first inherit the type."""
    name = entries[0].get("quant_type", "QUInt8") if entries else "QUInt8"
    dtype = _ZERO_DTYPES[name]
    typed = []
    for entry in entries:
        item = dict(entry)
        if "quant_type" in item:
            item["quant_type"] = quant_type[item["quant_type"]]
        if "scale" in item:
            item["scale"] = np.array(item["scale"], dtype=np.float32)
            item["zero_point"] = np.array(item["zero_point"], dtype=dtype)
        typed.append(item)
    return typed


_ZERO_DTYPES = {
    "QUInt8": np.uint8,
    "QInt8": np.int8,
    "QUInt16": np.uint16,
    "QInt16": np.int16,
    "QUInt4": np.uint8,
    "QInt4": np.int8,
}
