"""Where quantizers sit, and their parameters once the ranges are known.

`quantization_points` reads the graph, the Assignment and the target profile and decides, for
every tensor, whether and how it is quantized: on an NPU (`all-outputs`) every float tensor a
node writes is an integer in the producer's output precision, except inside what the vendor
fuses into one op, and as the profile's `arithmetic` says (shared quantizers, unsigned grids
for non-negative tensors, fixed ranges; see `quantlens.ir.vendors`); on ONNX Runtime CPU
(`weighted-inputs`) only the inputs of Conv/ConvTranspose/Gemm/MatMul are, because that is all
ORT runs as integer kernels. `build_plan` then turns calibrated ranges into scales and zero
points. Every rejection carries a reason, kept in the plan's notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch

from quantlens.emulate.float_islands import RangeCandidate, float_nodes, range_candidates
from quantlens.emulate.integer_ops import place_integer_ops
from quantlens.emulate.integer_sites import Site, integer_sites
from quantlens.emulate.requant import constant_scale, requant_spec, table_threshold
from quantlens.ir.layers import WEIGHTED_OPS, Layer, discover_layers
from quantlens.ir.vendors.placement import VendorPlacement, vendor_placement
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import FloatFormat, Format, IntFormat
from quantlens.schemes.modes import PrecisionMode
from quantlens.schemes.profiles import Arithmetic, TargetProfile
from quantlens.schemes.qparams import (
    FloatNode,
    QuantizerRounding,
    QuantPlan,
    Requant,
    TensorQuant,
    int_qparams,
)


@dataclass
class QuantPoints:
    """Formats per tensor before calibration."""

    activations: dict[str, Format] = field(default_factory=dict)
    # Outputs that reuse their input's parameters (pure data movement): output -> input.
    shared: dict[str, str] = field(default_factory=dict)
    weights: dict[str, tuple[Format, int | None]] = field(default_factory=dict)
    # bias name -> (format, activation input, weight)
    biases: dict[str, tuple[IntFormat, str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Float outputs read by integer layers: a vendor that runs layers one by one (TPU-MLIR)
    # casts them to the integer grid and needs their calibrated range; quantized here only
    # where the profile emulates that cast (below).
    boundaries: dict[str, IntFormat] = field(default_factory=dict)
    # Those of fp32 ops the vendor casts to the grid for its integer readers (profile
    # `cast_float_boundaries`), and the float readers that read such a tensor before the cast:
    # node -> {input index: tensor}.
    boundary_casts: set[str] = field(default_factory=set)
    raw_reads: dict[str, dict[int, str]] = field(default_factory=dict)
    # The vendor's arithmetic (profile `arithmetic`): tensors it never quantizes because they
    # are inside one fused op (tensor -> the op's output), tensors whose symmetric grid turns
    # unsigned when their range is non-negative, ranges it fixes, and outputs it derives from
    # their input's grid times a constant (tensor -> (input, factor)).
    fused_away: dict[str, str] = field(default_factory=dict)
    unsigned_ok: set[str] = field(default_factory=set)
    # Outputs the vendor always quantizes signed (TPU-MLIR's Sub): tied to an unsigned
    # tensor's quantizer, they keep its range on a signed grid of their own.
    signed_only: set[str] = field(default_factory=set)
    fixed_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    scaled: dict[str, tuple[str, float]] = field(default_factory=dict)
    # Nodes the vendor computes on integer codes (profile `requantized_ops`), by name.
    requantized: dict[str, Site] = field(default_factory=dict)
    # Weight -> the blocks of output columns the vendor quantizes each per tensor
    # (TPU-MLIR's split qkv MatMul, tpu_mlir_ops.SPLIT_MATMUL_SOURCE).
    weight_blocks: dict[str, int] = field(default_factory=dict)
    # Nodes the vendor computes in a lower float precision (profile `float_precision`).
    float_nodes: dict[str, FloatNode] = field(default_factory=dict)
    # Nodes the vendor runs in float when an input spans more than the output (decided on the
    # ranges: profile `float_when_input_exceeds_output`).
    range_candidates: list[RangeCandidate] = field(default_factory=list)
    # Weights the vendor keeps exact on a power-of-two scale where they allow it (profile
    # `power_of_two_weight_ops`).
    power_of_two_weights: set[str] = field(default_factory=set)
    # Weight -> the smallest scale the vendor gives it (profile `min_weight_scale`).
    min_weight_scale: dict[str, float] = field(default_factory=dict)
    # Biases emulated in float, kept on their int32 grid for export (profile `float_bias`).
    float_bias: bool = False
    # A bias that would not fit int32 stays float (profile `float_bias_on_overflow`).
    float_bias_on_overflow: bool = False
    quantizer_rounding: QuantizerRounding = "half-to-even"

    def calibration_targets(self) -> dict[str, IntFormat]:
        derived = self.shared.keys() | self.scaled.keys()
        targets = {
            name: fmt
            for name, fmt in self.activations.items()
            if isinstance(fmt, IntFormat) and name not in derived
        }
        return {**self.boundaries, **targets}


def node_modes(model: ir.Model, assignment: Assignment, profile: TargetProfile) -> dict[str, str]:
    """Mode of every node; explicit entries are checked against the profile."""
    names = [node.name or "" for node in model.graph]
    assignment.check_layers(names)
    profile.check_mode(assignment.default, "(default)")
    modes = {name: assignment.mode_name(name) for name in names}
    for name, mode_name in modes.items():
        profile.check_mode(mode_name, name)
    return modes


def quantization_points(
    model: ir.Model, assignment: Assignment, profile: TargetProfile
) -> QuantPoints:
    from quantlens.schemes.modes import get_mode

    modes = {k: get_mode(v) for k, v in node_modes(model, assignment, profile).items()}
    layer_map = discover_layers(model)
    points = QuantPoints(
        float_bias=profile.arithmetic.float_bias,
        float_bias_on_overflow=profile.arithmetic.float_bias_on_overflow,
        quantizer_rounding=profile.arithmetic.quantizer_rounding,
    )
    float_tensors = set(layer_map.activations)
    if profile.placement == "all-outputs" and profile.integer_ops is not None:
        points.activations, points.shared = place_integer_ops(model, modes, profile, float_tensors)
    elif profile.placement == "all-outputs":
        vendor = vendor_placement(model, profile.arithmetic.fusions)
        points.fused_away = dict(vendor.fused_away)
        points.weight_blocks = dict(vendor.weight_blocks)
        _place_outputs(model, modes, profile, float_tensors, points)
        _share_vendor_quantizers(vendor, points)
        _vendor_grids(model, profile, points, vendor.op_types)
    else:
        _place_weighted_inputs(model, modes, profile, float_tensors, points)
    for layer in layer_map.layers:
        _place_weights(layer, modes[layer.id], profile, points)
    for rejection in layer_map.rejected:
        points.notes.append(rejection.reason)
    return points


def _act_format(mode: PrecisionMode, bits: int | None, profile: TargetProfile) -> Format | None:
    if mode.float_type is not None:
        return None if mode.float_type == "fp32" else FloatFormat(name=mode.float_type)
    return profile.activation_format(bits) if bits else None


def _place_outputs(
    model: ir.Model,
    modes: Mapping[str, PrecisionMode],
    profile: TargetProfile,
    float_tensors: set[str],
    points: QuantPoints,
) -> None:
    outputs = {v.name for v in model.graph.outputs}
    for value in model.graph.inputs:
        _place_graph_input(value, modes, profile, float_tensors, points)
    for node in model.graph:
        mode = modes[node.name or ""]
        for value in node.outputs:
            name = value.name or ""
            if name not in float_tensors or (profile.float_graph_outputs and name in outputs):
                continue
            fmt = _act_format(mode, mode.act_out_bits, profile)
            if not isinstance(fmt, IntFormat):
                _observe_boundary(value, modes, profile, points)
                # fp32 only: measured on an F16 build, the cast alone leaves the f16 arithmetic
                # around it unemulated and moved the output further from TPU-MLIR.
                cast = profile.arithmetic.cast_float_boundaries and fmt is None
                if cast and name in points.boundaries and name not in points.fused_away:
                    _cast_boundary(value, modes, points)
                    continue
            if fmt is None:
                continue
            if name in points.fused_away and isinstance(fmt, IntFormat):
                continue  # inside one fused op: the vendor quantizes its output only
            points.activations[name] = fmt
            source = node.inputs[0].name if node.inputs and node.inputs[0] is not None else None
            shares = node.op_type in profile.shared_scale_ops and source is not None
            if shares and points.activations.get(source or "") == fmt:
                points.shared[name] = source or ""


def _share_vendor_quantizers(vendor: VendorPlacement, points: QuantPoints) -> None:
    """Tensors the vendor holds in another tensor's quantizer use its parameters."""
    for tensor, owner in (*vendor.passthrough.items(), *vendor.tied.items()):
        fmt = points.activations.get(tensor)
        if tensor in points.shared and tensor not in vendor.passthrough:
            continue  # data movement keeps its input's grid (TPU-MLIR's MaxPool before a Concat)
        if tensor in points.boundary_casts or (
            owner in points.boundary_casts and tensor in vendor.tied
        ):
            continue  # a float op's cast has its own range, which a float Concat does not hand on
        if fmt is not None and isinstance(fmt, IntFormat) and points.activations.get(owner) == fmt:
            points.shared[tensor] = owner
    # A tie may point at a tensor that shares in turn: follow to the one that is calibrated.
    for tensor in list(points.shared):
        points.shared[tensor] = _root(points.shared, tensor)
    for tensor in [t for t, owner in points.shared.items() if owner == t]:
        del points.shared[tensor]


