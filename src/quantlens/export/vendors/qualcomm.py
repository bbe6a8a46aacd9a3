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
    ExportContext,
    ModelIndex,
    Rendered,
    compact_assignment,
    register,
    unknown_name_error,
)
from quantlens.export.vendors.encodings import (
    Encoding,
    attach_float_model,
    infer_modes,
    plan_encodings,
    tensor_names,
)
from quantlens.schemes.assignment import Assignment

QNN_TARGETS = ("qnn-htp",)
QNN_USAGE = (
    "qnn-onnx-converter --input_network FILE.float.onnx --quantization_overrides FILE "
    "--input_list calib.txt --bias_bitwidth 32 --float_bitwidth 16 (SNPE: snpe-onnx-to-dlc "
    "--quantization_overrides FILE, then snpe-dlc-quant --override_params)"
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
        acts, params = plan_encodings(ctx, out)
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
        out = Rendered(texts={}, entries=0, usage=QNN_USAGE.replace("FILE ", "FILE.encodings "))
        acts, params = plan_encodings(ctx, out)
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


def _assignment(encodings: dict[str, Encoding], model: ModelIndex, target: str) -> Assignment:
    return compact_assignment(infer_modes(model, encodings), target)


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
