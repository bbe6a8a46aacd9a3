"""Sophgo TPU-MLIR quantize table (qtable) and calibration table (vendor-formats.md 2.2-2.4).

Both tables name ops of TPU-MLIR's own graph, which fuses before it names (`tpu_mlir_ops`):
a Conv and its BatchNorm, bias Add and Relu are one op, a MatMul and its bias Add are one
`<add output>_Gemm`. So the export writes one qtable line per fused op whose mode is not the
deploy mode, one threshold per fused op from the range of the fused op's output (float ops
included: an INT8 op fed by a float op needs its input's threshold), and nothing for
tensors fused away. The names refer to the canonical model, which is shipped beside the
tables as `.float.onnx` in an ONNX IR version TPU-MLIR's pinned onnx 1.14 loads.

Import reads a qtable as TPU-MLIR runs it: a fused op's mode applies to every node fused into
it. An assignment that splits a fused op (a float Conv whose Relu stays INT8) cannot be
written as asked; the export says so (an error with `strict`), and its round trip gives the
assignment TPU-MLIR executes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import onnx_ir as ir

from quantlens import __version__
from quantlens.calib.stats import CalibrationStats
from quantlens.errors import UserError
from quantlens.export.vendors.base import (
    Dropped,
    ExportContext,
    ModelIndex,
    Rendered,
    compact_assignment,
    register,
    resolved_modes,
    unknown_name_error,
)
from quantlens.ir.vendors.tpu_mlir_ops import (
    DROPPED_TYPES,
    KNOWN_DIFFERENCES,
    MATMUL_BIAS,
    RELU,
    TPU_MLIR_VERSION,
    GraphFacts,
    TpuOp,
    graph_facts,
    op_name,
    tpu_ops,
)
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan

__all__ = ["TpuMlirFormat", "calibration_table", "graph_facts", "op_name"]

TO_TPU = {"a8_w8": "INT8", "fp16": "F16", "bf16": "BF16", "fp32": "F32"}
# UINT8 is the asymmetric 8-bit variant: the same bit widths, so the same quantlens mode.
FROM_TPU = {**{v: k for k, v in TO_TPU.items()}, "UINT8": "a8_w8"}
# Modes of the enum (Module.td) that quantlens does not emulate.
UNSUPPORTED = ("INT4", "W8F16", "W8BF16", "W4F16", "W4BF16", "F8", "F8E4M3", "F8E5M2")
# When the nodes of one fused op disagree, the op runs in the most precise of their modes,
# so that no float wish is lost (and the disagreement is reported).
PRECISION = {"INT8": 0, "BF16": 1, "F16": 1, "F32": 2}
_LINE = re.compile(r"^(\S+)\s+(\S+)$")
# Our own qtable header names the deploy mode, which is the default of every unlisted op.
_DEPLOY = re.compile(r"^#.*--quantize\s+(\S+)")
# TPU-MLIR 1.30.2 pins onnx 1.14.1 (IR version 9 at most, opsets up to 19); IR 10 files fail
# its model check. IR 8 is what we verified it loads.
FLOAT_MODEL_IR = 8
MAX_OPSET = 19
# TPU-MLIR 1.30.2's layer groups broke doclayout-yolov8n's mixed (INT8 + float) bmodel: on
# TPU-MLIR's CPU model its class scores were 0.1-1.5 dB from TPU-MLIR's interpreter on the same
# _tpu.mlir, F16 or F32 islands alike, and equal with --disable_layer_group (BENCHMARKS.md,
# issue 17 item 5). All-INT8 builds were equal with layer groups.
NO_LAYER_GROUP = "--disable_layer_group"
LAYER_GROUP_CAUTION = (
    "{count} op(s) run in float ({modes}): TPU-MLIR 1.30.2's layer groups broke a mixed "
    "doclayout-yolov8n bmodel (its outputs on the CPU model far from the interpreter's on the "
    "same _tpu.mlir; equal without layer groups, BENCHMARKS.md), so the usage deploys with "
    "--disable_layer_group; compare the bmodel with model_runner on the _tpu.mlir before "
    "dropping it"
)
# Ops TPU-MLIR gives their input's scale (no threshold of their own in the plan).
_PASS_THROUGH = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")


@register
class TpuMlirFormat:
    name: str = "tpu-mlir"
    description: str = "TPU-MLIR quantize table and calibration table (model_deploy.py)"
    suffixes: tuple[str, ...] = (".qtable", ".cali_table")
    targets: tuple[str, ...] = ("bm1684x",)
    default_target: str = "bm1684x"

    def export(self, ctx: ExportContext) -> Rendered:
        out = Rendered(texts={}, entries=0)
        deploy = TO_TPU.get(ctx.assignment.default)
        if deploy is None:
            out.dropped.append(_dropped("(default)", ctx.assignment.default))
            deploy = "INT8"
        facts = graph_facts(ctx.canonical) if ctx.canonical is not None else None
        ops = tpu_ops(ctx.model, facts)
        modes = _op_modes(ctx, ops, out)
        out.texts[".qtable"] = _qtable(ctx, ops, modes, deploy, out)
        if ctx.calibration is not None:
            out.texts[".cali_table"] = calibration_table(ctx.calibration, ctx.model, ctx.plan, ops)
        else:
            out.warnings.append("the run folder has no calibration.json: no calibration table")
        _check_names(ctx, ops, modes, out)
        _known_differences(ctx.model, ops, modes, out)
        mixed = _layer_group_caution(modes, deploy, out)
        _attach_float_model(ctx, out)
        out.usage = _usage(ctx.model, facts, deploy, mixed)
        return out

    def parse(
        self, text: str, source: str, model: ModelIndex, name_map: Mapping[str, str] | None
    ) -> Assignment:
        by_op = _import_names(model)
        modes: dict[str, str] = {}
        default = "a8_w8"
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            deploy = _DEPLOY.match(line)
            if deploy is not None:
                default = _import_mode(deploy.group(1), source, number)
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if match is None:
                if len(line.split()) == 1:
                    continue  # TPU-MLIR's reader skips single-token lines too
                raise UserError(
                    f"{source}:{number}: malformed qtable line {line[:80]!r}",
                    "write `op_name MODE`, e.g. 122_Conv F16",
                )
            op, mode = match.groups()
            if op not in by_op:
                raise unknown_name_error("op", op, by_op, f"{source}:{number}")
            modes.update(dict.fromkeys(by_op[op], _import_mode(mode, source, number)))
        return compact_assignment(modes, self.default_target, default)


def calibration_table(
    stats: CalibrationStats,
    model: ModelIndex,
    plan: QuantPlan | None = None,
    ops: list[TpuOp] | None = None,
) -> str:
    """One `op threshold min max` line per graph input and per op of TPU-MLIR's graph."""
    lines = [
        f"# mlir version: quantlens {__version__} (not TPU-MLIR; for TPU-MLIR {TPU_MLIR_VERSION})",
        f"# calibration method: {stats.method}",
        f"# sample number: {stats.samples}",
        "###",
        "# op_name    threshold    min    max",
    ]
    ranges = _Ranges(stats, model, plan)
    named = [(name, name) for name in model.graph_inputs]
    named += [(op.name, op.output) for op in (ops if ops is not None else tpu_ops(model))]
    for name, tensor in named:
        found = ranges.get(tensor)
        if found is not None:
            threshold, low, high = found
            lines.append(f"{name} {threshold:.7f} {low:.7f} {high:.7f}")
    return "\n".join(lines) + "\n"


