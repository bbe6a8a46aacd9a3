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

Two more spellings where ONNX Runtime has the kernel but cannot see the op through the Q/DQ:

- `DQ(x) -> ReduceMean(axes 2, 3) -> Q` (an SE block's pooling) is a GlobalAveragePool, which
  ORT fuses into QLinearGlobalAveragePool (uint8 in and out); a ReduceMean has no QDQ fusion.
- The erf GELU `x * (1 + erf(x / sqrt 2)) [* 0.5]` between a DQ and a Q becomes ORT's
  `com.microsoft.Gelu` (profile `ort_kernels`). ORT fuses the decomposed form in a float graph
  only: its QDQ pass gives each reader of a DQ its own copy, so the two reads of x no longer
  share a tensor, and `--fuse` (div-to-mul, fuse-affine) turns the Div into a Mul and moves the
  0.5 into the next Conv. The 0.5 goes back into the Q's scale (a power of two: the codes are
  the same), so one float kernel replaces a DQ copy, Div/Mul, Erf, Add and Mul. Both run
  MLAS's erf; the emulator's torch erf differs by float32 ulps as it did for ORT's Erf op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from quantlens.errors import UserError
from quantlens.schemes.profiles import get_profile

CONTRIB_DOMAIN = "com.microsoft"


def lower_hardsigmoid(graph: ir.Graph, fresh: Fresh) -> list[str]:
    """Rewrite every lowerable `DQ -> HardSigmoid -> Q` in place; names of the nodes lowered."""
    lowered = []
    for node in list(graph):
        if node.op_type == "HardSigmoid" and _lower(graph, node, fresh):
            lowered.append(node.name or "")
    return lowered


def lowerings(target: str) -> list[str]:
    """The rewrites (`LOWERINGS`' keys) `target`'s profile asks of its QDQ export."""
    try:
        profile = get_profile(target)
    except UserError:  # a plan built for a profile this install does not have
        return []
    ops = set(profile.integer_ops or ())
    wanted = {
        "hardsigmoid": "HardSigmoid" in ops,
        "reducemean": "GlobalAveragePool" in ops,
        "gelu": "Gelu" in profile.ort_kernels,
    }
    return [name for name, on in wanted.items() if on]


def lower(graph: ir.Graph, names: list[str], fresh: Fresh) -> list[str]:
    """Apply the rewrites `names` in place; the names of the nodes rewritten."""
    done: list[str] = []
    for name in names:
        done += LOWERINGS[name](graph, fresh)
    if "gelu" in names and any(n.domain == CONTRIB_DOMAIN for n in graph):
        graph.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
    return done


def lower_reduce_mean(graph: ir.Graph, fresh: Fresh) -> list[str]:
    """`DQ -> ReduceMean(axes 2, 3, keepdims) -> Q` on a 4-D tensor becomes GlobalAveragePool."""
    lowered = []
    for node in list(graph):
        if node.op_type == "ReduceMean" and _spatial_mean(node) and _between_dq_and_q(node):
            pool = ir.node("GlobalAveragePool", [node.inputs[0]], name=fresh(f"{node.name}/Pool"))
            graph.insert_before(node, pool)
            node.outputs[0].replace_all_uses_with(pool.outputs[0])
            pool.outputs[0].name = fresh(f"{node.name}_pooled")
            graph.remove(node, safe=True)
            lowered.append(node.name or "")
    return lowered


def lower_gelu(graph: ir.Graph, fresh: Fresh) -> list[str]:
    """Every erf GELU between a DQ and a Q becomes one `com.microsoft.Gelu`."""
    lowered = []
    for node in list(graph):
        if node.op_type != "Erf":
            continue
        island = _gelu_island(node)
        if island is not None:
            _write_gelu(graph, island, fresh)
            lowered.append(node.name or "")
    return lowered


