"""TPU-MLIR's op graph as its converter builds it from an ONNX model: fusions and op names.

`model_transform.py` (TPU-MLIR 1.30.2) runs onnxsim, whose onnxoptimizer passes fuse
BatchNorm and bias Adds into the op before them, then converts every remaining ONNX node
to a top-dialect op named `<first output tensor>_<OpType>`, then canonicalizes the top
dialect, where a Relu is absorbed into the op before it and lends it its own name.
Quantize tables and calibration tables name these ops, so a name is only worth writing
if it survives all three steps. Each rule below says where it comes from; every one was
also checked on the zoo models in `_top.mlir` files (quantlens BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from quantlens.ir.index import ModelIndex, NodeInfo

TPU_MLIR_VERSION = "1.30.2"


@dataclass(frozen=True)
class FusionRule:
    """Node `head` absorbs its only consumer `tail`; the op is named as `named_after` says."""

    name: str
    head: frozenset[str]
    tail: frozenset[str]
    # "head": the op keeps the head's name; "tail": it takes the tail's; "tail-gemm": the
    # tail's output tensor with the type Gemm (onnxoptimizer builds a new Gemm node).
    named_after: str
    source: str


_ONNXSIM = "onnxsim.simplify called by python/transform/OnnxConverter.py::model_simplify"
# ONNX op types whose top-dialect op carries the SupportFuseRelu trait
# (include/tpu_mlir/Dialect/Top/IR/TopOps.td: Conv, Deconv, MatMul, Add/AddConst,
# Sub/SubConst, Mul/MulConst, the Pool ops, BatchNorm, Reciprocal, Einsum).
RELU_HOSTS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Add",
        "Sub",
        "Mul",
        "AveragePool",
        "MaxPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "BatchNormalization",
        "Reciprocal",
        "Einsum",
    }
)

CONV_BN = FusionRule(
    name="conv+batchnorm",
    head=frozenset({"Conv"}),
    tail=frozenset({"BatchNormalization"}),
    named_after="head",
    source=f"onnxoptimizer fuse_bn_into_conv, run by {_ONNXSIM}",
)
CONV_BIAS = FusionRule(
    name="conv+bias-add",
    head=frozenset({"Conv"}),
    tail=frozenset({"Add"}),
    named_after="head",
    source=(
        f"onnxoptimizer fuse_add_bias_into_conv (constant per-channel addend), run by {_ONNXSIM}"
    ),
)
MATMUL_BIAS = FusionRule(
    name="matmul+bias-add",
    head=frozenset({"MatMul"}),
    tail=frozenset({"Add"}),
    named_after="tail-gemm",
    source=(
        "onnxoptimizer fuse_matmul_add_bias_into_gemm (2-D MatMul, constant addend; the new "
        f"Gemm takes the Add's output tensor), run by {_ONNXSIM}"
    ),
)
MATMUL_BIAS_TOP = FusionRule(
    name="matmul+bias-add (batched)",
    head=frozenset({"MatMul"}),
    tail=frozenset({"Add"}),
    named_after="tail",
    source=(
        "top-dialect canonicalization of MatMul + constant Add into a MatMul with bias, "
        "which keeps the Add's loc (measured on ppocr-v6-rec-small's 3-D MatMuls, 1.30.2)"
    ),
)
SILU = FusionRule(
    name="sigmoid+mul (silu)",
    head=frozenset({"Sigmoid"}),
    tail=frozenset({"Mul"}),
    named_after="tail",
    source=(
        "top-dialect canonicalization of x * Sigmoid(x) into one SiLU op with the Mul's loc "
        "(measured on ppocr-v6-rec-small, 1.30.2)"
    ),
)
RELU = FusionRule(
    name="relu-fusion",
    head=RELU_HOSTS,
    tail=frozenset({"Relu", "Clip"}),
    named_after="tail",
    source=(
        "lib/Dialect/Top/Canonicalize/Relu.cpp TopFuseRelu (the host gets do_relu and the "
        "Relu's loc); Clip with min 0 is a Relu with relu_limit (OnnxConverter.convert_clip_op)"
    ),
)
# In the order TPU-MLIR applies them: onnxsim before conversion, canonicalize after.
RULES = (CONV_BN, CONV_BIAS, MATMUL_BIAS, MATMUL_BIAS_TOP, SILU, RELU)


@dataclass(frozen=True)
class Step:
    """One node of a chain: its type and where each input comes from: "in" (the chain's
    input), an int (the output of that earlier step), or a float (a constant of that value;
    NaN for any constant)."""

    op_type: str
    inputs: tuple[str | int | float, ...]


@dataclass(frozen=True)
class ChainRule:
    """Consecutive nodes that OnnxOpt's ReForm replaces by one `becomes` node, which keeps
    the last node's output tensor (so the op is `<last output>_<becomes>`)."""

    name: str
    steps: tuple[Step, ...]
    becomes: str
    source: str