def _root(shared: Mapping[str, str], tensor: str) -> str:
    seen = {tensor}
    while tensor in shared and shared[tensor] not in seen:
        tensor = shared[tensor]
        seen.add(tensor)
    return tensor


def _vendor_grids(
    model: ir.Model, profile: TargetProfile, points: QuantPoints, op_types: Mapping[str, str]
) -> None:
    """Signedness, fixed ranges, derived scales and float outputs from the profile's
    arithmetic rules; `op_types` gives the vendor's type of an op where it differs."""
    rules = profile.arithmetic
    signed_only: set[str] = set()
    made_by = {v.name: node.op_type for node in model.graph for v in node.outputs}
    for node in model.graph:
        outputs = [v.name or "" for v in node.outputs]
        if node.op_type in rules.signed_ops:
            signed_only.update(outputs)
        for name in outputs if node.op_type in rules.unit_range_ops else ():
            # Fused into the data movement after it (a Transpose), the range moves there; fused
            # into arithmetic (Sigmoid into SiLU), the op's output has a range of its own.
            carrier = points.fused_away.get(name, name)
            if carrier == name or made_by.get(carrier) in profile.shared_scale_ops:
                points.fixed_ranges[carrier] = (0.0, 1.0)
        derived = outputs[0] in points.activations and outputs[0] not in points.shared
        if node.op_type in rules.scale_by_constant_ops and derived:
            found = _times_constant(node)
            if found is not None and found[0] in points.activations:
                points.scaled[outputs[0]] = found
    if rules.unsigned_when_non_negative:
        points.unsigned_ok = set(points.activations) - signed_only
        points.signed_only = signed_only & set(points.activations)
    for value in model.graph.outputs:
        producer = value.producer()
        if producer is None:
            continue
        if _runs_float(rules.float_ops, producer, op_types.get(value.name or "", producer.op_type)):
            points.activations.pop(value.name or "", None)  # the vendor writes it in float
    points.float_nodes = _placed_float_nodes(model, rules, points, op_types)
    points.range_candidates = range_candidates(model, rules.float_when_input_exceeds_output)
    sites = integer_sites(
        model,
        points.activations,
        points.fused_away,
        points.scaled,
        rules.requantized_ops,
        profile.shared_scale_ops,
        casts=[*_cast_to_integer(model, rules.float_ops, op_types), *points.boundary_casts],
    )
    # An op the assignment keeps float computes in float; only the cast after it is integer.
    points.requantized = {
        node: site
        for node, site in sites.items()
        if site.kind == "cast" or site.output not in points.boundary_casts
    }


