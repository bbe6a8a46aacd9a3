"""Small graph helpers shared by the float-domain optimization passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant held by `value` (an initializer or lifted constant), else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def single_use(value: ir.Value) -> ir.Node | None:
    """The one node reading `value`, or None when it has several readers or is a graph output."""
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return next(iter(uses)).node


def new_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register a fresh initializer under a name not taken yet."""
    taken = set(graph.initializers)
    unique, suffix = name, 1
    while unique in taken:
        suffix += 1
        unique = f"{name}_{suffix}"
    value = ir.Value(
        name=unique,
        const_value=ir.tensor(array, name=unique),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
    )
    graph.register_initializer(value)
    return value


def set_const(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> None:
    """Give `node` input `index` the value `array`: in place when nothing else reads the old
    constant, else through a new initializer (a shared constant must keep its value)."""
    old = node.inputs[index] if index < len(node.inputs) else None
    shared = old is None or old.const_value is None or len(old.uses()) != 1
    if old is not None and not shared and old.name in graph.initializers:
        old.const_value = ir.tensor(array, name=old.name)
        old.shape = ir.Shape(array.shape)
        return
    value = new_initializer(graph, name, array)
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def channel_vector(array: np.ndarray, rank: int, channels: int, axis: int = 1) -> np.ndarray | None:
    """A constant that broadcasts only along `axis` of a rank-`rank` tensor, as a vector of
    `channels` values; None when it varies along any other axis."""
    if array.ndim > rank:
        return None
    shape = (1,) * (rank - array.ndim) + tuple(array.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).astype(np.float64)


def tensor_rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return len(value.shape)


def conv_pads_zeros(conv: ir.Node) -> bool:
    """True when the conv reads zero padding (explicit pads or SAME auto-padding)."""
    auto = conv.attributes.get_string("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return True
    pads = conv.attributes.get_ints("pads", None)
    return bool(pads) and any(p != 0 for p in pads)  # type: ignore[union-attr]


def conv_weight(conv: ir.Node) -> np.ndarray | None:
    if conv.op_type != "Conv" or len(conv.inputs) < 2:
        return None
    return const_array(conv.inputs[1])


def conv_bias(conv: ir.Node, out_channels: int, dtype: np.dtype) -> np.ndarray:
    bias = const_array(conv.inputs[2]) if len(conv.inputs) > 2 else None
    return np.zeros(out_channels, dtype) if bias is None else bias


def set_conv_bias(graph: ir.Graph, conv: ir.Node, bias: np.ndarray) -> None:
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    if has_bias:
        set_const(graph, conv, 2, bias, f"{conv.name}.bias")
        return
    value = new_initializer(graph, f"{conv.name}.bias", bias)
    if len(conv.inputs) < 3:
        conv.resize_inputs(3)
    conv.replace_input_with(2, value)


def bypass(graph: ir.Graph, node: ir.Node, keep: ir.Value, rename: bool = False) -> None:
    """Remove a single-output node whose readers now read `keep`. With `rename`, `keep` takes
    the removed output's name, so tensor names downstream stay those of the original model."""
    out = node.outputs[0]
    name = out.name
    out.replace_all_uses_with(keep, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if rename:
        keep.name = name
