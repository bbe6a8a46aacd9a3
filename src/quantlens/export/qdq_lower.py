"""Integer-friendly spellings of quantized ops ONNX Runtime has no integer kernel for.

`DQ(x) -> HardSigmoid -> Q` runs in float in ONNX Runtime (no QLinearHardSigmoid). When the
output grid lies inside [0, 1], HardSigmoid's clip is the grid's own saturation, so the op is
the affine map alpha * x + beta, and that is an Add: the Mul by alpha goes into the input's
DequantizeLinear scale (s * alpha, same codes and zero point) and beta is a dequantized constant
(code 1, scale beta). ORT fuses `DQ -> Add <- DQ(const) -> Q` into QLinearAdd, a uint8 kernel.

The floats differ from the emulator's clamp(((q - z) * s) * alpha + beta, 0, 1) only by the
rounding of s * alpha (a float32 ulp), which moves a quantized value only on an exact tie, the
same order as ORT's own fused kernels (`quantize.json` "ORT vs itself"). Grids that reach past
[0, 1] (a 16-bit gate, an odd calibration) keep the float HardSigmoid: lowering them would lose
the clip.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from quantlens.errors import UserError
from quantlens.schemes.profiles import get_profile


def lowers_hardsigmoid(target: str) -> bool:
    """Whether `target`'s profile runs HardSigmoid as an integer op (ort-cpu-fast)."""
    try:
        ops = get_profile(target).integer_ops or []
    except UserError:  # a plan built for a profile this install does not have
        return False
    return "HardSigmoid" in ops


def lower_hardsigmoid(graph: ir.Graph, fresh: Fresh) -> list[str]:
    """Rewrite every lowerable `DQ -> HardSigmoid -> Q` in place; names of the nodes lowered."""
    lowered = []
    for node in list(graph):
        if node.op_type == "HardSigmoid" and _lower(graph, node, fresh):
            lowered.append(node.name or "")
    return lowered


class Fresh:
    """Unique names within one graph: `base`, else `base_1`, `base_2`... (the exporter's and
    the lowering's new nodes and tensors)."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def __call__(self, base: str) -> str:
        name, count = base, 1
        while name in self.taken:
            name, count = f"{base}_{count}", count + 1
        self.taken.add(name)
        return name


def _lower(graph: ir.Graph, node: ir.Node, fresh: Fresh) -> bool:
    dq = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    uses = list(node.outputs[0].uses())
    if dq is None or dq.op_type != "DequantizeLinear" or len(uses) != 1:
        return False
    q, index = uses[0]
    if q.op_type != "QuantizeLinear" or index != 0 or not _inside_unit_grid(q):
        return False
    alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
    scale = _scalar(dq.inputs[1])
    if scale is None or alpha <= 0 or beta <= 0 or len(dq.inputs) < 3 or dq.inputs[2] is None:
        return False
    name = node.name or "hardsigmoid"
    scaled = _const(graph, fresh(f"{name}_alpha_scale"), np.float32(scale * np.float32(alpha)))
    codes = dq.inputs[0]
    assert codes is not None
    x = _append(graph, "DequantizeLinear", [codes, scaled, dq.inputs[2]], fresh, name, dq.domain)
    one = _const(graph, fresh(f"{name}_beta_code"), np.uint8(1))
    beta_scale = _const(graph, fresh(f"{name}_beta_scale"), np.float32(beta))
    zero = _const(graph, fresh(f"{name}_beta_zero_point"), np.uint8(0))
    b = _append(graph, "DequantizeLinear", [one, beta_scale, zero], fresh, name, "")
    total = _append(graph, "Add", [x, b], fresh, name, "")
    q.replace_input_with(0, total)
    graph.remove(node, safe=True)
    return True


def _inside_unit_grid(q: ir.Node) -> bool:
    """The Q's whole grid lies in [0, 1], so saturating there is HardSigmoid's clip."""
    if len(q.inputs) < 3 or q.inputs[2] is None:
        return False
    scale, zero = _scalar(q.inputs[1]), q.inputs[2].const_value
    if scale is None or zero is None or zero.numpy().size != 1:
        return False
    dtype = zero.numpy().dtype
    if not np.issubdtype(dtype, np.integer):
        return False
    info = np.iinfo(dtype)
    z = int(zero.numpy().reshape(()))
    low = np.float32(info.min - z) * np.float32(scale)
    high = np.float32(info.max - z) * np.float32(scale)
    return bool(low >= 0.0 and high <= 1.0)


def _scalar(value: ir.Value | None) -> float | None:
    if value is None or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return float(array.reshape(())) if array.size == 1 else None


def _attr(node: ir.Node, key: str, default: float) -> float:
    attr = node.attributes.get(key)
    return float(attr.as_float()) if attr is not None else default


def _const(graph: ir.Graph, name: str, array: np.generic) -> ir.Value:
    tensor = ir.Tensor(np.asarray(array), name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(()), type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def _append(
    graph: ir.Graph, op: str, inputs: list[ir.Value | None], fresh: Fresh, name: str, domain: str
) -> ir.Value:
    node = ir.node(op, inputs, domain=domain, name=fresh(f"{name}/{op}"))
    graph.append(node)
    out = node.outputs[0]
    out.name = fresh(f"{name}_{op.lower()}")
    return out