def _runs_float(float_ops: Mapping[str, str], node: ir.Node, kind: str) -> bool:
    """Whether the vendor runs `node`'s op (of vendor type `kind`) in float."""
    rule = float_ops.get(kind)
    return rule == "always" or (rule == "axis-not-1" and _off_axis_1(node))


def _placed_float_nodes(
    model: ir.Model, rules: Arithmetic, points: QuantPoints, op_types: Mapping[str, str]
) -> dict[str, FloatNode]:
    """The nodes of float ops at the vendor's precision, for the ops whose every input from
    outside is on an integer grid and whose output is cast to one or is a float graph output
    (an op the assignment keeps float or promotes is the plan's float arithmetic)."""
    found = float_nodes(
        model,
        op_types,
        points.fused_away,
        rules.float_precision,
        rules.float32_axis_above,
        lambda node, kind: _runs_float(rules.float_ops, node, kind),
    )
    graph_outputs = {v.name for v in model.graph.outputs}
    ops: dict[str, list[str]] = {}
    for name, spec in found.items():
        ops.setdefault(spec.output, []).append(name)
    kept: dict[str, FloatNode] = {}
    for output, names in ops.items():
        reads = [n for name in names for n in found[name].reads.values()]
        out = points.activations.get(output)
        cast = isinstance(out, IntFormat) or (out is None and output in graph_outputs)
        if cast and all(isinstance(points.activations.get(n), IntFormat) for n in reads):
            kept.update((name, found[name]) for name in names)
    return kept


