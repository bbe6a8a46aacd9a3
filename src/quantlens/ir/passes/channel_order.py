"""Remove a leading channel reorder (RGB <-> BGR) by permuting the first conv's input channels.

Models exported from one colour order and fed another often start with `Split -> Concat`,
`Gather(axis=1)` or `Slice(step=-1, axis=1)` on the input. Those nodes are pure data movement
that a chip runs as extra layers; the same permutation applied to the weights of the conv(s)
reading the result (and to any per-channel constants on the way) is free and exact.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.fuse_affine import split_affine
from quantlens.ir.passes.graph_utils import (
    channel_vector,
    const_array,
    conv_weight,
    set_const,
    single_use,
)


def remove_channel_reorder(model: ir.Model) -> PassReport:
    report = PassReport(name="remove-channel-reorder")
    for value in list(model.graph.inputs):
        found = _reorder_of(value)
        if found is None:
            continue
        nodes, output, perm = found
        reason = _rewrite(model.graph, value, nodes, output, perm)
        if reason:
            report.details.append(f"{value.name}: channel reorder kept ({reason})")
        else:
            names = ", ".join(n.name or n.op_type for n in nodes)
            report.note(f"{value.name}: removed {names} (order {perm.tolist()})")
    return report


def _reorder_of(value: ir.Value) -> tuple[list[ir.Node], ir.Value, np.ndarray] | None:
    """(nodes, permuted output, permutation) when `value` is only read by a channel reorder."""
    channels = _channels(value)
    if channels is None or not value.uses():
        return None
    readers = [use.node for use in value.uses()]
    first = readers[0]
    if len(readers) == 1 and first.op_type == "Gather":
        return _gather(first, channels)
    if len(readers) == 1 and first.op_type == "Split":
        return _split_concat(first, channels)
    if all(n.op_type == "Slice" for n in readers):
        return _slices(readers, value, channels)
    return None


def _channels(value: ir.Value) -> int | None:
    if value.shape is None or len(value.shape) < 3 or not isinstance(value.shape[1], int):
        return None
    return int(value.shape[1])


def _is_perm(order: np.ndarray, channels: int) -> bool:
    return order.shape == (channels,) and sorted(order.tolist()) == list(range(channels))


def _gather(node: ir.Node, channels: int) -> tuple[list[ir.Node], ir.Value, np.ndarray] | None:
    indices = const_array(node.inputs[1])
    if node.attributes.get_int("axis", 0) != 1 or indices is None:
        return None
    order = np.where(indices < 0, indices + channels, indices).astype(np.int64)
    return ([node], node.outputs[0], order) if _is_perm(order, channels) else None


def _split_concat(
    split: ir.Node, channels: int
) -> tuple[list[ir.Node], ir.Value, np.ndarray] | None:
    if split.attributes.get_int("axis", 0) != 1 or len(split.outputs) != channels:
        return None
    sizes = const_array(split.inputs[1]) if len(split.inputs) > 1 else None
    if sizes is not None and not np.all(sizes == 1):
        return None
    concat = single_use(split.outputs[0])
    if concat is None or concat.op_type != "Concat" or concat.attributes.get_int("axis", 0) != 1:
        return None
    position = {id(out): i for i, out in enumerate(split.outputs)}
    if any(single_use(out) is not concat for out in split.outputs):
        return None
    order = np.array([position.get(id(v), -1) for v in concat.inputs], np.int64)
    return ([split, concat], concat.outputs[0], order) if _is_perm(order, channels) else None


def _slice_channels(node: ir.Node, channels: int, rank: int) -> list[int] | None:
    """The channels a Slice on axis 1 reads, in output order."""
    if len(node.inputs) < 4:
        return None
    starts, ends, axes = (const_array(node.inputs[i]) for i in (1, 2, 3))
    steps = const_array(node.inputs[4]) if len(node.inputs) > 4 else None
    if starts is None or ends is None or axes is None or starts.size != 1 or axes.size != 1:
        return None
    axis = int(axes.reshape(-1)[0])
    if (axis + rank if axis < 0 else axis) != 1:
        return None
    step = int(steps.reshape(-1)[0]) if steps is not None else 1
    start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])
    return list(range(channels))[slice(start, end, step)]


def _slices(
    readers: list[ir.Node], value: ir.Value, channels: int
) -> tuple[list[ir.Node], ir.Value, np.ndarray] | None:
    rank = len(value.shape or ())
    picked = [_slice_channels(n, channels, rank) for n in readers]
    if any(p is None for p in picked):
        return None
    if len(readers) == 1:
        order = np.array(picked[0] or [], np.int64)
        return ([readers[0]], readers[0].outputs[0], order) if _is_perm(order, channels) else None
    concat = single_use(readers[0].outputs[0])
    if concat is None or concat.op_type != "Concat" or concat.attributes.get_int("axis", 0) != 1:
        return None
    if any(single_use(n.outputs[0]) is not concat for n in readers):
        return None
    by_value = {id(n.outputs[0]): p or [] for n, p in zip(readers, picked)}
    order = np.array([c for v in concat.inputs for c in by_value.get(id(v), [-1])], np.int64)
    return ([*readers, concat], concat.outputs[0], order) if _is_perm(order, channels) else None


def _rewrite(
    graph: ir.Graph, source: ir.Value, nodes: list[ir.Node], output: ir.Value, perm: np.ndarray
) -> str:
    """Permute constants and conv weights downstream of `output`; '' when done, else why not."""
    inverse = np.argsort(perm)
    chain, convs, reason = _downstream(output, len(perm))
    if reason:
        return reason
    for node, const_index, vector_shape in chain:
        const = const_array(node.inputs[const_index])
        assert const is not None
        vector = const.reshape(-1)
        if vector.size > 1:
            set_const(
                graph, node, const_index, vector[inverse].reshape(vector_shape), node.name or "c"
            )
    for conv in convs:
        weight = conv_weight(conv)
        assert weight is not None
        set_const(graph, conv, 1, weight[:, inverse], f"{conv.name}.weight")
    output.replace_all_uses_with(source)
    for node in reversed(nodes):
        graph.remove(node, safe=True)
    return ""


def _downstream(
    output: ir.Value, channels: int
) -> tuple[list[tuple[ir.Node, int, tuple[int, ...]]], list[ir.Node], str]:
    """Per-channel affine ops (node, constant input, its shape) up to the convs ending the chain."""
    chain: list[tuple[ir.Node, int, tuple[int, ...]]] = []
    value = output
    while True:
        if value.is_graph_output():
            return chain, [], "the reordered tensor is a graph output"
        readers = [use.node for use in value.uses()]
        if readers and all(n.op_type == "Conv" for n in readers):
            for conv in readers:
                weight = conv_weight(conv)
                if weight is None or conv.attributes.get_int("group", 1) != 1:
                    return chain, [], f"{conv.name} is grouped or has no constant weight"
            return chain, readers, ""
        node = readers[0] if len(readers) == 1 else None
        parts = split_affine(node) if node is not None else None
        if node is None or parts is None or parts[0] is not value:
            return chain, [], "it is read by something other than per-channel ops and convs"
        const = parts[1]
        if channel_vector(const, len(output.shape or ()), channels) is None:
            return chain, [], f"{node.name} mixes channels"
        index = 1 if const_array(node.inputs[1]) is not None else 0
        chain.append((node, index, tuple(const.shape)))
        value = node.outputs[0]
