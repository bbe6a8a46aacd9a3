"""Sophgo TPU-MLIR quantize table (qtable) and calibration table (vendor-formats.md 2.2-2.4).

Op names are what `OnnxConverter` gives top-dialect ops: `<first output tensor>_<OpType>`;
graph inputs keep their tensor name. The qtable lists every op whose mode is not the deploy
mode (`model_deploy.py --quantize INT8`); it has no globs, so patterns are expanded. The
calibration table's threshold is the symmetric int8 clip, max(|clip_min|, |clip_max|).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from quantlens import __version__
from quantlens.calib.stats import CalibrationStats
from quantlens.errors import UserError
from quantlens.export.vendors.base import (
    Dropped,
    ExportContext,
    ModelIndex,
    NodeInfo,
    Rendered,
    compact_assignment,
    register,
    resolved_modes,
    unknown_name_error,
)
from quantlens.schemes.assignment import Assignment

TO_TPU = {"a8_w8": "INT8", "fp16": "F16", "bf16": "BF16", "fp32": "F32"}
# UINT8 is the asymmetric 8-bit variant: the same bit widths, so the same quantlens mode.
FROM_TPU = {**{v: k for k, v in TO_TPU.items()}, "UINT8": "a8_w8"}
# Modes of the enum (Module.td) that quantlens does not emulate.
UNSUPPORTED = ("INT4", "W8F16", "W8BF16", "W4F16", "W4BF16", "F8", "F8E4M3", "F8E5M2")
_LINE = re.compile(r"^(\S+)\s+(\S+)$")
# Our own qtable header names the deploy mode, which is the default of every unlisted op.
_DEPLOY = re.compile(r"^#.*--quantize\s+(\S+)")


def op_name(node: NodeInfo, output: int = 0) -> str:
    return f"{node.outputs[output]}_{node.op_type}"


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
        out.texts[".qtable"] = _qtable(ctx, deploy, out)
        if ctx.calibration is not None:
            out.texts[".cali_table"] = calibration_table(ctx.calibration, ctx.model)
        else:
            out.warnings.append("the run folder has no calibration.json: no calibration table")
        _warn_folded(ctx, out)
        out.usage = (
            f"model_deploy.py --mlir m.mlir --quantize {deploy} --quantize_table FILE.qtable "
            "--calibration_table FILE.cali_table --processor bm1684x --model m.bmodel"
        )
        return out

    def parse(
        self, text: str, source: str, model: ModelIndex, name_map: Mapping[str, str] | None
    ) -> Assignment:
        by_op = {
            op_name(node, i): node.name for node in model.nodes for i in range(len(node.outputs))
        }
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
            modes[by_op[op]] = _import_mode(mode, source, number)
        return compact_assignment(modes, self.default_target, default)


def calibration_table(stats: CalibrationStats, model: ModelIndex) -> str:
    producers = model.producers()
    lines = [
        f"# mlir version: quantlens {__version__} (not TPU-MLIR)",
        f"# calibration method: {stats.method}",
        f"# sample number: {stats.samples}",
        "###",
        "# op_name    threshold    min    max",
    ]
    for tensor, entry in stats.tensors.items():
        node = producers.get(tensor)
        name = op_name(node, node.outputs.index(tensor)) if node else tensor
        threshold = max(abs(entry.clip_min), abs(entry.clip_max))
        lines.append(f"{name} {threshold:.7f} {entry.min:.7f} {entry.max:.7f}")
    return "\n".join(lines) + "\n"


def _qtable(ctx: ExportContext, deploy: str, out: Rendered) -> str:
    lines = [
        f"# quantlens {__version__}; deploy with model_deploy.py --quantize {deploy}",
        f"# chip: {ctx.plan.target}",
        "###",
        "# op_name   quantize_mode",
    ]
    explicit = set(ctx.assignment.layers)
    for layer, mode in resolved_modes(ctx.assignment, ctx.model.names).items():
        tpu = TO_TPU.get(mode)
        if tpu is None:
            # Patterns and the default are reported once, not per layer they cover.
            if layer in explicit or mode != ctx.assignment.default:
                out.dropped.append(_dropped(layer, mode))
            continue
        if tpu != deploy:
            node = ctx.model.node(layer)
            lines += [f"{op_name(node, i)} {tpu}" for i in range(len(node.outputs))]
            out.entries += 1
    if ctx.assignment.patterns:
        out.warnings.append("the qtable has no globs: assignment patterns were expanded")
    return "\n".join(lines) + "\n"


def _dropped(layer: str, mode: str) -> Dropped:
    if mode.startswith("a16") or mode.endswith("a16"):
        reason = "TPU-MLIR has no 16-bit integer mode; F16 is the closest"
    else:
        reason = f"TPU-MLIR's qtable cannot express {mode} (INT8/F16/BF16/F32 only)"
    return Dropped(layer=layer, mode=mode, reason=reason)


def _warn_folded(ctx: ExportContext, out: Rendered) -> None:
    folded = [n.name for n in ctx.model.nodes if n.folded_bn]
    if folded:
        out.warnings.append(
            f"{len(folded)} layer(s) carry a folded BatchNorm ({', '.join(folded[:3])}); their op "
            "names use the BatchNorm's output tensor, check them against the mlir file"
        )


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