def _cast_to_integer(
    model: ir.Model, float_ops: Mapping[str, str], op_types: Mapping[str, str]
) -> list[str]:
    """Float tensors the vendor casts to an integer grid: the graph inputs and the outputs of
    ops it runs in float (TPU-MLIR's tpu.Cast after an F16 LayerNorm)."""
    found = [v.name or "" for v in model.graph.inputs]
    for node in model.graph:
        for value in node.outputs:
            if op_types.get(value.name or "", node.op_type) in float_ops:
                found.append(value.name or "")
    return found


def _off_axis_1(node: ir.Node) -> bool:
    """Whether `node` works along another axis than 1, or on a tensor of rank > 4."""
    shape = node.inputs[0].shape if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return True
    rank = len(shape)
    axis = node.attributes.get_int("axis", -1 if node.op_type == "Softmax" else 1)
    return rank > 4 or axis % max(rank, 1) != 1


def _times_constant(node: ir.Node) -> tuple[str, float] | None:
    """(activation input, factor) of a Mul by a positive scalar constant, else None."""
    if len(node.inputs) != 2:
        return None
    first, second = node.inputs
    for value, other in ((first, second), (second, first)):
        constant = other.const_value if other is not None else None
        if value is None or value.const_value is not None or constant is None:
            continue
        if constant.size == 1 and (factor := float(np.asarray(constant.numpy()).item())) > 0:
            return value.name or "", factor
    return None


def _observe_boundary(
    value: ir.Value, modes: Mapping[str, PrecisionMode], profile: TargetProfile, points: QuantPoints
) -> None:
    bits = [modes[u.node.name or ""].act_in_bits for u in value.uses()]
    int_bits = [b for b in bits if b]
    if int_bits:
        points.boundaries[value.name or ""] = profile.activation_format(max(int_bits))


def _cast_boundary(
    value: ir.Value, modes: Mapping[str, PrecisionMode], points: QuantPoints
) -> None:
    """An fp32 op's output that integer ops read, cast to their grid as the vendor does; its
    float readers read it before the cast."""
    name = value.name or ""
    points.activations[name] = points.boundaries[name]
    points.boundary_casts.add(name)
    for use in value.uses():
        reader = use.node.name or ""
        if not modes[reader].act_in_bits:
            points.raw_reads.setdefault(reader, {})[use.idx] = name


def _place_graph_input(
    value: ir.Value,
    modes: Mapping[str, PrecisionMode],
    profile: TargetProfile,
    float_tensors: set[str],
    points: QuantPoints,
) -> None:
    name = value.name or ""
    if name not in float_tensors:
        return
    bits = [modes[u.node.name or ""].act_in_bits for u in value.uses()]
    int_bits = [b for b in bits if b]
    if int_bits:
        points.activations[name] = profile.activation_format(max(int_bits))