_REFORM = "python/transform/OnnxOpt.py ReForm, run by OnnxConverter (onnx_opt)"
_ANY = float("nan")
_LAYERNORM = (
    Step("ReduceMean", ("in",)),
    Step("Sub", ("in", 0)),
    Step("Pow", (1, 2.0)),
    Step("ReduceMean", (2,)),
    Step("Add", (3, _ANY)),
    Step("Sqrt", (4,)),
    Step("Div", (1, 5)),
)
# In the order onnx_opt applies them (a later pattern sees the nodes earlier ones made).
CHAINS = (
    ChainRule(
        "layernorm-affine",
        (*_LAYERNORM, Step("Mul", (6, _ANY)), Step("Add", (7, _ANY))),
        "LayerNormalization",
        f"TorchLayerNormPattern (layernorm_aff), {_REFORM}",
    ),
    ChainRule("layernorm", _LAYERNORM, "LayerNormalization", f"TorchLayerNormPattern, {_REFORM}"),
    ChainRule(
        "hardsigmoid",
        (Step("Add", ("in", 3.0)), Step("Clip", (0, 0.0, 6.0)), Step("Div", (1, 6.0))),
        "HardSigmoid",
        f"TorchHardSigmoidPattern, {_REFORM}",
    ),
    ChainRule(
        "hardswish",
        (Step("HardSigmoid", ("in",)), Step("Mul", ("in", 0))),
        "HardSwish",
        f"TorchHardSwishPattern (alpha 1/6, beta 0.5 not checked here), {_REFORM}",
    ),
    ChainRule(
        "hardswish-clip",
        (
            Step("Add", ("in", 3.0)),
            Step("Clip", (0, 0.0, 6.0)),
            Step("Mul", ("in", 1)),
            Step("Div", (2, 6.0)),
        ),
        "HardSwish",
        f"TorchHardSwishPattern2, {_REFORM}",
    ),
    ChainRule(
        "gelu-erf",
        (
            Step("Div", ("in", _ANY)),
            Step("Erf", (0,)),
            Step("Add", (1, 1.0)),
            Step("Mul", ("in", 2)),
            Step("Mul", (3, 0.5)),
        ),
        "GELU",
        f"TorchGELUPattern, {_REFORM}",
    ),
    ChainRule(
        "gelu-tanh",
        (
            Step("Mul", ("in", 0.5)),
            Step("Pow", ("in", 3.0)),
            Step("Mul", (1, _ANY)),
            Step("Add", ("in", 2)),
            Step("Mul", (3, _ANY)),
            Step("Tanh", (4,)),
            Step("Add", (5, 1.0)),
            Step("Mul", (0, 6)),
        ),
        "GELU",
        f"TorchGELUPattern2, {_REFORM}",
    ),
)


