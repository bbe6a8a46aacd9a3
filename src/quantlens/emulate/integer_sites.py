"""Where a vendor's integer arithmetic replaces float-then-quantize (profile `requantized_ops`).

A site is a node whose inputs and output are all on integer grids, so the vendor computes it on
codes (`quantlens.emulate.requant`). A weighted op's output may sit inside a fused op: the
vendor then requantizes at the fused op's output, which is only the same arithmetic when what
lies between is a Relu (applied to the requantized codes) or, for a MatMul or a bias-less Conv,
the bias Add the vendor folds into its accumulator. Anything else keeps float arithmetic.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx_ir as ir

from quantlens.ir.passes.fold_batchnorm import plain_gemm
from quantlens.schemes.formats import Format, IntFormat

LINEAR_OPS = ("Conv", "MatMul", "Gemm")
CAST_PREFIX = "cast:"
POOL_OPS = ("AveragePool", "GlobalAveragePool", "ReduceMean")


@dataclass(frozen=True)
class Site:
    """One node computed on integer codes: its kind (`Requant.kind`), the activation grids it
    reads, the grid it writes, and what a linear op needs besides."""

    kind: str
    inputs: tuple[str, ...]
    output: str
    rounding: str
    weight: str | None = None
    window: int = 1
    bias_add: str | None = None
    # The output's channel axis (a Conv's 1; a MatMul's or Gemm's last).
    axis: int = -1


def integer_sites(
    model: ir.Model,
    activations: Mapping[str, Format],
    fused_away: Mapping[str, str],
    scaled: Mapping[str, object],
    ops: Mapping[str, str],
    data_movement: Collection[str] = (),
    casts: Collection[str] = (),
) -> dict[str, Site]:
    """Node name -> site, for the nodes of types in `ops` (op type -> rounding) that run on
    integer grids. A data-movement output (`data_movement` op types: Split, Reshape...)
    without a quantizer of its own lies on its input's grid, and is read as such. `casts`:
    float tensors the vendor casts to their integer grid (graph inputs, outputs of float
    ops), with the rounding of `ops["Cast"]`, keyed `CAST_PREFIX` + tensor."""
    sites: dict[str, Site] = {}
    cast = ops.get("Cast")
    for name in casts:
        if cast is not None and _is_int(name, activations):
            sites[f"{CAST_PREFIX}{name}"] = Site("cast", (), name, cast)
    owners = _data_movement_owners(model, activations, data_movement)
    extended = {**activations, **{name: activations[o] for name, o in owners.items()}}
    for node in model.graph:
        rounding = ops.get(node.op_type)
        if rounding is None or not node.outputs:
            continue
        site = _site(node, rounding, extended, fused_away, scaled)
        site = _regridded(site, owners) if site is not None else None
        if site is not None:
            sites[node.name or ""] = site
    return sites


def _data_movement_owners(
    model: ir.Model, activations: Mapping[str, Format], ops: Collection[str]
) -> dict[str, str]:
    """Unquantized outputs of data-movement nodes (through chains of them) -> the tensor on
    whose integer grid their values lie."""
    owners: dict[str, str] = {}
    for node in model.graph:
        source = node.inputs[0] if node.inputs else None
        if node.op_type not in ops or source is None:
            continue
        name = source.name or ""
        owner = name if _is_int(name, activations) else owners.get(name)
        for value in node.outputs if owner is not None else ():
            if (value.name or "") not in activations:
                owners[value.name or ""] = owner  # type: ignore[assignment]
    return owners


def _regridded(site: Site, owners: Mapping[str, str]) -> Site:
    """The site reading each data-movement input on its owner's grid."""
    return replace(site, inputs=tuple(owners.get(name, name) for name in site.inputs))


def _is_int(name: str, activations: Mapping[str, Format]) -> bool:
    return isinstance(activations.get(name), IntFormat)


def _site(
    node: ir.Node,
    rounding: str,
    activations: Mapping[str, Format],
    fused_away: Mapping[str, str],
    scaled: Mapping[str, object],
) -> Site | None:
    values = [v for v in node.inputs if v is not None]
    names = tuple(v.name or "" for v in values)
    acts = all(_is_int(n, activations) for n in names)
    output = node.outputs[0].name or ""
    if node.op_type in LINEAR_OPS:
        return _linear_site(node, rounding, activations, fused_away)
    carrier = fused_away.get(output, output)
    if not _is_int(carrier, activations) or not _only_relus(node, carrier):
        return None
    constant = _constant_operand(node, names, activations, scaled)
    if constant is not None:
        return Site("product", names[:1], carrier, rounding, weight=constant)
    added = _added_constant(node, names, activations)
    if added is not None:
        return Site("add", names, carrier, rounding, weight=added)
    if not acts:
        return None
    if node.op_type == "Add" and len(names) == 2:
        return Site("add", names, carrier, rounding)
    if node.op_type == "Mul" and len(names) == 2 and output not in scaled:
        return Site("product", names, carrier, rounding)
    if node.op_type == "Concat":
        return Site("concat", names, carrier, rounding)
    if node.op_type in POOL_OPS:
        window = _pool_window(node)
        return Site("pool", names[:1], carrier, rounding, window=window) if window >= 0 else None
    return None


def _constant_operand(
    node: ir.Node,
    names: tuple[str, ...],
    activations: Mapping[str, Format],
    scaled: Mapping[str, object],
) -> str | None:
    """The constant of a Mul of an integer tensor by a constant tensor (not a scalar, which is
    a MulShift), second input: TPU-MLIR quantizes it and multiplies the codes (Mul.cpp)."""
    if node.op_type != "Mul" or len(node.inputs) != 2 or (node.outputs[0].name or "") in scaled:
        return None
    value = node.inputs[1]
    constant = value.const_value if value is not None else None
    if constant is None or constant.size <= 1 or not _is_int(names[0], activations):
        return None
    return names[1]