def _place_weighted_inputs(
    model: ir.Model,
    modes: Mapping[str, PrecisionMode],
    profile: TargetProfile,
    float_tensors: set[str],
    points: QuantPoints,
) -> None:
    wanted: dict[str, int] = {}
    for node in model.graph:
        mode = modes[node.name or ""]
        if node.op_type not in WEIGHTED_OPS or not mode.act_in_bits:
            continue
        for value in node.inputs[:2]:
            name = value.name if value is not None else None
            if name and name in float_tensors and value is not None and value.const_value is None:
                wanted[name] = max(wanted.get(name, 0), mode.act_in_bits)
    for name, bits in wanted.items():
        points.activations[name] = profile.activation_format(bits)


def _place_weights(
    layer: Layer, mode: PrecisionMode, profile: TargetProfile, points: QuantPoints
) -> None:
    if mode.float_type is not None:
        if mode.float_type != "fp32":
            points.weights[layer.weight] = (FloatFormat(name=mode.float_type), None)
        return
    assert mode.weight_bits is not None
    # The grid the layer's input has in the plan (a tensor several layers read takes the
    # widest of their modes), which decides whether the runtime fuses an 8-bit kernel.
    read = points.activations.get(layer.input)
    fmt = profile.weight_format(
        mode.weight_bits, input_bits=read.bits if isinstance(read, IntFormat) else None
    )
    previous = points.weights.get(layer.weight)
    if previous is not None and isinstance(previous[0], IntFormat) and previous[0].reduced:
        # A weight shared with a layer fused as an 8-bit kernel keeps that layer's grid.
        fmt = fmt.model_copy(update={"reduced": fmt.bits == 8})
    if layer.op_type in profile.arithmetic.per_tensor_weight_ops:
        fmt = fmt.model_copy(update={"per_channel": False})
    axis = layer.weight_axis if fmt.per_channel else None
    if fmt.per_channel and axis is None:
        fmt = fmt.model_copy(update={"per_channel": False})
    points.weights[layer.weight] = (fmt, axis)
    floor = profile.arithmetic.min_weight_scale.get(layer.op_type)
    if floor is not None:
        points.min_weight_scale[layer.weight] = floor
    if layer.op_type in profile.arithmetic.power_of_two_weight_ops:
        points.power_of_two_weights.add(layer.weight)
    bias_fmt = profile.bias_format()
    if layer.bias and bias_fmt is not None:
        if isinstance(points.activations.get(layer.input), IntFormat):
            points.biases[layer.bias] = (bias_fmt, layer.input, layer.weight)
        else:
            points.notes.append(f"{layer.id}: bias kept float (its input is not quantized)")


def build_plan(
    points: QuantPoints,
    ranges: Mapping[str, tuple[float, float]],
    weights: Mapping[str, torch.Tensor],
    target: str,
) -> QuantPlan:
    """Scales and zero points from calibrated activation ranges and the weights themselves."""
    plan = QuantPlan(
        target=target,
        notes=list(points.notes),
        float_bias=points.float_bias,
        quantizer_rounding=points.quantizer_rounding,
    )
    for name, fmt in points.activations.items():
        if name in points.shared or name in points.scaled:
            continue
        if not isinstance(fmt, IntFormat):
            plan.activations[name] = TensorQuant(name=name, format=fmt)
            continue
        low, high = points.fixed_ranges.get(name) or ranges[name]
        if name in points.unsigned_ok:
            fmt = _unsigned_if_non_negative(fmt, low)
        plan.activations[name] = _activation_quant(name, fmt, low, high)
    for name, (source, factor) in points.scaled.items():
        _derive_scaled(plan, name, source, factor)
    for name, source in points.shared.items():
        if source in plan.activations:
            plan.activations[name] = _shared_quant(name, source, plan, points, ranges)
    for name, (fmt, axis) in points.weights.items():
        blocks = points.weight_blocks.get(name, 1)
        if blocks > 1 and axis is None and isinstance(fmt, IntFormat):
            plan.weights[name] = _blocked_weight_quant(name, fmt, weights[name], blocks)
        else:
            plan.weights[name] = _weight_quant(name, fmt, axis, weights[name])
        if name in points.min_weight_scale:
            plan.weights[name] = _at_least(plan.weights[name], points.min_weight_scale[name])
        if name in points.power_of_two_weights:
            plan.weights[name] = _power_of_two(plan.weights[name], weights[name])
    for name, (fmt, act, weight) in points.biases.items():
        act_q, weight_q = plan.activations.get(act), plan.weights.get(weight)
        if act_q is None or weight_q is None or not act_q.is_int or not weight_q.is_int:
            continue
        fitted = _fit_weight_to_bias(weight_q, act_q, weights[name], fmt)
        if fitted is not weight_q and points.float_bias_on_overflow:
            plan.notes.append(f"{name}: bias kept float (int32 would coarsen {weight}'s grid)")
            continue
        if fitted is not weight_q:
            plan.weights[weight] = fitted
            plan.notes.append(f"{weight}: weight scale raised so that bias {name} fits int32")
        plan.weights[name] = _bias_quant(name, fmt, act_q, fitted)
    _quantize_constant_operands(plan, points, weights)
    _requantize(plan, points)
    plan.float_nodes = dict(points.float_nodes)
    plan.float_nodes.update(_range_float_nodes(plan, points, weights))
    plan.raw_reads = {node: dict(reads) for node, reads in points.raw_reads.items()}
    return plan