class _Ranges:
    """Threshold, min and max of a tensor: the plan's int8 scale first (what the emulation
    used), then the calibration's clip range, then the input of a pass-through op."""

    def __init__(self, stats: CalibrationStats, model: ModelIndex, plan: QuantPlan | None):
        self.stats = stats
        self.plan = plan
        self.producers = model.producers()

    def get(self, tensor: str, depth: int = 0) -> tuple[float, float, float] | None:
        entry = self.stats.tensors.get(tensor)
        quant = self.plan.activations.get(tensor) if self.plan is not None else None
        if quant is not None and isinstance(quant.format, IntFormat) and quant.format.symmetric:
            threshold = float(quant.scale[0]) * quant.format.qmax
            if entry is not None:
                low, high = entry.min, entry.max
            else:
                low = min(quant.range_min, default=0.0)
                high = max(quant.range_max, default=0.0)
            if not quant.format.signed:
                # TPU-MLIR picks UINT8 from a non-negative min (ImportCalibration getMinMax):
                # the min written says what the plan chose, whatever the raw minimum was.
                low = max(low, 0.0)
            return threshold, low, high
        if entry is not None:
            return max(abs(entry.clip_min), abs(entry.clip_max)), entry.min, entry.max
        node = self.producers.get(tensor)
        if node is not None and node.op_type in _PASS_THROUGH and depth < 64:
            return self.get(node.inputs[0], depth + 1)
        return None