def _added_constant(
    node: ir.Node, names: tuple[str, ...], activations: Mapping[str, Format]
) -> str | None:
    """The constant tensor (not a scalar: TPU-MLIR's AddConst) an Add adds to an integer
    tensor: TPU-MLIR quantizes it as a Mul's constant and adds the codes, each input rescaled
    by its 8-bit multiplier (BM1684X Add; doclayout-yolov8n's /model.22/Add_1, the anchors on
    UINT8 at 127.5 / 255, multipliers [59, 125] >> [9, 7])."""
    if node.op_type != "Add" or len(node.inputs) != 2 or len(names) != 2:
        return None
    values = [v for v in node.inputs if v is not None]
    constants = [v for v in values if v.const_value is not None]
    tensors = [v for v in values if v.const_value is None]
    if len(constants) != 1 or len(tensors) != 1 or constants[0].const_value.size <= 1:  # type: ignore[union-attr]
        return None
    return constants[0].name if _is_int(tensors[0].name or "", activations) else None


def _linear_site(
    node: ir.Node, rounding: str, activations: Mapping[str, Format], fused_away: Mapping[str, str]
) -> Site | None:
    """A Conv/MatMul/Gemm on an integer input with a constant weight (or a MatMul of two
    integer tensors), whose requantized output reaches its grid through Relus at most."""
    x = node.inputs[0] if node.inputs else None
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if x is None or w is None or not _is_int(x.name or "", activations):
        return None
    if node.op_type == "Gemm" and not plain_gemm(node):
        return None
    weight = w.name if w.const_value is not None else None
    if weight is None and (node.op_type != "MatMul" or not _is_int(w.name or "", activations)):
        return None
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    output = node.outputs[0].name or ""
    carrier = fused_away.get(output, output)
    if not _is_int(carrier, activations):
        return None
    axis = 1 if node.op_type == "Conv" else -1
    bias_add = _bias_add(node, carrier, w, axis) if weight is not None and not has_bias else None
    if not _only_relus(node, carrier, skip=bias_add):
        return None
    inputs = (x.name or "",) if weight is not None else (x.name or "", w.name or "")
    return Site(
        "linear", inputs, carrier, rounding, weight=weight, bias_add=_name(bias_add), axis=axis
    )


def _name(node: ir.Node | None) -> str | None:
    return None if node is None else node.name or ""


def _only_consumer(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 else None


def _bias_add(node: ir.Node, carrier: str, weight: ir.Value, axis: int) -> ir.Node | None:
    """The Add of a per-channel constant that follows `node` inside its fused op (the vendor
    folds it into its int32 bias)."""
    value = node.outputs[0]
    if (value.name or "") == carrier:
        return None
    nxt = _only_consumer(value)
    if nxt is None or nxt.op_type != "Add" or len(nxt.inputs) != 2:
        return None
    others = [v for v in nxt.inputs if v is not None and v is not value]
    constant = others[0].const_value if len(others) == 1 else None
    shape = weight.shape
    if constant is None or shape is None:
        return None
    channels = shape[0] if axis == 1 else shape[-1]
    dims = [int(d) for d in constant.shape.numpy()]
    # One value per output channel, laid out along the output's channel axis.
    along = dims[axis] if len(dims) >= (2 if axis == 1 else 1) else None
    if along != channels or int(np.prod(dims)) != channels:
        return None
    return nxt


def _only_relus(node: ir.Node, carrier: str, skip: ir.Node | None = None) -> bool:
    """Whether the chain from `node`'s output to `carrier` holds only Relus (a Clip from 0),
    besides `skip`."""
    value = node.outputs[0]
    for _ in range(8):
        if (value.name or "") == carrier:
            return True
        nxt = _only_consumer(value)
        if nxt is None or not nxt.outputs:
            return False
        if nxt is not skip and not _is_relu(nxt):
            return False
        value = nxt.outputs[0]
    return False


def _is_relu(node: ir.Node) -> bool:
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip" or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    low = node.inputs[1].const_value
    return low is not None and float(np.asarray(low.numpy()).reshape(-1)[0]) == 0.0


def _pool_window(node: ir.Node) -> int:
    """Elements per window of an average pool whose every window is full (no padding counted
    out, no ceil mode): TPU-MLIR divides every window's sum by the kernel size. 0: the whole
    spatial extent, known at run time (GlobalAveragePool, a ReduceMean over axes 2 and 3,
    which TPU-MLIR lowers to a global Pool2D); -1: not such a pool."""
    attrs = node.attributes
    if node.op_type == "GlobalAveragePool":
        return 0
    if node.op_type == "ReduceMean":
        value = node.inputs[0]
        rank = len(value.shape) if value is not None and value.shape is not None else 0
        axes = sorted(a % rank for a in attrs.get_ints("axes", [])) if rank else []
        spatial = rank == 4 and axes == [2, 3] and len(node.inputs) == 1
        keeps: int = attrs.get_int("keepdims", 1)
        return 0 if spatial and keeps != 0 else -1
    pads = attrs.get_ints("pads", [])
    padded = any(p != 0 for p in pads) or attrs.get_string("auto_pad", "NOTSET") != "NOTSET"
    if attrs.get_int("ceil_mode", 0) or (padded and not attrs.get_int("count_include_pad", 0)):
        return -1
    kernel = attrs.get_ints("kernel_shape", [])
    return int(np.prod(kernel)) if kernel else -1