def _range_float_nodes(
    plan: QuantPlan, points: QuantPoints, weights: Mapping[str, torch.Tensor]
) -> dict[str, FloatNode]:
    """The candidates one of whose inputs spans more than the output's grid (an integer
    input's threshold, or a constant's largest magnitude, above the output's threshold),
    which TPU-MLIR 1.30.2 lowers F16 (profile `float_when_input_exceeds_output`). An input
    written by another float op is read as that op computed it (`FloatNode.raw`)."""
    made_float = {spec.output for spec in plan.float_nodes.values()}
    found: dict[str, FloatNode] = {}
    for candidate in points.range_candidates:
        out = plan.activations.get(candidate.output)
        ins = [plan.activations.get(name) for name in candidate.inputs.values()]
        grids = [out, *ins]
        if not all(q is not None and q.is_int and len(q.scale) == 1 for q in grids):
            continue
        limit = table_threshold(out)  # type: ignore[arg-type]
        spans = [table_threshold(q) for q in ins]  # type: ignore[arg-type]
        spans += [float(weights[name].abs().max()) for name in candidate.constants.values()]
        if not any(span > limit for span in spans):
            continue
        raw = {i: n for i, n in candidate.inputs.items() if n in made_float}
        found[candidate.node] = FloatNode(
            precision=candidate.precision,
            reads={i: n for i, n in candidate.inputs.items() if i not in raw},
            raw={**raw, **candidate.constants},  # constants as they are, not as a weight
            constants=sorted(candidate.constants),
            round_output=candidate.precision == "f16",
            output=candidate.output,
        )
        made_float.add(candidate.output)
    return found


def _quantize_constant_operands(
    plan: QuantPlan, points: QuantPoints, weights: Mapping[str, torch.Tensor]
) -> None:
    """The constant a requantized Mul multiplies by, or an Add adds, on TPU-MLIR's grid for it:
    UINT8 when it has no negative value, INT8 otherwise, scale `requant.constant_scale`
    (Mul.cpp; doclayout's anchor Add). A constant a float op also reads is quantized there too
    (TPU-MLIR keeps an f16 copy for it: exact for doclayout's anchors, halves on that grid)."""
    for site in points.requantized.values():
        name = site.weight
        if site.kind not in ("product", "add") or name is None or name in plan.weights:
            continue
        if name not in weights:
            continue
        data = weights[name].detach().to(torch.float64).cpu()
        low, high = float(data.min()), float(data.max())
        fmt = IntFormat(bits=8, signed=low < 0, symmetric=True, narrow=False)
        quant = TensorQuant(
            name=name, format=fmt, scale=[1.0], zero_point=[0], range_min=[low], range_max=[high]
        )
        scale = constant_scale(quant)
        if scale > 0:
            plan.weights[name] = quant.model_copy(update={"scale": [scale]})


