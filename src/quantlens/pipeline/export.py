"""Vendor files in and out: a run folder to the chip's own files, and those files back.

`export_vendor` reads a quantize run folder (assignment.json, plan.json, calibration.json,
quantize.json and the canonical model the plan speaks of), renders one vendor format
(`quantlens.export.vendors`) and writes its files atomically. `import_vendor` reads a vendor
file the user already has into an Assignment, checking every name against the model, so an
existing configuration can be analysed like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantlens.artifacts import write_bytes_atomic, write_text_atomic
from quantlens.artifacts.calibration import CalibrationStats
from quantlens.artifacts.folder import RunFolder
from quantlens.artifacts.quantize import QuantizeReport
from quantlens.errors import UserError, read_user_text
from quantlens.export.vendors import ExportContext, ExportResult, ModelIndex, get_format
from quantlens.export.vendors.base import Rendered, VendorFormat
from quantlens.export.vendors.hailo import name_map_from_hn
from quantlens.export.vendors.ort import quantize_static_kwargs
from quantlens.pipeline.session import prepare
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.profiles import get_profile
from quantlens.schemes.qparams import QuantPlan

__all__ = [
    "export_vendor",
    "import_vendor",
    "load_name_map",
    "quantize_static_kwargs",
    "vendor_formats",
]


def vendor_formats() -> dict[str, str]:
    """Format name -> one-line description, for `--format` help."""
    from quantlens.export.vendors import list_formats

    return {f.name: f.description for f in list_formats()}


def export_vendor(
    run_dir: Path,
    fmt: str,
    output: Path | None = None,
    name_map: Path | None = None,
    model: Path | None = None,
    strict: bool = False,
) -> ExportResult:
    """Write the run's plan as `fmt` files (next to `output`, default run_dir/model.<suffix>).

    With `strict`, a plan entry the vendor's graph cannot hold (a name its fusions remove, a
    precision a fused op cannot take) is an error instead of a warning.
    """
    vendor = get_format(fmt)
    ctx = load_run(run_dir, model)
    ctx.strict = strict
    ctx.name_map = load_name_map(name_map) if name_map is not None else None
    rendered = vendor.export(ctx)
    if strict and rendered.dropped:
        item = rendered.dropped[0]
        raise UserError(
            f"{fmt} cannot hold {len(rendered.dropped)} plan entries, first {item.layer} "
            f"({item.mode}): {item.reason}",
            "change the assignment, or drop --strict to export the rest with a warning",
        )
    if fmt not in get_profile(ctx.run_target).export_formats:
        rendered.warnings.append(
            f"the run was quantized for {ctx.run_target}; the {fmt} files carry that plan "
            f"(quantize with --target {vendor.default_target} for a faithful one)"
        )
    files = _write(rendered, vendor, output or run_dir / default_output(fmt))
    return ExportResult(
        format=fmt,
        files=[str(f) for f in files],
        entries=rendered.entries,
        dropped=rendered.dropped,
        warnings=rendered.warnings,
        usage=rendered.usage,
    )


def default_output(fmt: str) -> Path:
    """The file name an export of `fmt` gets in the run folder by default."""
    return Path(f"model{get_format(fmt).suffixes[0]}")


def import_vendor(file: Path, fmt: str, model: Path, name_map: Path | None = None) -> Assignment:
    """Read a vendor file as an Assignment for `model` (unknown names -> UserError)."""
    vendor = get_format(fmt)
    text = read_user_text(file, f"{fmt} file", "check the path and pass the vendor's text file")
    mapping = load_name_map(name_map) if name_map is not None else None
    return vendor.parse(text, str(file), _model_index(model)[0], mapping)


def load_name_map(path: Path) -> dict[str, str]:
    """A JSON name map: either {onnx node: hailo layer} or a HAR's HN JSON (original_names)."""
    text = read_user_text(path, "name map", "pass a JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"cannot read the name map {path}: {exc}", "pass a JSON file") from exc
    if isinstance(data, dict) and isinstance(data.get("layers"), dict):
        return name_map_from_hn(data)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise UserError(
            f"{path} is not a name map",
            'write {"<onnx node>": "<hailo layer>", ...} (see docs/hailo-name-map.md)',
        )
    return {str(k): v for k, v in data.items()}


def load_run(run_dir: Path, model: Path | None = None) -> ExportContext:
    """Everything a vendor exporter reads, from a quantize run folder."""
    folder = RunFolder(run_dir)
    assignment = folder.require(Assignment)
    plan = folder.require(QuantPlan)
    calibration = folder.read(CalibrationStats)
    report = _report(folder)
    shapes = report.get("input_shapes") or {}
    index, canonical = _model_index(model or _run_model(folder, report), shapes)
    qdq = folder.qdq_model
    return ExportContext(
        assignment=assignment,
        plan=plan,
        model=index,
        calibration=calibration,
        run_target=plan.target,
        qdq_model=str(qdq) if qdq.exists() else None,
        canonical=canonical,
    )


def _model_index(path: Path, shapes: dict[str, list[int]] | None = None) -> tuple[ModelIndex, Any]:
    if not Path(path).exists():
        raise UserError(f"model {path} does not exist", "pass the ONNX model the run quantized")
    canonical = prepare(Path(path), shapes or None, batch=1).model
    return ModelIndex.from_model(canonical), canonical


def _report(folder: RunFolder) -> dict[str, Any]:
    # Read loosely: only the input shapes and model path are needed, from any schema version.
    path = folder.file(QuantizeReport)
    if not path.exists():
        return {}
    try:
        data = json.loads(read_user_text(path, "artifact", "re-run `quantlens quantize`"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON: {exc}", "re-run `quantlens quantize`") from exc
    return data if isinstance(data, dict) else {}


def _run_model(folder: RunFolder, report: dict[str, Any]) -> Path:
    """The canonical model `quantize` saved in the folder (it matches the plan's names and
    weights). Folders written before it was saved: the optimized float model when graph passes
    or fixes changed the model, else the model path quantize.json recorded, relative to the cwd
    it ran in (unknown here), so a few likely bases are tried."""
    for saved in (folder.canonical_model, folder.optimized_model):
        if saved.is_file():
            return saved
    run_dir = folder.path
    recorded = report.get("model")
    if isinstance(recorded, str):
        for base in (Path.cwd(), run_dir, run_dir.parent):
            candidate = base / recorded
            if candidate.exists():
                return candidate
    raise UserError(
        f"cannot find the model the run in {run_dir} quantized ({recorded or 'not recorded'})",
        "pass the model explicitly (--model PATH)",
    )


def _write(rendered: Rendered, vendor: VendorFormat, output: Path) -> list[Path]:
    """The main text goes to `output`; side files share its stem with their own suffix."""
    main = vendor.suffixes[0]
    text = str(output)
    base = text[: -len(main)] if text.endswith(main) else str(output.with_suffix(""))
    files = []
    for suffix, content in rendered.texts.items():
        files.append(write_text_atomic(output if suffix == main else Path(base + suffix), content))
    for suffix, data in rendered.binaries.items():
        files.append(write_bytes_atomic(Path(base + suffix), data))
    return files