class Fresh:
    """Unique names within one graph: `base`, else `base_1`, `base_2`... (the exporter's and
    the lowering's new nodes and tensors)."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    @classmethod
    def of(cls, graph: ir.Graph) -> Fresh:
        """Names free in `graph`: none of its inputs', node outputs', initializers' or nodes'."""
        taken = {v.name for v in graph.inputs if v.name}
        taken.update(v.name for node in graph for v in node.outputs if v.name)
        taken.update(graph.initializers)
        taken.update(node.name for node in graph if node.name)
        return cls(taken)

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


def _spatial_mean(node: ir.Node) -> bool:
    """A ReduceMean over the two spatial axes of a 4-D (NCHW) tensor, keeping them."""
    value = node.inputs[0] if node.inputs else None
    if value is None or value.shape is None or len(value.shape) != 4:
        return False
    if node.attributes.get_int("keepdims", 1) == 0:
        return False
    if len(node.inputs) > 1 and node.inputs[1] is not None:  # opset 18: axes as an input
        axes_value = node.inputs[1].const_value
        if axes_value is None:
            return False
        axes = [int(a) for a in axes_value.numpy().reshape(-1)]
    else:
        axes = list(node.attributes.get_ints("axes", []))
    return sorted(a % 4 for a in axes) == [2, 3]


def _between_dq_and_q(node: ir.Node) -> bool:
    """The node reads a DQ and its one reader is a Q (ORT's QDQ node-unit shape)."""
    source = node.inputs[0].producer() if node.inputs[0] is not None else None
    uses = list(node.outputs[0].uses())
    return (
        source is not None
        and source.op_type == "DequantizeLinear"
        and len(uses) == 1
        and uses[0][0].op_type == "QuantizeLinear"
        and not node.outputs[0].is_graph_output()
    )


@dataclass(frozen=True)
class _GeluIsland:
    x: ir.Value  # the DQ's output
    nodes: tuple[ir.Node, ...]  # scale by 1/sqrt 2, Erf, Add 1, Mul by x[, Mul by k]
    q: ir.Node
    factor: float  # the island's output over GELU(x): 2k (2 when no Mul by k)


def _gelu_island(erf: ir.Node) -> _GeluIsland | None:
    """The erf GELU around `erf` when it reads a DQ, ends in a Q and nothing else reads its
    inner tensors; None otherwise."""
    scaled = erf.inputs[0]
    pre = scaled.producer() if scaled is not None else None
    x = _gelu_input(pre) if pre is not None else None
    add = _only_reader(erf)
    if x is None or pre is None or _only_reader(pre) is not erf:
        return None
    if add is None or add.op_type != "Add":
        return None
    if _constant_beside(add, erf.outputs[0]) != 1.0:
        return None
    mul = _only_reader(add)
    if mul is None or mul.op_type != "Mul" or _other_input(mul, add.outputs[0]) is not x:
        return None
    nodes, factor, last = [pre, erf, add, mul], 2.0, _only_reader(mul)
    if last is not None and last.op_type == "Mul":
        k = _constant_beside(last, mul.outputs[0])
        if k is None or k <= 0:
            return None
        nodes, factor, last = [*nodes, last], 2.0 * k, _only_reader(last)
    if (
        last is None
        or last.op_type != "QuantizeLinear"
        or last.inputs[0] is not nodes[-1].outputs[0]
    ):
        return None
    if not _power_of_two(factor) or _scalar(last.inputs[1]) is None:
        return None
    return _GeluIsland(x, tuple(nodes), last, factor)


def _gelu_input(pre: ir.Node) -> ir.Value | None:
    """x of `x / sqrt 2` or `x * (1 / sqrt 2)` when x is a DQ's output."""
    if pre.op_type not in ("Div", "Mul") or len(pre.inputs) != 2:
        return None
    for index in (1, 0) if pre.op_type == "Mul" else (1,):
        c = _scalar(pre.inputs[index])
        x = pre.inputs[1 - index]
        if c is None or x is None:
            continue
        wanted = np.sqrt(2.0) if pre.op_type == "Div" else 1.0 / np.sqrt(2.0)
        producer = x.producer()
        if np.isclose(c, wanted, rtol=1e-6, atol=0.0) and producer is not None:
            return x if producer.op_type == "DequantizeLinear" else None
    return None


def _write_gelu(graph: ir.Graph, island: _GeluIsland, fresh: Fresh) -> None:
    first = island.nodes[0]
    name = island.nodes[1].name or "gelu"
    gelu = ir.node("Gelu", [island.x], domain=CONTRIB_DOMAIN, name=fresh(f"{name}/Gelu"))
    graph.insert_before(first, gelu)
    gelu.outputs[0].name = fresh(f"{name}_gelu")
    island.q.replace_input_with(0, gelu.outputs[0])
    if island.factor != 1.0:
        # Q(factor * g, s) = Q(g, s / factor): exact, factor being a power of two.
        scale = _scalar(island.q.inputs[1])
        assert scale is not None
        new = np.float32(np.float32(scale) / np.float32(island.factor))
        island.q.replace_input_with(1, _const(graph, fresh(f"{name}_gelu_scale"), new))
    graph.remove(list(reversed(island.nodes)), safe=True)


def _only_reader(node: ir.Node) -> ir.Node | None:
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    return uses[0][0]


def _other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    others = [v for v in node.inputs if v is not value]
    return others[0] if len(node.inputs) == 2 and len(others) == 1 else None


def _constant_beside(node: ir.Node, value: ir.Value) -> float | None:
    """The scalar constant a binary `node` combines `value` with."""
    return _scalar(_other_input(node, value))


def _power_of_two(value: float) -> bool:
    mantissa, _ = np.frexp(value)
    return value > 0 and float(mantissa) == 0.5


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


LOWERINGS: dict[str, Callable[[ir.Graph, Fresh], list[str]]] = {
    "hardsigmoid": lower_hardsigmoid,
    "reducemean": lower_reduce_mean,
    "gelu": lower_gelu,
}
