"""Float ops inside an integer deploy, at the precision the vendor computes them in.

TPU-MLIR lowers some ops of an INT8 deploy to F16 (profile `arithmetic.float_precision`,
`float_ops`): ppocr-v6-rec-small's LayerNorms and attention Softmaxes sit between two
`tpu.Cast` ops in its `_tpu.mlir` (1.30.2). Its interpreter, whose per-layer dumps
`quantlens compare` reads, computes them as (lib/Dialect/Tpu/Interfaces/Common/Cast.cpp,
LayerNorm.cpp, Softmax.cpp):

- the cast in: F16(F16(scale) x F16(code)) (`dequant` for a grid expressed in f16);
- the op: float32 arithmetic on those values, with its weights as f16 (`top.Weight` lowered
  to f16: a LayerNorm's scale and bias); a Softmax rounds its output to f16 (`f32_to_f16`),
  a LayerNorm leaves it float32 (`normlize_f32`);
- the cast out: round(F16(v x F16(1 / scale))), half away from zero (`requant`).

Emulated as float32 rounded once at the boundary, 0.67% of the first LayerNorm's codes were
one step off given TPU-MLIR's own input; each rule above makes it exact (measured on the
dumps of ppocr-v6-rec-small, 4 samples).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import onnx_ir as ir
import torch

from quantlens.emulate.registry import KernelFn, NodeContext, find_kernel
from quantlens.schemes.qparams import FloatNode

Tensor = torch.Tensor


def float_nodes(
    model: ir.Model,
    op_types: Mapping[str, str],
    fused_away: Mapping[str, str],
    precision: Mapping[str, str],
    float32_axis_above: Mapping[str, int],
    runs_float: Callable[[ir.Node, str], bool],
) -> dict[str, FloatNode]:
    """Node name -> `FloatNode` for every node of an op whose vendor type (`op_types`, else
    the node's own) has a `precision`, that the vendor runs in float (`runs_float(node, type)`)
    and not in float32 for its axis length. An op is the node writing its output and every
    node `fused_away` into that output (a decomposed LayerNorm's ReduceMean, Sub, Pow...)."""
    members: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        for value in node.outputs:
            owner = fused_away.get(value.name or "")
            if owner is not None:
                members.setdefault(owner, []).append(node)
    found: dict[str, FloatNode] = {}
    for node in model.graph:
        if not node.outputs:
            continue
        output = node.outputs[0].name or ""
        kind = op_types.get(output, node.op_type)
        level = precision.get(kind)
        if level is None or output in fused_away or not runs_float(node, kind):
            continue
        limit = float32_axis_above.get(kind, 0)
        length = _axis_length(node)
        if limit and length is not None and length > limit:
            continue
        nodes = [*members.get(output, []), node]
        inside = {v.name for n in nodes for v in n.outputs}
        for member in nodes:
            spec = _float_node(member, inside, level, output, member is node)
            if member is node and limit and length is None:
                spec.float32_axis_above = limit  # the kernel decides on the shape it gets
            found[member.name or ""] = spec
    return found


@dataclass(frozen=True)
class RangeCandidate:
    """A node the vendor runs in float when an input spans more than its output (profile
    `float_when_input_exceeds_output`), decided once the ranges are known: its activation
    inputs and constant inputs (input index -> tensor)."""

    node: str
    precision: str
    output: str
    inputs: dict[int, str]
    constants: dict[int, str]


def range_candidates(model: ir.Model, ops: Mapping[str, str]) -> list[RangeCandidate]:
    """The nodes of the op types in `ops` (op type -> precision), in graph order."""
    found = []
    for node in model.graph:
        level = ops.get(node.op_type)
        if level is None or not node.outputs:
            continue
        inputs: dict[int, str] = {}
        constants: dict[int, str] = {}
        for index, value in enumerate(node.inputs):
            if value is None:
                continue
            target = constants if value.const_value is not None else inputs
            target[index] = value.name or ""
        if any(node.inputs[i].const_value.size <= 1 for i in constants):  # type: ignore[union-attr]
            continue  # by a scalar: another op to the vendor (TPU-MLIR's AddConst)
        output = node.outputs[0].name or ""
        found.append(RangeCandidate(node.name or "", level, output, inputs, constants))
    return found


def _float_node(
    node: ir.Node, inside: Collection[str | None], level: str, output: str, last: bool
) -> FloatNode:
    reads: dict[int, str] = {}
    constants: list[int] = []
    for index, value in enumerate(node.inputs):
        if value is None:
            continue
        constant = value.const_value
        if constant is not None:
            # Weight tensors are f16 in the vendor's op; scalars (a decomposed LayerNorm's
            # epsilon and exponent) are attributes there, used in float.
            if constant.size > 1:
                constants.append(index)
        elif value.name not in inside:
            reads[index] = value.name or ""
    return FloatNode(
        precision=level,
        reads=reads,
        constants=constants,
        round_output=last and level == "f16",
        output=output,
    )


def _axis_length(node: ir.Node) -> int | None:
    """The length of the axis `node` works along, None where the graph leaves it symbolic."""
    value = node.inputs[0] if node.inputs else None
    shape = value.shape if value is not None else None
    if shape is None or len(shape) == 0:
        return None
    dim = shape[_axis(node.attributes.get_int("axis", -1), len(shape))]
    return dim if isinstance(dim, int) else None


def _axis(axis: int, rank: int) -> int:
    return axis % rank if rank else 0


# --- the emulation ------------------------------------------------------------------------------


def to_f16(x: Tensor) -> Tensor:
    """Round to float16 and back (round to nearest even, as TPU-MLIR's F16())."""
    return x.to(torch.float16).to(x.dtype)


def float_node_kernel(
    spec: FloatNode, scales: Mapping[int, tuple[float, float]], inner: KernelFn | None
) -> KernelFn:
    """The node as the vendor computes it: the inputs in `scales` (input index -> (our
    float32 scale, the vendor's scale)) cast in through f16, constants in f16, the output
    rounded to f16 when `spec.round_output`. `inner`: the kernel it wraps (None: the op's)."""
    steps = {i: (s, float(torch.tensor(v).to(torch.float16))) for i, (s, v) in scales.items()}
    constants = set(spec.constants)

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        base = inner or _op_kernel(ctx)
        if spec.float32_axis_above and _too_long(ctx, args, spec.float32_axis_above):
            produced = base(ctx, args)
            assert isinstance(produced, Tensor)
            return produced
        fed: list[Tensor | None] = list(args)
        for index, (ours, vendor16) in steps.items():
            x = fed[index]
            if x is not None and x.is_floating_point():
                codes = torch.round(x.float() / ours)
                fed[index] = to_f16(codes * vendor16).to(x.dtype)
        for index in constants:
            x = fed[index]
            if x is not None and x.is_floating_point():
                fed[index] = to_f16(x)
        produced = base(ctx, fed)
        assert isinstance(produced, Tensor)
        return to_f16(produced) if spec.round_output else produced

    return kernel


def _too_long(ctx: NodeContext, args: Sequence[Tensor | None], limit: int) -> bool:
    """Whether the node's axis is longer than `limit` in this run (its float32 fallback)."""
    x = args[0] if args else None
    if x is None or x.dim() == 0:
        return False
    return int(x.shape[_axis(int(ctx.attr("axis", -1)), x.dim())]) > limit


def _op_kernel(ctx: NodeContext) -> KernelFn:
    found = find_kernel(ctx.op_type, ctx.opset)
    if found is None:
        raise ctx.reject("no kernel")
    return found.fn
