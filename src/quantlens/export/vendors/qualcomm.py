"""Qualcomm quantization overrides (SNPE/QNN, 0.x schema) and AIMET encodings 1.0.0.

Both carry the plan tensor by tensor (vendor-formats.md 3.2-3.4): activations keyed by
output tensor, params by weight/bias; a float layer is a float encoding on its output and its
params. Either importer reads either schema (dict keyed by tensor, or 1.0.0 lists of objects).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from quantlens.errors import UserError
from quantlens.export.vendors.base import (
    Dropped,
    ExportContext,
    ModelIndex,
    NodeInfo,
    Rendered,
    compact_assignment,
    register,
    unknown_name_error,
)
from quantlens.export.vendors.encodings import (
    FLOAT_BITS,
    Encoding,
    attach_float_model,
    infer_modes,
    plan_encodings,
    tensor_names,
)
from quantlens.ir.vendors.qualcomm_rules import Fusions, find_fusions, fused_by_type
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.modes import get_mode

QNN_TARGETS = ("qnn-htp",)
QNN_USAGE = (
    "qnn-onnx-converter --input_network FILE.float.onnx --quantization_overrides FILE "
    "--input_list calib.txt --bias_bitwidth 32 --float_bitwidth 16 (SNPE: snpe-onnx-to-dlc "
    "--quantization_overrides FILE, then snpe-dlc-quant --override_params)"
)

# Checked with AIMET-ONNX 2.42.0 (benchmarks/_vendor_aimet.py): the sim's defaults are int8, so
# a file with other bit widths loads non-strictly (its settings win) and every entry is held.
AIMET_USAGE = (
    QNN_USAGE.replace("FILE ", "FILE.encodings ", 1)
    + "; in AIMET-ONNX: load_encodings_to_sim(QuantizationSimModel(onnx.load('FILE.float.onnx'),"
    " config_file='htp_v73'), 'FILE.encodings', strict=False)"
)


def _qnn_entries(enc: Encoding) -> list[dict[str, Any]]:
    if enc.is_float:
        return [{"bitwidth": enc.bits, "dtype": "float"}]
    entries = []
    for channel, (scale, offset) in enumerate(zip(enc.scale, enc.offset)):
        low, high = enc.bounds(channel)
        entries.append(
            {
                "bitwidth": enc.bits,
                "dtype": "int",
                "is_symmetric": str(enc.symmetric),
                "min": low,
                "max": high,
                "scale": scale,
                "offset": offset,
            }
        )
    return entries


def _aimet_entry(name: str, enc: Encoding) -> dict[str, Any]:
    if enc.is_float:
        return {"name": name, "bw": enc.bits, "dtype": "FLOAT", "enc_type": "PER_TENSOR"}
    return {
        "name": name,
        "bw": enc.bits,
        "dtype": "INT",
        "enc_type": "PER_CHANNEL" if enc.per_channel else "PER_TENSOR",
        "is_sym": enc.symmetric,
        "offset": list(enc.offset),
        "scale": list(enc.scale),
    }


@register
class QnnFormat:
    name: str = "qnn"
    description: str = "Qualcomm SNPE/QNN quantization overrides JSON (--quantization_overrides)"
    suffixes: tuple[str, ...] = (".qnn.json",)
    targets: tuple[str, ...] = QNN_TARGETS
    default_target: str = "qnn-htp"

    def export(self, ctx: ExportContext) -> Rendered:
        out = Rendered(texts={}, entries=0, usage=QNN_USAGE)
        acts, params = qualcomm_encodings(ctx, out)
        attach_float_model(ctx, out)
        payload = {
            "activation_encodings": {k: _qnn_entries(v) for k, v in acts.items()},
            "param_encodings": {k: _qnn_entries(v) for k, v in params.items()},
        }
        out.entries = len(acts) + len(params)
        out.texts[".qnn.json"] = json.dumps(payload, indent=2) + "\n"
        return out

    def parse(
        self, text: str, source: str, model: ModelIndex, name_map: Mapping[str, str] | None
    ) -> Assignment:
        return _assignment(read_encodings(text, source, model), model, self.default_target)


@register
class AimetFormat:
    name: str = "aimet"
    description: str = "AIMET encodings, version 1.0.0"
    suffixes: tuple[str, ...] = (".encodings",)
    targets: tuple[str, ...] = QNN_TARGETS
    default_target: str = "qnn-htp"

    def export(self, ctx: ExportContext) -> Rendered:
        out = Rendered(texts={}, entries=0, usage=AIMET_USAGE)
        acts, params = qualcomm_encodings(ctx, out)
        attach_float_model(ctx, out)
        payload = {
            "version": "1.0.0",
            "activation_encodings": [_aimet_entry(k, v) for k, v in acts.items()],
            "param_encodings": [_aimet_entry(k, v) for k, v in params.items()],
            "excluded_layers": [],
        }
        out.entries = len(acts) + len(params)
        out.texts[".encodings"] = json.dumps(payload, indent=2) + "\n"
        return out

    def parse(
        self, text: str, source: str, model: ModelIndex, name_map: Mapping[str, str] | None
    ) -> Assignment:
        return _assignment(read_encodings(text, source, model), model, self.default_target)


Encodings = dict[str, Encoding]


def qualcomm_encodings(ctx: ExportContext, out: Rendered) -> tuple[Encodings, Encodings]:
    """The plan's encodings as Qualcomm's graph holds them: after its fusions
    (`qualcomm_rules`), fused groups float as a whole, no entry for a tensor fused away or
    passed through a data-movement op (the group's output carries the range)."""
    acts, params = plan_encodings(ctx, out)
    if ctx.canonical is None:
        return acts, params
    fusions = find_fusions(ctx.model, ctx.canonical)
    for group in fusions.groups:
        _float_group(ctx, group, acts, params, out)
    lost = _drop_unheld(ctx, fusions, acts)
    lost += _tie(fusions, acts, out)
    _report_unheld(ctx, fusions, lost, out)
    return acts, params


def _float_group(
    ctx: ExportContext, group: tuple[str, ...], acts: Encodings, params: Encodings, out: Rendered
) -> None:
    """One fused op is float or integer as a whole: a float member floats every member's
    output and params (and the constant bias of a MatMul+Add pair)."""
    modes = {name: get_mode(ctx.assignment.mode_name(name)) for name in group}
    floating = [m.float_type for m in modes.values() if m.float_type is not None]
    if not floating:
        return
    enc = Encoding(bits=FLOAT_BITS[floating[0]], is_float=True)
    previous: tuple[str, ...] = ()
    for name in group:
        node = ctx.model.node(name)
        acts.update(dict.fromkeys(node.outputs, enc))
        params.update(dict.fromkeys(node.params, enc))
        if node.op_type == "Add" and previous:  # the bias of a MatMul+Add pair
            params.update(dict.fromkeys((i for i in node.inputs if i not in previous), enc))
        previous = node.outputs
        if modes[name].float_type is None:
            reason = f"fused with {', '.join(n for n in group if n != name)} into one Qualcomm op, "
            out.dropped.append(
                Dropped(layer=name, mode=modes[name].name, reason=reason + "float as a whole")
            )


def _drop_unheld(ctx: ExportContext, fusions: Fusions, acts: Encodings) -> list[str]:
    """Remove encodings of tensors the vendor graph does not quantize; return those whose
    precision (the plan's, or the assignment's where the plan, emulating the vendor, has no
    quantizer there) differs from what the vendor keeps in their place."""
    lost = []
    producers = ctx.model.producers()
    for tensor, keeper in [*fusions.fused_away.items(), *fusions.passthrough.items()]:
        enc = acts.pop(tensor, None)
        kept = acts.get(keeper)
        wished = _precision(enc) if enc is not None else _wished(ctx, producers.get(tensor))
        if wished is not None and kept is not None and wished != _precision(kept):
            lost.append(f"{tensor} ({wished}; {keeper} keeps {_precision(kept)})")
    return lost


def _wished(ctx: ExportContext, node: NodeInfo | None) -> str | None:
    """The output precision the assignment gives `node` (None: unquantized or unknown)."""
    if node is None:
        return None
    mode = get_mode(ctx.assignment.mode_name(node.name))
    if mode.float_type is not None:
        return f"fp{FLOAT_BITS[mode.float_type]}" if mode.float_type in FLOAT_BITS else None
    return f"int{mode.act_out_bits}" if mode.act_out_bits else None


def _tie(fusions: Fusions, acts: Encodings, out: Rendered) -> list[str]:
    """Give tensors HTP holds in one quantizer the encoding it holds (`qualcomm_rules.TIE_*`);
    return those whose precision changes."""
    changed, lost = [], []
    for tensor, owner in fusions.tied.items():
        enc, kept = acts.get(tensor), acts.get(owner)
        if enc is None or kept is None or enc == kept:
            continue
        if _precision(enc) != _precision(kept):
            lost.append(f"{tensor} ({_precision(enc)}; shares {owner}'s {_precision(kept)})")
        changed.append(tensor)
        acts[tensor] = kept
    if changed:
        shown = _listed(changed)
        out.warnings.append(
            f"{len(changed)} tensors share one encoding with a neighbour on HTP (a Concat's inputs "
            f"take its output's; a Relu, AveragePool or Resize output its input's), so they are "
            f"written with that encoding, not the plan's: {shown}"
        )
    return lost


def _listed(names: list[str], first: int = 6) -> str:
    more = f" and {len(names) - first} more" if len(names) > first else ""
    return ", ".join(names[:first]) + more


def _precision(enc: Encoding) -> str:
    return f"{'fp' if enc.is_float else 'int'}{enc.bits}"


def _report_unheld(ctx: ExportContext, fusions: Fusions, lost: list[str], out: Rendered) -> None:
    planned = set(ctx.plan.activations)
    gone = sorted(planned & {*fusions.fused_away, *fusions.passthrough})
    if gone:
        shown = _listed(gone)
        out.warnings.append(
            f"{len(gone)} planned tensors are not in Qualcomm's quantized graph (fused into "
            f"the next op or passed through a data-movement op), so not written: {shown}"
        )
    if not lost:
        return
    message = "the vendor graph cannot hold these precisions: " + "; ".join(lost)
    if ctx.strict:
        raise UserError(message, "assign the fused group's last op the precision wanted")
    out.warnings.append(message)


def _assignment(encodings: dict[str, Encoding], model: ModelIndex, target: str) -> Assignment:
    return compact_assignment(infer_modes(model, encodings, aliases=fused_by_type(model)), target)


def read_encodings(text: str, source: str, model: ModelIndex) -> dict[str, Encoding]:
    """Activation and param encodings of either schema, names checked against the model."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: not JSON ({exc})", "pass an overrides/encodings file") from exc
    if not isinstance(data, dict) or "activation_encodings" not in data:
        raise UserError(f"{source}: no 'activation_encodings' section", "pass an encodings file")
    known = set(tensor_names(model))
    result: dict[str, Encoding] = {}
    for section in ("activation_encodings", "param_encodings"):
        for name, entries in _section_items(data.get(section) or {}, source, section):
            if name not in known:
                raise unknown_name_error("tensor", name, known, f"{source} ({section})")
            result[name] = _read_entry(entries, source, name)
    return result


def _section_items(section: object, source: str, what: str) -> list[tuple[str, list[Any]]]:
    if isinstance(section, dict):
        return [(str(k), v if isinstance(v, list) else [v]) for k, v in section.items()]
    if isinstance(section, list) and all(isinstance(e, dict) and "name" in e for e in section):
        return [(str(e["name"]), [e]) for e in section]
    raise UserError(f"{source}: {what} is neither a tensor map nor a list of named entries")


def _read_entry(entries: list[Any], source: str, name: str) -> Encoding:
    first = entries[0] if entries and isinstance(entries[0], dict) else None
    if first is None:
        raise UserError(f"{source}: tensor {name!r} has no encoding", "give a list of encodings")
    bits = first.get("bitwidth", first.get("bw"))
    if not isinstance(bits, int) or not 4 <= bits <= 32:
        raise UserError(f"{source}: tensor {name!r} has bitwidth {bits!r}", "use 4..32")
    is_float = str(first.get("dtype", "int")).lower() == "float"
    return Encoding(bits=bits, is_float=is_float)