def _op_modes(ctx: ExportContext, ops: list[TpuOp], out: Rendered) -> dict[str, str]:
    """TPU mode of every op; `out` gets the dropped modes and split fused ops."""
    explicit = set(ctx.assignment.layers)
    resolved = resolved_modes(ctx.assignment, ctx.model.names)
    modes: dict[str, str] = {}
    for op in ops:
        wanted: dict[str, str] = {}
        for node in op.nodes:
            tpu = TO_TPU.get(resolved[node])
            if tpu is None:
                # Patterns and the default are reported once, not per layer they cover.
                if node in explicit or resolved[node] != ctx.assignment.default:
                    out.dropped.append(_dropped(node, resolved[node]))
                continue
            wanted[node] = tpu
        mode = max(wanted.values(), key=PRECISION.__getitem__, default="INT8")
        if len(set(wanted.values())) > 1:
            out.warnings.append(
                f"{op.name} fuses {', '.join(op.nodes)} ({', '.join(wanted.values())}): "
                f"TPU-MLIR runs them as one op, written as {mode}"
            )
        modes[op.name] = mode
    return modes


def _qtable(
    ctx: ExportContext, ops: list[TpuOp], modes: dict[str, str], deploy: str, out: Rendered
) -> str:
    lines = [
        f"# quantlens {__version__}; deploy with model_deploy.py --quantize {deploy}",
        f"# chip: {ctx.plan.target}",
        "###",
        "# op_name   quantize_mode",
    ]
    for op in ops:
        if modes[op.name] != deploy:
            lines.append(f"{op.name} {modes[op.name]}")
            out.entries += 1
    if ctx.assignment.patterns:
        out.warnings.append("the qtable has no globs: assignment patterns were expanded")
    return "\n".join(lines) + "\n"


def _check_names(
    ctx: ExportContext, ops: list[TpuOp], modes: dict[str, str], out: Rendered
) -> None:
    """Flag layers the assignment names whose mode no op of TPU-MLIR's graph can carry."""
    fused = {node: op for op in ops for node in op.nodes}
    lost: list[str] = []
    for layer, mode in ctx.assignment.layers.items():
        node = next((n for n in ctx.model.nodes if n.name == layer), None)
        if node is None or TO_TPU.get(mode) is None:
            continue
        if node.op_type in DROPPED_TYPES:
            lost.append(f"{layer} ({node.op_type}: {DROPPED_TYPES[node.op_type]})")
        elif layer in fused and modes[fused[layer].name] != TO_TPU[mode]:
            op = fused[layer].name
            lost.append(f"{layer} (fused into {op}, which runs {modes[op]})")
    if not lost:
        return
    message = (
        f"{len(lost)} layer(s) name no op of TPU-MLIR's graph, so their mode is not honoured: "
        + "; ".join(lost[:5])
    )
    if ctx.strict:
        raise UserError(message, "assign the fused op's first node, or drop --strict")
    out.warnings.append(message)


def _known_differences(
    model: ModelIndex, ops: list[TpuOp], modes: dict[str, str], out: Rendered
) -> None:
    """Say where TPU-MLIR will not run the INT8 grid the table asks for (issue 17's to emulate)."""
    if not any(mode == "INT8" for mode in modes.values()):
        return
    out.warnings.append(f"known difference: {KNOWN_DIFFERENCES['unsigned']}")
    types = {model.node(op.nodes[-1]).op_type for op in ops if modes[op.name] == "INT8"}
    out.warnings += [
        f"known difference: {KNOWN_DIFFERENCES[t]}" for t in ("Softmax",) if t in types
    ]


