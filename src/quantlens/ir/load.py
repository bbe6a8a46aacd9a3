"""Loading ONNX files with clear errors for the ways real files go wrong."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from quantlens.errors import UserError


def load_model(path: str | Path) -> ir.Model:
    """Load `path` as an onnx_ir Model, or raise one clear UserError."""
    file = Path(path)
    if not file.exists():
        raise UserError(f"model file {file} does not exist", "check the path")
    if file.is_dir():
        raise UserError(f"{file} is a folder, not an ONNX file", "pass the .onnx file itself")
    if file.stat().st_size == 0:
        raise UserError(f"model file {file} is empty", "re-export or re-download the model")
    proto = _parse(file)
    _check_is_model(proto, file)
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx_ir raises several types for malformed graphs
        raise UserError(f"{file} is not a valid ONNX graph: {exc}", "re-export the model") from exc


def _parse(file: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(file))
    except (DecodeError, RuntimeError, ValueError, TypeError) as exc:
        raise UserError(
            f"{file} is corrupt or not an ONNX file ({type(exc).__name__})",
            "re-export or re-download the model; a truncated download is the usual cause",
        ) from exc
    except onnx.checker.ValidationError as exc:  # external data missing or outside the folder
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid external data"
        raise UserError(
            f"{file}: external weight data: {first}",
            "keep the .onnx file and its external data files together, inside the model's folder",
        ) from exc
    except FileNotFoundError as exc:  # external data next to the model is missing
        raise UserError(
            f"{file} refers to external weight data that is missing: {exc.filename}",
            "keep the .onnx file and its external data files in the same folder",
        ) from exc


def _check_is_model(proto: onnx.ModelProto, file: Path) -> None:
    # Protobuf parses many non-ONNX byte strings "successfully"; a real model has these fields.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise UserError(
            f"{file} is not an ONNX model (no graph, IR version or opset found)",
            "pass an .onnx file exported by a framework (torch.onnx, paddle2onnx, tf2onnx)",
        )
    if not proto.graph.node:
        raise UserError(f"{file} has an empty graph", "re-export the model")
    _check_opset(proto, file)
    try:
        onnx.checker.check_model(proto, full_check=False)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise UserError(f"{file} fails the ONNX checker: {first}", "re-export the model") from exc


def _check_opset(proto: onnx.ModelProto, file: Path) -> None:
    """An opset newer than the installed onnx knows would pass the checker op by op and then
    run kernels written for other semantics: refuse it."""
    known = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > known:
            raise UserError(
                f"{file} uses opset {opset.version}, newer than the newest this quantlens "
                f"knows ({known})",
                f"re-export the model with opset <= {known}, or upgrade quantlens and onnx",
            )


def save_model(model: ir.Model, path: str | Path) -> Path:
    """Serialize `model` atomically (write a temporary file, then rename)."""
    from quantlens.artifacts import write_bytes_atomic

    proto = ir.serde.serialize_model(model)
    return write_bytes_atomic(path, proto.SerializeToString())