# Non-negative outputs are quantized UINT8 (scale threshold/255), not INT8 (threshold/127), as
# the bm1684x emulation does too (profile unsigned_when_non_negative; `_tpu.mlir` types in
# BENCHMARKS.md). The table still carries the symmetric threshold, so the export says so.
UNSIGNED_NOTE = (
    "TPU-MLIR quantizes non-negative outputs (Relu, HardSigmoid, ...) as UINT8 with scale "
    "threshold/255, not the table's threshold/127 (the bm1684x emulation does the same)"
)
# Where TPU-MLIR 1.30.2 does not take the table's INT8 threshold as written (measured with
# benchmarks/_vendor_tpu_mlir.py on the zoo models). The bm1684x profile's arithmetic emulates
# each of them (unsigned_when_non_negative, unit_range_ops, scale_by_constant_ops, the Concat
# rule in quantlens.ir.vendors.placement); the warnings say it for a user reading the table.
KNOWN_DIFFERENCES: Mapping[str, str] = {
    "unsigned": UNSIGNED_NOTE,
    "Softmax": (
        "an INT8 Softmax output is UINT8 over [0, 1] (scale 1/255) whatever the table says, "
        "and attention Softmaxes are kept F16/F32"
    ),
    "Mul": "a Mul by a constant becomes MulShift, whose output scale follows from its input's",
    "Concat": (
        "an op read only by a Concat writes the Concat's scale (its own threshold is not used; "
        "measured on ppocr-v6-rec-small's stem)"
    ),
}
# ONNX op types TPU-MLIR's converter drops (no top op, so no name to write).
DROPPED_TYPES: Mapping[str, str] = {
    "Identity": "OnnxConverter.convert_skip_op: the output aliases the input",
    "Dropout": "OnnxConverter.convert_skip_op at inference",
}


@dataclass(frozen=True)
class GraphFacts:
    """What some rules need beyond names: tensor shapes and constant values (Clip's min).

    Built from the canonical model where the export has it; without it (importing a file)
    every rule that depends on them is assumed to fire, which only widens what is accepted.
    """

    shapes: Mapping[str, tuple[int | None, ...]]
    scalars: Mapping[str, float]


def graph_facts(model: ir.Model) -> GraphFacts:
    """Shapes of every tensor and values of scalar constants, for the rules that need them."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    values = [*model.graph.inputs, *model.graph.initializers.values()]
    values += [v for node in model.graph for v in node.outputs]
    for value in values:
        if value.name and value.shape is not None:
            shapes[value.name] = tuple(d if isinstance(d, int) else None for d in value.shape)
    scalars: dict[str, float] = {}
    for name, value in model.graph.initializers.items():
        tensor = value.const_value
        if tensor is not None and tensor.size == 1:
            scalars[name] = float(np.asarray(tensor.numpy()).reshape(-1)[0])
    return GraphFacts(shapes=shapes, scalars=scalars)


@dataclass(frozen=True)
class TpuOp:
    """One top-dialect op: its name, the canonical nodes fused into it, the tensor it outputs."""

    name: str
    nodes: tuple[str, ...]
    output: str
    rules: tuple[str, ...] = ()


def op_name(node: NodeInfo, output: int = 0) -> str:
    """OnnxConverter names an op after its first output tensor and its ONNX type."""
    return f"{node.outputs[output]}_{node.op_type}"


def tpu_ops(model: ModelIndex, facts: GraphFacts | None = None) -> list[TpuOp]:
    """The ops of TPU-MLIR's graph for `model`, in graph order (graph inputs not included)."""
    reformed, members = reform(model, facts)
    ops = _fused_ops(reformed, facts)
    return [
        TpuOp(
            op.name, tuple(m for n in op.nodes for m in members.get(n, (n,))), op.output, op.rules
        )
        for op in ops
    ]