def _shared_quant(
    name: str,
    source: str,
    plan: QuantPlan,
    points: QuantPoints,
    ranges: Mapping[str, tuple[float, float]],
) -> TensorQuant:
    """`source`'s quantizer for `name`; a signed-only output tied to an unsigned grid keeps
    `source`'s range (the threshold the table writes for it) on its own signed grid.

    TPU-MLIR makes a Sub's output signed before a Concat spreads its range to its inputs
    (SetSubSignPattern), and does not spread it over inputs of mixed sign
    (BackwardMutiInSingleOut<ConcatOp>, lib/Conversion/TopToTpu/TopToTpuPass.cpp): the Sub
    stays INT8 at threshold/127 and the Concat rescales its codes (doclayout-yolov8n's
    `/model.22/Sub_1` -> `Concat_2`: i8 at 1.00565, tpu.MulShift x2 into u8 at 0.50085).
    """
    owner = plan.activations[source]
    fmt = points.activations.get(name)
    owner_fmt = owner.format
    unsigned_owner = isinstance(owner_fmt, IntFormat) and not owner_fmt.signed
    if name in points.signed_only and isinstance(fmt, IntFormat) and unsigned_owner:
        low, high = points.fixed_ranges.get(source) or ranges[source]
        return _activation_quant(name, fmt, low, high)
    return owner.model_copy(update={"name": name})


def _power_of_two(quant: TensorQuant, weight: torch.Tensor) -> TensorQuant:
    """The weight on the largest power-of-two scale 2^-k (k >= 0, every channel) on which
    every value is a code inside the grid, as TPU-MLIR 1.30.2 quantizes such a Conv weight
    (measured: weights 0..7 -> codes 0..7, x 0.25 -> codes 0..7 at 0.25, + 0.5 -> codes
    1..15 at 0.5; x 0.3 -> the usual max / qmax per channel); else `quant` unchanged."""
    fmt = quant.format
    if not isinstance(fmt, IntFormat):
        return quant
    data = weight.detach().to(torch.float64).cpu().numpy()
    peak = float(np.abs(data).max(initial=0.0))
    for k in range(24):
        scaled = data * 2.0**k
        if peak * 2.0**k > fmt.qmax:
            break
        if np.array_equal(scaled, np.round(scaled)):
            return quant.model_copy(update={"scale": [2.0**-k] * len(quant.scale)})
    return quant


def _at_least(quant: TensorQuant, floor: float) -> TensorQuant:
    """The weight's scales raised to `floor` (in float32, as TPU-MLIR's `1e-5f`)."""
    scales = np.asarray(quant.scale, np.float32)
    raised = np.maximum(scales, np.float32(floor))
    if not quant.is_int or np.array_equal(raised, scales):
        return quant
    return quant.model_copy(update={"scale": raised.astype(np.float32).tolist()})


def _fit_weight_to_bias(
    weight: TensorQuant, act: TensorQuant, bias: torch.Tensor, fmt: IntFormat
) -> TensorQuant:
    """Raise weight scales where the int32 bias would saturate (as ONNX Runtime does).

    With 16-bit activations and weights the bias scale (input scale x weight scale) gets tiny,
    and a large bias no longer fits int32; a coarser weight grid is the lesser harm.
    """
    b = np.abs(bias.detach().to(torch.float64).cpu().numpy()).reshape(-1)
    s_in = float(np.float32(act.scale[0]))
    needed = b / (s_in * fmt.qmax)
    scales = np.asarray(weight.scale, np.float64)
    if len(scales) == 1:
        needed = np.array([needed.max(initial=0.0)])
    if np.all(needed <= scales):
        return weight
    raised = np.maximum(scales, needed).astype(np.float32)
    # float32 rounding may land just below what is needed: step up one ulp there.
    raised = np.where(raised < needed, np.nextafter(raised, np.float32(np.inf)), raised)
    return weight.model_copy(update={"scale": raised.astype(np.float32).tolist()})


def _requantize(plan: QuantPlan, points: QuantPoints) -> None:
    """The integer arithmetic of the ops the vendor requantizes, on the plan's grids (the
    output grid is the fused op's where the node's output is inside one: Conv + Relu)."""
    f16_casts = {spec.output: "f16" for spec in points.float_nodes.values()}
    for node, site in points.requantized.items():
        if site.kind == "cast":
            out = plan.activations.get(site.output)
            if out is not None and out.is_int and len(out.scale) == 1:
                plan.requant[node] = Requant(
                    inputs=[], output=site.output, multipliers=[], rshifts=[], kind="cast",
                    rounding=site.rounding, precision=f16_casts.get(site.output, "f32"),
                )  # fmt: skip
            continue
        weight = plan.weights.get(site.weight) if site.weight is not None else None
        quants = [
            weight if name == site.weight else plan.activations.get(name) for name in site.inputs
        ]
        out = plan.activations.get(site.output)
        grids = [*quants, out, *([weight] if site.weight is not None else [])]
        if not all(q is not None and q.is_int for q in grids):
            continue
        if not all(len(q.scale) == 1 for q in [*quants, out]):  # type: ignore[union-attr]
            continue
        plan.requant[node] = requant_spec(
            site.kind,
            quants,  # type: ignore[arg-type]
            out,  # type: ignore[arg-type]
            weight=weight,
            window=site.window,
            rounding=site.rounding,
            bias_add=site.bias_add,
            axis=site.axis,
        )