def _layer_group_caution(modes: dict[str, str], deploy: str, out: Rendered) -> bool:
    """Whether the table mixes INT8 and float ops (then `out` says why layer groups go off)."""
    floats = [mode for mode in modes.values() if mode != "INT8"]
    if deploy != "INT8" or not floats or len(floats) == len(modes):
        return False
    names = "/".join(sorted(set(floats)))
    out.warnings.append(LAYER_GROUP_CAUTION.format(count=len(floats), modes=names))
    return True


def _usage(model: ModelIndex, facts: GraphFacts | None, deploy: str, mixed: bool) -> str:
    """The two TPU-MLIR 1.30.2 commands, with the canonical model's input shapes (and without
    layer groups for a mixed INT8 + float table)."""
    dims = [facts.shapes.get(name) if facts else None for name in model.graph_inputs]
    shapes = ",".join(
        "[" + ",".join(str(d) if d is not None else "?" for d in shape) + "]" if shape else "[...]"
        for shape in dims
    )
    return (
        f"model_transform.py --model_name m --model_def FILE.float.onnx --input_shapes [{shapes}] "
        f"--mlir m.mlir && model_deploy.py --mlir m.mlir --quantize {deploy} "
        "--quantize_table FILE.qtable --calibration_table FILE.cali_table --chip bm1684x "
        "--model m.bmodel" + (f" {NO_LAYER_GROUP}" if mixed else "")
    )


def _attach_float_model(ctx: ExportContext, out: Rendered) -> None:
    """The canonical model the names refer to, loadable by TPU-MLIR's onnx 1.14."""
    if ctx.canonical is None:
        out.warnings.append("no canonical model: convert the model quantlens analysed")
        return
    proto = ir.serde.serialize_model(ctx.canonical)
    proto.ir_version = min(proto.ir_version, FLOAT_MODEL_IR)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET:
        out.warnings.append(
            f"the float model uses opset {opset}; TPU-MLIR {TPU_MLIR_VERSION}'s onnx 1.14 "
            f"knows opsets up to {MAX_OPSET}"
        )
    out.binaries[".float.onnx"] = proto.SerializeToString()


def _import_names(model: ModelIndex) -> dict[str, tuple[str, ...]]:
    """Every op name a qtable may use for `model` -> the nodes it sets.

    Without the canonical model's shapes the fusions that depend on them are assumed, and
    each node's own unfused name is accepted too, so files from other tools still read.
    """
    names: dict[str, tuple[str, ...]] = {}
    for node in model.nodes:
        for i in range(len(node.outputs)):
            names[op_name(node, i)] = (node.name,)
    for op in tpu_ops(model):
        names[op.name] = op.nodes
        if MATMUL_BIAS.name in op.rules and RELU.name not in op.rules:
            # A batched MatMul + bias is one op named after the Add (MATMUL_BIAS_TOP): the
            # Add's own name stands for both nodes then.
            names[op_name(model.node(op.nodes[1]))] = op.nodes
    return names


def _dropped(layer: str, mode: str) -> Dropped:
    if mode.startswith("a16") or mode.endswith("a16"):
        reason = "TPU-MLIR has no 16-bit integer mode; F16 is the closest"
    else:
        reason = f"TPU-MLIR's qtable cannot express {mode} (INT8/F16/BF16/F32 only)"
    return Dropped(layer=layer, mode=mode, reason=reason)


def _import_mode(mode: str, source: str, line: int) -> str:
    upper = mode.upper()
    if upper in FROM_TPU:
        return FROM_TPU[upper]
    if upper in UNSUPPORTED:
        raise UserError(
            f"{source}:{line}: TPU-MLIR mode {upper} has no quantlens equivalent",
            "quantlens models INT8, F16, BF16 and F32 on TPU-MLIR",
        )
    raise UserError(
        f"{source}:{line}: unknown quantize mode {mode!r}", "use INT8, F16, BF16 or F32"
    )