def reform(
    model: ModelIndex, facts: GraphFacts | None
) -> tuple[ModelIndex, dict[str, tuple[str, ...]]]:
    """`model` after OnnxOpt's chain rules: each matched chain is one node (named after its
    last member, typed as the rule says), with the members it stands for."""
    members: dict[str, tuple[str, ...]] = {}
    nodes = list(model.nodes)
    for rule in CHAINS:
        constants = _constants(ModelIndex(nodes=nodes, graph_inputs=model.graph_inputs))
        out: list[NodeInfo] = []
        i = 0
        while i < len(nodes):
            found = _match_chain(rule, nodes[i : i + len(rule.steps)], constants, facts)
            if found is None:
                out.append(nodes[i])
                i += 1
                continue
            chain = nodes[i : i + len(rule.steps)]
            out.append(found)
            members[found.name] = tuple(m for n in chain for m in members.pop(n.name, (n.name,)))
            i += len(rule.steps)
        nodes = out
    return ModelIndex(nodes, model.graph_inputs, model.graph_outputs), members


def _match_chain(
    rule: ChainRule, chain: list[NodeInfo], constants: set[str], facts: GraphFacts | None
) -> NodeInfo | None:
    """The node `chain` becomes if its nodes are `rule`'s steps, else None."""
    if len(chain) != len(rule.steps):
        return None
    bound: dict[str, str] = {}
    used: list[str] = []
    for node, step in zip(chain, rule.steps, strict=True):
        if node.op_type != step.op_type or len(node.outputs) != 1:
            return None
        orders = [node.inputs]
        if node.op_type in ("Add", "Mul") and len(node.inputs) == 2:
            orders.append(node.inputs[::-1])  # ReForm tries both orders for Add and Mul
        # Each order binds the chain's input afresh, so a failed order leaves no binding.
        trials = [(o, dict(bound)) for o in orders]
        passed = [(o, b) for o, b in trials if _inputs_match(o, step, chain, b, constants, facts)]
        if not passed:
            return None
        matched, bound = passed[0]
        used += [
            t for t, want in zip(matched, step.inputs, strict=False) if isinstance(want, float)
        ]
    last = chain[-1]
    return NodeInfo(
        name=last.name,
        op_type=rule.becomes,
        inputs=(bound.get("in", ""), *used),
        outputs=last.outputs,
    )


def _inputs_match(
    inputs: tuple[str, ...],
    step: Step,
    chain: list[NodeInfo],
    bound: dict[str, str],
    constants: set[str],
    facts: GraphFacts | None,
) -> bool:
    # Inputs beyond the pattern's may only be constants (ReduceMean's axes since opset 18).
    if len(inputs) < len(step.inputs) or any(
        t not in constants for t in inputs[len(step.inputs) :]
    ):
        return False
    for tensor, want in zip(inputs, step.inputs, strict=False):
        if want == "in":
            if bound.setdefault("in", tensor) != tensor:
                return False
        elif isinstance(want, int):
            if tensor != chain[want].outputs[0]:
                return False
        elif tensor not in constants or not _value_is(tensor, float(want), facts):
            return False
    return True


def _value_is(tensor: str, want: float, facts: GraphFacts | None) -> bool:
    if facts is None or want != want:  # no values known, or any constant will do (NaN)
        return True
    value = facts.scalars.get(tensor)
    return value is not None and abs(value - want) <= 1e-6 * max(1.0, abs(want))


def _fused_ops(model: ModelIndex, facts: GraphFacts | None) -> list[TpuOp]:
    consumers = _consumers(model)
    constants = _constants(model)
    taken: set[str] = set()
    ops: list[TpuOp] = []
    skipped = shape_folded(model) | no_ops(model, facts)
    for node in model.nodes:
        if node.name in taken or node.op_type in DROPPED_TYPES or node.name in skipped:
            continue
        if len(node.outputs) > 1:
            ops += [
                TpuOp(op_name(node, i), (node.name,), out) for i, out in enumerate(node.outputs)
            ]
            continue
        op = TpuOp(op_name(node), (node.name,), node.outputs[0])
        for rule in RULES:
            op = _extend(op, node, rule, model, consumers, constants, facts, taken)
        taken.update(op.nodes)
        ops.append(op)
    return _reorder_softmax(_move_permutes(ops, model, consumers), model, consumers)


