"""Upgrade the default-domain opset to at least 13, where per-channel QDQ (`axis`) exists."""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import version_converter

from quantlens.errors import UserError
from quantlens.ir.passes.base import PassReport

MIN_OPSET = 13


def opset_of(model: ir.Model) -> int:
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))


def upgrade_opset(model: ir.Model, target: int = MIN_OPSET) -> tuple[ir.Model, PassReport]:
    report = PassReport(name="opset-upgrade")
    current = opset_of(model)
    if current >= target:
        return model, report
    proto = ir.serde.serialize_model(model)
    try:
        upgraded = version_converter.convert_version(proto, target)
    except Exception as exc:  # the converter raises plain RuntimeError/ValueError subclasses
        raise UserError(
            f"cannot upgrade the model from opset {current} to {target}: {exc}",
            "re-export the model with opset >= 13",
        ) from exc
    _keep_value_info_names(proto, upgraded)
    report.note(f"opset {current} -> {target}")
    return ir.serde.deserialize_model(upgraded), report


def _keep_value_info_names(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    # The converter keeps node names; metadata (OCR dictionaries, class names) must survive too.
    if not after.metadata_props and before.metadata_props:
        after.metadata_props.extend(before.metadata_props)
