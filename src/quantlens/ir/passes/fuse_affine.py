"""Fold per-channel Mul and Add/Sub by constants into the conv beside them.

Exported models often normalise the input with `Sub(mean) -> Mul(1/std)` (or `Div`, turned into
`Mul` by `div-to-mul`) before the first conv, or scale and shift a conv's output with constants
(a BatchNorm exported as Mul/Add). Each of those ops would be its own quantized tensor on a chip;
folded into the conv they cost nothing and lose no precision.

- after a conv: y*m + c  ->  W*m, b*m + c (always exact);
- before a conv: a Mul by m scales the weights' input channels (exact, zero padding stays zero);
  an Add/Sub of c shifts the bias by sum(W*c), which is exact only when the conv reads no zero
  padding (a padded border would see 0 instead of c): those are skipped with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.graph_utils import (
    bypass,
    channel_vector,
    const_array,
    conv_bias,
    conv_pads_zeros,
    conv_weight,
    set_const,
    set_conv_bias,
    single_use,
    tensor_rank,
)

_AFFINE = ("Mul", "Add", "Sub")


def fuse_affine(model: ir.Model) -> PassReport:
    report = PassReport(name="fuse-affine")
    for conv in list(model.graph):
        if conv.op_type != "Conv" or conv_weight(conv) is None:
            continue
        _absorb_after(model.graph, conv, report)
        _absorb_before(model.graph, conv, report)
    return report


def split_affine(node: ir.Node) -> tuple[ir.Value, np.ndarray] | None:
    """(data input, constant) of a Mul/Add/Sub with one constant operand; Sub needs it second
    (c - x would also negate x)."""
    if node.op_type not in _AFFINE or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is None or b is None:
        return None
    ca, cb = const_array(a), const_array(b)
    if cb is not None and ca is None:
        data, const = a, cb
    elif ca is not None and cb is None and node.op_type != "Sub":
        data, const = b, ca
    else:
        return None
    if not np.issubdtype(const.dtype, np.floating):
        return None
    return data, const


# --- after the conv ---------------------------------------------------------------------------


def _absorb_after(graph: ir.Graph, conv: ir.Node, report: PassReport) -> None:
    absorbed = []
    while (nxt := single_use(conv.outputs[0])) is not None:
        weight = conv_weight(conv)
        parts = split_affine(nxt)
        if weight is None or parts is None or parts[0] is not conv.outputs[0]:
            break
        vector = channel_vector(parts[1], weight.ndim, weight.shape[0])
        if vector is None:
            break
        bias = conv_bias(conv, weight.shape[0], weight.dtype).astype(np.float64)
        if nxt.op_type == "Mul":
            shape = (-1,) + (1,) * (weight.ndim - 1)
            _set_weight(graph, conv, weight * vector.reshape(shape))
            bias = bias * vector
        else:
            bias = bias + (vector if nxt.op_type == "Add" else -vector)
        set_conv_bias(graph, conv, bias.astype(weight.dtype))
        bypass(graph, nxt, conv.outputs[0], rename=True)
        absorbed.append(f"{nxt.op_type} {nxt.name}")
    if absorbed:
        report.note(f"{conv.name} absorbed {', '.join(absorbed)} after it")


# --- before the conv --------------------------------------------------------------------------


def _absorb_before(graph: ir.Graph, conv: ir.Node, report: PassReport) -> None:
    absorbed = []
    while True:
        source = conv.inputs[0]
        prev = source.producer() if source is not None else None
        if prev is None or source is None or single_use(source) is not conv:
            break
        reason = _absorb_one_before(graph, conv, prev)
        if reason is None:
            absorbed.append(f"{prev.op_type} {prev.name}")
            continue
        if reason:
            report.details.append(f"{conv.name}: {prev.op_type} {prev.name} kept ({reason})")
        break
    if absorbed:
        report.note(f"{conv.name} absorbed {', '.join(absorbed)} before it")


def _absorb_one_before(graph: ir.Graph, conv: ir.Node, prev: ir.Node) -> str | None:
    """Fold `prev` into `conv`; None when done, else the reason not to ('' = not a candidate)."""
    weight = conv_weight(conv)
    parts = split_affine(prev)
    if weight is None or parts is None:
        return ""
    data, const = parts
    group = conv.attributes.get_int("group", 1)
    channels = weight.shape[1] * group
    vector = channel_vector(const, weight.ndim, channels)
    rank = tensor_rank(data)
    if vector is None or (rank != weight.ndim and const.ndim >= weight.ndim):
        return "" if vector is None else "cannot tell the data's rank"
    index = input_channel_index(weight.shape, group)
    expand = (slice(None), slice(None)) + (None,) * (weight.ndim - 2)
    if prev.op_type == "Mul":
        _set_weight(graph, conv, weight * vector[index][expand])
    else:
        if conv_pads_zeros(conv):
            return "the conv pads with zeros, which a folded shift would not see"
        shift = vector if prev.op_type == "Add" else -vector
        extra = (weight.astype(np.float64) * shift[index][expand]).reshape(weight.shape[0], -1)
        bias = conv_bias(conv, weight.shape[0], weight.dtype).astype(np.float64)
        set_conv_bias(graph, conv, (bias + extra.sum(axis=1)).astype(weight.dtype))
    conv.replace_input_with(0, data)
    graph.remove(prev, safe=True)
    return None


def input_channel_index(shape: tuple[int, ...], group: int) -> np.ndarray:
    """For a conv weight (O, I/g, k...): the input channel each (o, i) entry reads, (O, I/g)."""
    out_ch, in_per_group = shape[0], shape[1]
    out_per_group = max(out_ch // group, 1)
    groups = np.arange(out_ch) // out_per_group
    return groups[:, None] * in_per_group + np.arange(in_per_group)[None, :]


def _set_weight(graph: ir.Graph, conv: ir.Node, weight: np.ndarray) -> None:
    old = const_array(conv.inputs[1])
    assert old is not None
    set_const(graph, conv, 1, weight.astype(old.dtype), f"{conv.name}.weight")