def _extend(
    op: TpuOp,
    head: NodeInfo,
    rule: FusionRule,
    model: ModelIndex,
    consumers: Mapping[str, list[NodeInfo]],
    constants: set[str],
    facts: GraphFacts | None,
    taken: set[str],
) -> TpuOp:
    """`op` with its output's single consumer fused in, when `rule` allows it."""
    last = model.node(op.nodes[-1])
    if _host_type(op, head, rule) not in rule.head:
        return op
    users = consumers.get(op.output, [])
    if len(users) != 1 or op.output in model.graph_outputs:
        return op
    tail = users[0]
    if tail.op_type not in rule.tail or tail.name in taken or len(tail.outputs) != 1:
        return op
    if not _condition(rule, last, tail, op.output, constants, facts):
        return op
    name = op.name
    if rule.named_after == "tail":
        name = op_name(tail)
    elif rule.named_after == "tail-gemm":
        name = f"{tail.outputs[0]}_Gemm"
    return TpuOp(name, (*op.nodes, tail.name), tail.outputs[0], (*op.rules, rule.name))


def _host_type(op: TpuOp, head: NodeInfo, rule: FusionRule) -> str:
    # After the onnxsim rules the op is still its head's type (a bias Add makes a MatMul a Gemm).
    if rule is RELU and op.name.endswith("_Gemm"):
        return "Gemm"
    return head.op_type


def _condition(
    rule: FusionRule,
    last: NodeInfo,
    tail: NodeInfo,
    tensor: str,
    constants: set[str],
    facts: GraphFacts | None,
) -> bool:
    if rule is CONV_BN:
        return last.op_type == "Conv"
    if rule is SILU:
        return tail.inputs.count(last.inputs[0]) == 1 and tensor in tail.inputs
    if rule is MATMUL_BIAS_TOP and len(last.inputs) > 0 and last.op_type != "MatMul":
        return False
    if rule in (CONV_BIAS, MATMUL_BIAS, MATMUL_BIAS_TOP):
        addends = [t for t in tail.inputs if t != tensor]
        if len(addends) != 1 or addends[0] not in constants:
            return False
        if facts is None:
            return True
        if rule in (MATMUL_BIAS, MATMUL_BIAS_TOP):
            # onnxoptimizer makes a Gemm of 2-D MatMuls; the top dialect takes the rest.
            two_d = all(len(facts.shapes.get(t, (0, 0))) == 2 for t in last.inputs)
            return two_d == (rule is MATMUL_BIAS)
        return _per_channel(facts.shapes.get(addends[0]), facts.shapes.get(tensor))
    if tail.op_type == "Clip":
        # Only Clip(min=0) becomes a Relu; another Clip is a top.Clip and is not fused.
        low = tail.inputs[1] if len(tail.inputs) > 1 else ""
        return facts is None or (bool(low) and facts.scalars.get(low) == 0.0)
    return True


def _per_channel(
    addend: tuple[int | None, ...] | None, output: tuple[int | None, ...] | None
) -> bool:
    """A bias the Conv can take: one value, or one per output channel, and nothing else."""
    if addend is None or output is None or len(output) < 2:
        return True
    size = 1
    for dim in addend:
        size *= dim if dim is not None else 0
    others = [d for i, d in enumerate(addend) if d != 1 and i != len(addend) - len(output) + 1]
    return size == 1 or (size == output[1] and not others)


def shape_folded(model: ModelIndex) -> set[str]:
    """Nodes computed from constants and tensor shapes only: with the static input shapes
    model_transform is given, its ConstantFolding (OnnxOpt.py, run before and after onnxsim)
    evaluates them, so they are no ops of TPU-MLIR's graph."""
    static = _constants(model)
    folded: set[str] = set()
    for node in model.nodes:
        inputs = [t for t in node.inputs if t]
        if node.op_type == "Shape" or (inputs and all(t in static for t in inputs)):
            folded.add(node.name)
            static.update(node.outputs)
    return folded