def _unsigned_if_non_negative(fmt: IntFormat, low: float) -> IntFormat:
    """The unsigned symmetric grid (zero point 0, scale max/qmax) for a non-negative range."""
    if fmt.symmetric and fmt.signed and low >= 0:
        return fmt.model_copy(update={"signed": False, "narrow": False})
    return fmt


def _derive_scaled(plan: QuantPlan, name: str, source: str, factor: float) -> None:
    """The output of `source` x `factor` on `source`'s integer codes, scale times `factor`."""
    quant = plan.activations.get(source)
    if quant is None or not quant.is_int:
        return
    scale = (np.asarray(quant.scale, np.float64) * factor).astype(np.float32)
    plan.activations[name] = quant.model_copy(
        update={
            "name": name,
            "scale": scale.tolist(),
            "range_min": [v * factor for v in quant.range_min],
            "range_max": [v * factor for v in quant.range_max],
        }
    )


def _activation_quant(name: str, fmt: IntFormat, low: float, high: float) -> TensorQuant:
    scale, zero = int_qparams(np.array([low]), np.array([high]), fmt)
    return TensorQuant(
        name=name,
        format=fmt,
        scale=scale.tolist(),
        zero_point=zero.tolist(),
        range_min=[float(low)],
        range_max=[float(high)],
    )


def _weight_quant(name: str, fmt: Format, axis: int | None, weight: torch.Tensor) -> TensorQuant:
    if not isinstance(fmt, IntFormat):
        return TensorQuant(name=name, format=fmt)
    data = weight.detach().to(torch.float64).cpu()
    if axis is not None:
        flat = data.movedim(axis, 0).reshape(data.shape[axis], -1)
        low, high = flat.min(dim=1).values.numpy(), flat.max(dim=1).values.numpy()
    else:
        low, high = np.array([float(data.min())]), np.array([float(data.max())])
    scale, zero = int_qparams(low, high, fmt)
    return TensorQuant(
        name=name,
        format=fmt,
        axis=axis,
        scale=scale.tolist(),
        zero_point=zero.tolist(),
        range_min=low.tolist(),
        range_max=high.tolist(),
    )


def _blocked_weight_quant(
    name: str, fmt: IntFormat, weight: torch.Tensor, blocks: int
) -> TensorQuant:
    """A (K, N) MatMul weight whose N columns the vendor splits into `blocks` MatMuls, each
    quantized per tensor: per output column (axis 1), every column on its block's scale."""
    data = weight.detach().to(torch.float64).cpu()
    parts = data.reshape(data.shape[0], blocks, -1)
    low = parts.amin(dim=(0, 2)).numpy().repeat(parts.shape[2])
    high = parts.amax(dim=(0, 2)).numpy().repeat(parts.shape[2])
    scale, zero = int_qparams(low, high, fmt.model_copy(update={"per_channel": True}))
    return TensorQuant(
        name=name,
        format=fmt.model_copy(update={"per_channel": True}),
        axis=1,
        scale=scale.tolist(),
        zero_point=zero.tolist(),
        range_min=low.tolist(),
        range_max=high.tolist(),
    )


def _bias_quant(name: str, fmt: IntFormat, act: TensorQuant, weight: TensorQuant) -> TensorQuant:
    # int32 bias on the accumulator grid: scale = input scale x weight scale, zero point 0.
    scale = (np.float32(act.scale[0]) * np.asarray(weight.scale, np.float32)).astype(np.float32)
    return TensorQuant(
        name=name,
        format=fmt,
        axis=0 if len(scale) > 1 else None,
        scale=scale.tolist(),
        zero_point=[0] * len(scale),
        bias_of=(act.name, weight.name),
    )
