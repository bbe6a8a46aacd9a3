"""Layer discovery: which nodes carry weights to quantize, and which tensors are activations.

A layer's id is its node name (made stable by the `stable-names` pass), the key every later
artifact, assignment and vendor export uses.
"""

from __future__ import annotations

import onnx_ir as ir
from pydantic import BaseModel, Field

from quantlens.ir.passes.fold_batchnorm import FOLDED_BN_KEY

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
_INT_RESULT_OPS = {
    "Shape",
    "Size",
    "NonZero",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
}


class Layer(BaseModel):
    """A node with a constant weight: the unit a precision mode is assigned to."""

    id: str
    op_type: str
    input: str
    output: str
    weight: str
    bias: str | None = None
    weight_shape: list[int] = Field(default_factory=list)
    folded_bn: str | None = None
    macs: int | None = None
    # The weight axis that indexes output channels (for per-channel quantization), if any.
    weight_axis: int | None = None


class Rejection(BaseModel):
    node: str
    op_type: str
    reason: str


class LayerMap(BaseModel):
    layers: list[Layer] = Field(default_factory=list)
    activations: list[str] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)


def discover_layers(model: ir.Model) -> LayerMap:
    result = LayerMap(activations=_activation_tensors(model))
    for node in model.graph:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        layer, reason = _as_layer(node)
        if layer is not None:
            result.layers.append(layer)
        else:
            result.rejected.append(
                Rejection(
                    node=node.name or "",
                    op_type=node.op_type,
                    reason=f"{node.name} not quantized: {reason}",
                )
            )
    return result


def _as_layer(node: ir.Node) -> tuple[Layer | None, str]:
    weight_index = _weight_index(node)
    if weight_index is None:
        return None, "weight is not a constant (both operands are activations)"
    data, weight = node.inputs[1 - weight_index], node.inputs[weight_index]
    assert data is not None and weight is not None and weight.const_value is not None
    bias = node.inputs[2] if node.op_type != "MatMul" and len(node.inputs) > 2 else None
    if bias is not None and bias.const_value is None:
        return None, "bias is not a constant"
    shape = [int(d) for d in weight.const_value.shape.numpy()]
    layer = Layer(
        id=node.name or "",
        op_type=node.op_type,
        input=data.name or "",
        output=node.outputs[0].name or "",
        weight=weight.name or "",
        bias=bias.name if bias is not None else None,
        weight_shape=shape,
        folded_bn=node.metadata_props.get(FOLDED_BN_KEY),
        macs=_macs(node, shape),
        weight_axis=_output_channel_axis(node, weight_index, shape),
    )
    return layer, ""


def _output_channel_axis(node: ir.Node, weight_index: int, shape: list[int]) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    # MatMul: the right-hand weight's last axis holds output channels; a left-hand one has none.
    return len(shape) - 1 if weight_index == 1 and shape else None


def _weight_index(node: ir.Node) -> int | None:
    def constant(i: int) -> bool:
        value = node.inputs[i] if len(node.inputs) > i else None
        return value is not None and value.const_value is not None

    if constant(1):
        return 1
    if node.op_type == "MatMul" and constant(0):
        return 0
    return None


def _macs(node: ir.Node, weight_shape: list[int]) -> int | None:
    """Multiply-accumulates per inference, when the output shape is known (for cost models)."""
    out = node.outputs[0].shape
    if out is None or not out.is_static():
        return None
    out_dims = [int(d) for d in out.numpy()]
    weight_elems = 1
    for d in weight_shape:
        weight_elems *= d
    if node.op_type in ("Conv", "ConvTranspose") and len(out_dims) >= 2 and weight_shape:
        spatial = 1
        for d in out_dims[2:]:
            spatial *= d
        per_output = weight_elems // max(weight_shape[0], 1)
        return out_dims[0] * out_dims[1] * spatial * per_output
    rows = 1
    for d in out_dims[:-1]:
        rows *= d
    return rows * weight_elems


def _activation_tensors(model: ir.Model) -> list[str]:
    names = [v.name or "" for v in model.graph.inputs if _is_float(v, None)]
    for node in model.graph:
        names.extend(v.name or "" for v in node.outputs if _is_float(v, node.op_type))
    return names


def _is_float(value: ir.Value, op_type: str | None) -> bool:
    if value.dtype is not None:
        return value.dtype in _FLOAT_TYPES
    return op_type not in _INT_RESULT_OPS