def no_ops(model: ModelIndex, facts: GraphFacts | None) -> set[str]:
    """Adds and Subs of a scalar 0, Muls and Divs by a scalar 1: the top dialect's
    canonicalization removes them (measured on ppocr-v6-rec-small, 1.30.2). Needs values."""
    if facts is None:
        return set()
    neutral = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0}
    constants = _constants(model)
    found = set()
    for node in model.nodes:
        if node.op_type in neutral and len(node.inputs) == 2:
            other = node.inputs[1] if node.op_type in ("Sub", "Div") else None
            candidates = [other] if other else list(node.inputs)
            for tensor in candidates:
                value = facts.scalars.get(tensor) if tensor in constants else None
                if value == neutral[node.op_type]:
                    found.add(node.name)
    return found


PERMUTE_MOVE_SOURCE = (
    "top-dialect canonicalization (SupportPermuteMove) moves a Transpose read only by "
    "Slice+Squeeze pairs below them; the moved ops are renamed `<name>_r_new` (measured on "
    "ppocr-v6-rec-small's attention, 1.30.2)"
)


def _move_permutes(
    ops: list[TpuOp], model: ModelIndex, consumers: Mapping[str, list[NodeInfo]]
) -> list[TpuOp]:
    """Apply the permute move (PERMUTE_MOVE_SOURCE): the Transpose goes, its readers are renamed."""
    moved: set[str] = set()
    gone: set[str] = set()
    for node in model.nodes:
        users = consumers.get(node.outputs[0], []) if node.op_type == "Transpose" else []
        if not users or any(u.op_type != "Slice" for u in users):
            continue
        squeezes = [consumers.get(u.outputs[0], []) for u in users]
        if any(len(s) != 1 or s[0].op_type != "Squeeze" for s in squeezes):
            continue
        gone.add(node.name)
        moved.update(u.name for u in users)
        moved.update(s[0].name for s in squeezes)
    by_node = {name: op for op in ops for name in op.nodes}
    out: list[TpuOp] = []
    for op in ops:
        if op.nodes[-1] in gone:
            continue
        if op.nodes[-1] not in moved:
            out.append(op)
            continue
        renamed = TpuOp(f"{op.name}_r_new", op.nodes, op.output, (*op.rules, "permute-move"))
        out.append(renamed)
        if model.node(op.nodes[-1]).op_type == "Squeeze":
            # The moved Transpose comes back as one Permute per reader of the Squeeze, with
            # the Squeeze's values (so its range), named after the reader's op.
            for user in consumers.get(op.output, []):
                reader = by_node[user.name].name if user.name in by_node else op_name(user)
                name = f"{renamed.name}_r_permute_for_{reader}"
                out.append(TpuOp(name, op.nodes, op.output, renamed.rules))
    return out


SOFTMAX_REORDER_SOURCE = (
    "top-dialect canonicalization of Transpose -> Softmax -> Transpose: the first Transpose "
    "becomes `<name>_r_reordered`, the Softmax runs under the second Transpose's name "
    "(measured on doclayout-yolov8n's DFL head, 1.30.2)"
)


def _reorder_softmax(
    ops: list[TpuOp], model: ModelIndex, consumers: Mapping[str, list[NodeInfo]]
) -> list[TpuOp]:
    """Apply SOFTMAX_REORDER_SOURCE's rewrite to `ops`."""
    first: set[str] = set()
    merged: dict[str, str] = {}  # second Transpose -> the Softmax it absorbs
    for node in model.nodes:
        if node.op_type != "Softmax" or len(node.outputs) != 1:
            continue
        before = [n for n in model.nodes if node.inputs[0] in n.outputs]
        after = consumers.get(node.outputs[0], [])
        if (
            len(before) == 1
            and before[0].op_type == "Transpose"
            and len(consumers.get(before[0].outputs[0], [])) == 1
            and len(after) == 1
            and after[0].op_type == "Transpose"
            and node.outputs[0] not in model.graph_outputs
        ):
            first.add(before[0].name)
            merged[after[0].name] = node.name
    out: list[TpuOp] = []
    for op in ops:
        last = op.nodes[-1]
        if last in merged.values():
            continue
        if last in first:
            op = TpuOp(
                f"{op.name}_r_reordered", op.nodes, op.output, (*op.rules, "softmax-reorder")
            )
        elif last in merged:
            op = TpuOp(
                op.name, (merged[last], *op.nodes), op.output, (*op.rules, "softmax-reorder")
            )
        out.append(op)
    return out


