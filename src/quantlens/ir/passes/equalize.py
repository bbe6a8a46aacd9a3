"""Cross-layer equalization of consecutive convs (Meller et al. 2019; Nagel et al. 2019, DFQ).

With per-tensor weight grids, one output channel with a wide weight range wastes the grid of all
the others (common in convs with no BatchNorm, or after depthwise convs). For conv1 -> f -> conv2
with f positively homogeneous (f(x/s) = f(x)/s for s > 0: identity, ReLU, LeakyReLU, PReLU),
output channel i of conv1 is divided by s_i and the matching input channel of conv2 multiplied
by s_i; s_i = sqrt(r1_i * r2_i) / r2_i gives both the same range sqrt(r1_i * r2_i). Float outputs
are unchanged. Activations that are not scale-equivariant (SiLU, Sigmoid, HardSwish, ReLU6's
fixed clip, ...) block it; those pairs are reported with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.fuse_affine import input_channel_index
from quantlens.ir.passes.graph_utils import (
    const_array,
    conv_bias,
    conv_weight,
    set_const,
    set_conv_bias,
    single_use,
)

# Positively homogeneous activations that may sit between the two convs.
_HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}
# Only these tensors' scale matter; s is kept in this band so no channel is scaled into
# denormals or overflow when a range is tiny.
_MIN_SCALE, _MAX_SCALE = 1e-4, 1e4


@dataclass
class Pair:
    first: ir.Node
    activation: ir.Node | None
    seconds: list[ir.Node]

    def describe(self) -> str:
        via = f" via {self.activation.op_type}" if self.activation is not None else ""
        return f"{self.first.name} -> {', '.join(n.name or '' for n in self.seconds)}{via}"


def equalize(model: ir.Model, iterations: int = 8, tolerance: float = 1e-3) -> PassReport:
    report = PassReport(name="equalize")
    pairs: list[Pair] = []
    for conv in model.graph:
        if conv.op_type != "Conv" or conv_weight(conv) is None:
            continue
        pair, reason = find_pair(conv)
        if pair is not None:
            pairs.append(pair)
        elif reason:
            report.details.append(f"{conv.name}: not equalized ({reason})")
    if not pairs:
        return report
    before = {id(p): _spread(p.first) for p in pairs}
    for _ in range(iterations):
        change = max(_equalize_pair(model.graph, pair) for pair in pairs)
        if change < tolerance:
            break
    for pair in pairs:
        after = _spread(pair.first)
        report.note(
            f"{pair.describe()}: max/median channel range {before[id(pair)]:.1f} -> {after:.1f}"
        )
    return report


def find_pair(conv: ir.Node) -> tuple[Pair | None, str]:
    """The pair starting at `conv`, or why there is none ('' when it is simply not followed by
    convs)."""
    out = conv.outputs[0]
    if out.is_graph_output():
        return None, ""
    readers = [use.node for use in out.uses()]
    if _all_convs(readers):
        return Pair(conv, None, readers), ""
    act = single_use(out)
    if act is None:
        return None, _silu_reason(readers)
    act_out = act.outputs[0] if act.outputs else None
    if act_out is None or act_out.is_graph_output():
        return None, ""
    seconds = [use.node for use in act_out.uses()]
    if not _all_convs(seconds):
        return None, ""
    if act.op_type in _HOMOGENEOUS and _slope_ok(act):
        return Pair(conv, act, seconds), ""
    if act.op_type == "Clip" and _is_plain_relu(act):
        return Pair(conv, act, seconds), ""
    return None, f"{act.op_type} {act.name} between it and the next conv is not scale-equivariant"


def _all_convs(nodes: list[ir.Node]) -> bool:
    return bool(nodes) and all(n.op_type == "Conv" and conv_weight(n) is not None for n in nodes)


def _silu_reason(readers: list[ir.Node]) -> str:
    kinds = sorted(n.op_type for n in readers)
    if kinds == ["Mul", "Sigmoid"]:
        mul = next(n for n in readers if n.op_type == "Mul")
        if _all_convs([u.node for u in mul.outputs[0].uses()]):
            return "SiLU (x * sigmoid(x)) before the next conv is not scale-equivariant"
    return ""


def _slope_ok(act: ir.Node) -> bool:
    # PRelu's slope must be a constant (its value does not change under positive scaling).
    return act.op_type != "PRelu" or const_array(act.inputs[1]) is not None


def _is_plain_relu(clip: ir.Node) -> bool:
    """Clip(min=0) with no upper bound behaves like ReLU; ReLU6's fixed upper clip does not
    commute with scaling."""
    low = const_array(clip.inputs[1]) if len(clip.inputs) > 1 else None
    high = const_array(clip.inputs[2]) if len(clip.inputs) > 2 else None
    return low is not None and float(low) == 0.0 and high is None


def _channel_ranges(weight: np.ndarray) -> np.ndarray:
    return np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1).astype(np.float64)


def _spread(conv: ir.Node) -> float:
    weight = conv_weight(conv)
    assert weight is not None
    ranges = _channel_ranges(weight)
    median = float(np.median(ranges))
    return float(ranges.max()) / median if median > 0 else float("inf")


def _input_ranges(conv: ir.Node, channels: int) -> np.ndarray:
    weight = conv_weight(conv)
    assert weight is not None
    index = input_channel_index(weight.shape, conv.attributes.get_int("group", 1))
    per_entry = np.abs(weight.reshape(*weight.shape[:2], -1)).max(axis=2)
    ranges = np.zeros(channels)
    np.maximum.at(ranges, index.ravel(), per_entry.ravel())
    return ranges


def _equalize_pair(graph: ir.Graph, pair: Pair) -> float:
    """One equalization step; returns the largest |log s| applied."""
    w1 = conv_weight(pair.first)
    assert w1 is not None
    channels = w1.shape[0]
    r1 = _channel_ranges(w1)
    r2 = np.max([_input_ranges(conv, channels) for conv in pair.seconds], axis=0)
    live = (r1 > 0) & (r2 > 0)
    scale = np.ones(channels)
    scale[live] = np.sqrt(r1[live] * r2[live]) / r2[live]
    scale = np.clip(scale, _MIN_SCALE, _MAX_SCALE)
    shape = (-1,) + (1,) * (w1.ndim - 1)
    new_w1 = (w1 / scale.reshape(shape)).astype(w1.dtype)
    set_const(graph, pair.first, 1, new_w1, f"{pair.first.name}.weight")
    if len(pair.first.inputs) > 2 and pair.first.inputs[2] is not None:
        bias = conv_bias(pair.first, channels, w1.dtype)
        set_conv_bias(graph, pair.first, (bias / scale).astype(w1.dtype))
    for conv in pair.seconds:
        w2 = conv_weight(conv)
        assert w2 is not None
        index = input_channel_index(w2.shape, conv.attributes.get_int("group", 1))
        factor = scale[index].reshape(*index.shape, *([1] * (w2.ndim - 2)))
        set_const(graph, conv, 1, (w2 * factor).astype(w2.dtype), f"{conv.name}.weight")
    return float(np.max(np.abs(np.log(scale))))
