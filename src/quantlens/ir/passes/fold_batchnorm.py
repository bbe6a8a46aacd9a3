"""Fold BatchNormalization into the Conv or Gemm that feeds it.

Hardware folds BN before quantizing, so the quantized weight is the folded one; analysing the
unfolded graph would put a quantization point between conv and BN that no chip has. Folded convs
are marked in their metadata (`quantlens.folded_bn`), which later diagnostics read: a conv with
no BN behind it is a known source of wide weight ranges.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.base import PassReport

FOLDED_BN_KEY = "quantlens.folded_bn"


def fold_batchnorm(model: ir.Model) -> PassReport:
    report = PassReport(name="fold-batchnorm")
    for bn in list(model.graph):
        if bn.op_type != "BatchNormalization" or len(bn.outputs) != 1:
            continue
        layer = _foldable_producer(bn)
        if layer is None:
            continue
        _fold(model.graph, layer, bn)
        report.note(f"{bn.name} -> {layer.name}")
    return report


def _foldable_producer(bn: ir.Node) -> ir.Node | None:
    source = bn.inputs[0]
    layer = source.producer() if source is not None else None
    if layer is None or layer.op_type not in ("Conv", "Gemm"):
        return None
    if len(source.uses()) != 1 or source.is_graph_output():  # type: ignore[union-attr]
        return None
    if not all(v is not None and v.const_value is not None for v in bn.inputs[1:5]):
        return None
    weight = layer.inputs[1]
    if weight is None or weight.const_value is None or len(weight.uses()) != 1:
        return None
    bias = layer.inputs[2] if len(layer.inputs) > 2 else None
    if bias is not None and (bias.const_value is None or len(bias.uses()) != 1):
        return None
    if layer.op_type == "Gemm" and not plain_gemm(layer):
        return None
    return layer


def plain_gemm(gemm: ir.Node) -> bool:
    """A Gemm that is x @ W (+ C): no transposed input, no scaling."""
    attrs = gemm.attributes
    return (
        attrs.get_float("alpha", 1.0) == 1.0
        and attrs.get_float("beta", 1.0) == 1.0
        and attrs.get_int("transA", 0) == 0
    )


def _fold(graph: ir.Graph, layer: ir.Node, bn: ir.Node) -> None:
    scale, shift, mean, var = (_array(bn.inputs[i]) for i in range(1, 5))
    eps = bn.attributes.get_float("epsilon", 1e-5)
    factor = scale / np.sqrt(var + eps)
    weight_value = layer.inputs[1]
    assert weight_value is not None
    weight = _array(weight_value)
    weight = _scale_output_channels(layer, weight, factor)
    bias_value = layer.inputs[2] if len(layer.inputs) > 2 else None
    bias = _array(bias_value) if bias_value is not None else np.zeros_like(mean)
    new_bias = (bias - mean) * factor + shift
    dtype = weight_value.const_value.numpy().dtype  # type: ignore[union-attr]
    weight_value.const_value = ir.tensor(weight.astype(dtype), name=weight_value.name)
    _set_bias(graph, layer, bias_value, new_bias.astype(dtype))
    out = bn.outputs[0]
    conv_out = layer.outputs[0]
    out_name = out.name
    out.replace_all_uses_with(conv_out, replace_graph_outputs=True)
    graph.remove(bn, safe=True)
    conv_out.name = out_name
    layer.metadata_props[FOLDED_BN_KEY] = bn.name or ""


def _array(value: ir.Value | None) -> np.ndarray:
    assert value is not None and value.const_value is not None
    return value.const_value.numpy().astype(np.float64)


def _scale_output_channels(layer: ir.Node, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    if layer.op_type == "Conv":
        return weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    if layer.attributes.get_int("transB", 0):
        return weight * factor[:, None]
    return weight * factor[None, :]


def _set_bias(
    graph: ir.Graph, layer: ir.Node, bias_value: ir.Value | None, bias: np.ndarray
) -> None:
    if bias_value is not None:
        bias_value.const_value = ir.tensor(bias, name=bias_value.name)
        return
    name = f"{layer.name}.bias_folded"
    value = ir.Value(
        name=name,
        const_value=ir.tensor(bias, name=name),
        type=ir.TensorType(ir.DataType.from_numpy(bias.dtype)),
        shape=ir.Shape(bias.shape),
    )
    graph.register_initializer(value)
    if len(layer.inputs) < 3:
        layer.resize_inputs(3)
    layer.replace_input_with(2, value)