def _consumers(model: ModelIndex) -> dict[str, list[NodeInfo]]:
    users: dict[str, list[NodeInfo]] = {}
    for node in model.nodes:
        for tensor in dict.fromkeys(node.inputs):
            if tensor:
                users.setdefault(tensor, []).append(node)
    return users


def _constants(model: ModelIndex) -> set[str]:
    """Node inputs no node produces and the graph does not take: initializers."""
    produced = {out for node in model.nodes for out in node.outputs}
    inputs = {t for node in model.nodes for t in node.inputs if t}
    return inputs - produced - set(model.graph_inputs)


SPLIT_MATMUL_SOURCE = (
    "TPU-MLIR 1.30.2 splits a MatMul (+ bias) whose output is reshaped to (..., n, heads, dim) "
    "and, transposed, read only by n Slice+Squeeze pairs (an attention's fused qkv "
    "projection) into n MatMuls (`<bias Add>_matmul_1/3/5`), each with its block of weight "
    "columns quantized per tensor (ppocr-v6-rec-small's _tpu.mlir: one input and output "
    "scale, multipliers 4945075>>29, 3611879>>29, 4088515>>30, so three weight scales)"
)


def split_matmuls(model: ModelIndex, facts: GraphFacts | None) -> dict[str, int]:
    """MatMul node -> the number of MatMuls TPU-MLIR splits it into (SPLIT_MATMUL_SOURCE).
    Needs shapes: without them nothing is split."""
    if facts is None:
        return {}
    consumers = _consumers(model)
    constants = _constants(model)
    found: dict[str, int] = {}
    for node in model.nodes:
        weight = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) == 2 else ""
        wshape = facts.shapes.get(weight) if weight in constants else None
        if wshape is None or len(wshape) != 2 or wshape[1] is None:
            continue
        out = _only_reader(node.outputs[0], consumers)
        if out is not None and out.op_type == "Add" and any(t in constants for t in out.inputs):
            out = _only_reader(out.outputs[0], consumers)
        blocks = _sliced_blocks(out, consumers, facts) if out is not None else 0
        if blocks > 1 and wshape[1] % blocks == 0:
            found[node.name] = blocks
    return found


def _only_reader(tensor: str, consumers: Mapping[str, list[NodeInfo]]) -> NodeInfo | None:
    users = consumers.get(tensor, [])
    return users[0] if len(users) == 1 else None


def _sliced_blocks(
    reshape: NodeInfo, consumers: Mapping[str, list[NodeInfo]], facts: GraphFacts
) -> int:
    """n where `reshape` makes (..., n, heads, dim) of the MatMul's columns and a Transpose
    of it is read only by n Slice+Squeeze pairs; 0 otherwise."""
    shape = facts.shapes.get(reshape.outputs[0]) if reshape.op_type == "Reshape" else None
    transpose = _only_reader(reshape.outputs[0], consumers)
    if shape is None or len(shape) < 3 or transpose is None or transpose.op_type != "Transpose":
        return 0
    slices = consumers.get(transpose.outputs[0], [])
    squeezes = [consumers.get(s.outputs[0], []) for s in slices]
    if any(s.op_type != "Slice" for s in slices) or any(
        len(q) != 1 or q[0].op_type != "Squeeze" for q in squeezes
    ):
        return 0
    return len(slices) if shape[-3] == len(slices) else 0
