"""Quantizer placement for a runtime that fuses Q/DQ around some ops into integer kernels.

ONNX Runtime's CPU QDQ transformers replace `DQ -> op -> Q` by one integer kernel (QLinearConv,
QLinearMatMul, QGemm, QLinearAdd, QLinearSigmoid, QLinearConcat, ...) only where *every*
activation input comes from a DequantizeLinear and the output goes to a QuantizeLinear; every
other op runs in float between a DQ and a Q. So a tensor is quantized where an integer op
writes it (its output must be) or reads it (its inputs must be), and nowhere else:

- an integer op is one of the profile's `integer_ops` in an integer mode whose float inputs are
  all activations (a weighted layer's constant weight and bias excepted: they are quantized as
  weights), so `Add(x, constant)` stays float rather than gaining a quantizer ORT cannot fuse;
- an absorbed activation (`Relu`, `Clip`) read only from an integer op's output moves that
  op's output quantizer behind it: ORT deletes a Relu before a Q whose zero point is the grid's
  floor (a uint8 range clipped at 0 has zero point 0), and a Clip whose bounds hold the Q range,
  and then fuses the op with the Q. Quantizing after the activation is the same arithmetic;
- data movement (`shared_scale_ops`) on a quantized tensor is quantized with the same
  parameters, so ORT drops its Q/DQ pair and moves integers;
- with `float_graph_outputs`, a graph output is quantized only when an integer op reads it.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from quantlens.ir.layers import WEIGHTED_OPS
from quantlens.schemes.formats import Format
from quantlens.schemes.modes import PrecisionMode
from quantlens.schemes.profiles import TargetProfile

Wants = dict[str, int]  # tensor -> bits


def integer_nodes(
    model: ir.Model, modes: Mapping[str, PrecisionMode], profile: TargetProfile
) -> set[str]:
    """Names of the nodes that run as integer kernels under `modes`.

    Weighted ops (Conv, MatMul, Gemm) always do: their integer kernel pays for quantizing
    inputs a float op wrote. A light op (Add, Mul, Sigmoid, Concat, pools) does only where
    every input it reads is quantized anyway and every reader of its output takes integers:
    otherwise its QLinear kernel would cost a Q/DQ pair more than it saves and would break ORT's
    float fusions (Gelu, LayerNorm) around it.
    """
    ops = set(profile.integer_ops or ())
    quantized: set[str] = set()
    found: set[str] = set()
    for node in model.graph:
        if node.op_type in WEIGHTED_OPS and _integer(node, modes, ops):
            found.add(node.name or "")
            quantized.update(v.name or "" for v in _activation_inputs(node))
            quantized.add(_written(node, profile).name or "")
    takes_integers = ops | set(profile.shared_scale_ops) | set(profile.absorbed_activations)
    outputs = {v.name for v in model.graph.outputs}
    for node in model.graph:  # topological order: a light op sees its inputs' final state
        name = node.name or ""
        if node.op_type in profile.shared_scale_ops and node.inputs and node.inputs[0] is not None:
            if node.inputs[0].name in quantized:
                quantized.update(v.name or "" for v in node.outputs)
            continue
        if name in found or node.op_type in WEIGHTED_OPS or not _integer(node, modes, ops):
            continue
        inputs = _activation_inputs(node)
        out = node.outputs[0]
        readers = {reader.op_type for reader, _ in out.uses()}
        if (
            inputs
            and all(v.name in quantized for v in inputs)
            and readers <= takes_integers
            and not (profile.float_graph_outputs and out.name in outputs)
        ):
            found.add(name)
            quantized.add(_written(node, profile).name or "")
    return found


def _integer(node: ir.Node, modes: Mapping[str, PrecisionMode], ops: set[str]) -> bool:
    mode = modes[node.name or ""]
    return node.op_type in ops and bool(mode.act_in_bits) and _reads_activations_only(node)


def place_integer_ops(
    model: ir.Model,
    modes: Mapping[str, PrecisionMode],
    profile: TargetProfile,
    float_tensors: set[str],
) -> tuple[dict[str, Format], dict[str, str]]:
    """(tensor -> format, shared output -> input) for the profile's integer ops."""
    integer = integer_nodes(model, modes, profile)
    outputs = {v.name for v in model.graph.outputs}
    wants: Wants = {}
    for node in model.graph:
        if (node.name or "") in integer:
            _want_node(node, modes[node.name or ""], profile, outputs, wants)
    formats: dict[str, Format] = {
        name: profile.activation_format(bits)
        for name, bits in wants.items()
        if name in float_tensors
    }
    shared = _share_data_movement(model, profile, outputs, formats)
    return formats, shared


def _want_node(
    node: ir.Node,
    mode: PrecisionMode,
    profile: TargetProfile,
    graph_outputs: set[str | None],
    wants: Wants,
) -> None:
    for value in _activation_inputs(node):
        _want(wants, value.name, mode.act_in_bits)
    target = _written(node, profile)
    if not (profile.float_graph_outputs and target.name in graph_outputs):
        _want(wants, target.name, mode.act_out_bits)


def _want(wants: Wants, name: str | None, bits: int | None) -> None:
    if name and bits:
        wants[name] = max(wants.get(name, 0), bits)


def _activation_inputs(node: ir.Node) -> list[ir.Value]:
    # A weighted layer's weight and bias are constants, quantized as weights.
    candidates = node.inputs[:2] if node.op_type in WEIGHTED_OPS else node.inputs
    return [v for v in candidates if v is not None and v.const_value is None]


def _reads_activations_only(node: ir.Node) -> bool:
    if node.op_type in WEIGHTED_OPS:
        return True
    return all(v is None or v.const_value is None for v in node.inputs)


def _written(node: ir.Node, profile: TargetProfile) -> ir.Value:
    """The tensor an integer op's output quantizer sits on: behind an absorbed activation."""
    absorbed = _absorbing_activation(node.outputs[0], profile)
    return absorbed.outputs[0] if absorbed is not None else node.outputs[0]


def _absorbing_activation(value: ir.Value, profile: TargetProfile) -> ir.Node | None:
    """The Relu/Clip that reads `value` alone, when it is `value`'s only reader."""
    uses = list(value.uses())
    if len(uses) != 1:
        return None
    reader, index = uses[0]
    if reader.op_type not in profile.absorbed_activations or index != 0:
        return None
    return reader


def _share_data_movement(
    model: ir.Model,
    profile: TargetProfile,
    graph_outputs: set[str | None],
    formats: dict[str, Format],
) -> dict[str, str]:
    """Data movement on a quantized tensor keeps its grid: ORT then moves integers."""
    shared: dict[str, str] = {}
    moves = set(profile.shared_scale_ops)
    for node in model.graph:  # topological order: a chain of moves shares one grid
        source = node.inputs[0] if node.inputs else None
        if node.op_type not in moves or source is None or source.name not in formats:
            continue
        fmt = formats[source.name]
        for value in node.outputs:
            name = value.name or ""
            if formats.get(name, fmt) != fmt:
                continue
            if profile.float_graph_outputs and name in graph_outputs and name not in formats:
                continue
            formats[name] = fmt
            shared[name] = source.name
    return shared
