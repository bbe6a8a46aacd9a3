"""Fix dynamic input dimensions from a user-given shape.

Calibration and analysis need concrete shapes; a symbolic batch or width is pinned here, once,
so every later pass and kernel sees the same shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir

from quantlens.errors import UserError
from quantlens.ir.passes.base import PassReport


def dynamic_inputs(model: ir.Model) -> dict[str, list[int | str]]:
    """Inputs with at least one dimension that is not a fixed integer, with their shapes."""
    found: dict[str, list[int | str]] = {}
    for value in model.graph.inputs:
        dims = _dims(value)
        if any(not isinstance(d, int) for d in dims):
            found[value.name or ""] = dims
    return found


def fix_input_shapes(
    model: ir.Model, shapes: Mapping[str, Sequence[int]], batch: int | None = None
) -> PassReport:
    """Pin the given shapes; with `batch`, also pin a dynamic leading dim of the other inputs."""
    report = PassReport(name="fix-input-shapes")
    by_name = {value.name: value for value in model.graph.inputs}
    if batch is not None:
        shapes = {**_default_batch(model, batch), **shapes}
    for name, shape in shapes.items():
        value = by_name.get(name)
        if value is None:
            raise UserError(
                f"--input-shape names input {name!r}, which the model does not have",
                f"use one of: {', '.join(str(n) for n in by_name)}",
            )
        _check_compatible(name, _dims(value), list(shape))
        if _dims(value) != list(shape):
            report.note(f"{name}: {_fmt(_dims(value))} -> {_fmt(list(shape))}")
            value.shape = ir.Shape(list(shape))
    return report


def _default_batch(model: ir.Model, batch: int) -> dict[str, list[int]]:
    defaults = {}
    for value in model.graph.inputs:
        dims = _dims(value)
        if dims and not isinstance(dims[0], int) and all(isinstance(d, int) for d in dims[1:]):
            defaults[value.name or ""] = [batch, *(int(d) for d in dims[1:])]
    return defaults


def _dims(value: ir.Value) -> list[int | str]:
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else str(d.value or "?") for d in value.shape]


def _check_compatible(name: str, current: list[int | str], wanted: list[int]) -> None:
    if current and len(current) != len(wanted):
        raise UserError(
            f"--input-shape for {name!r} has rank {len(wanted)}, the model input has rank "
            f"{len(current)} ({_fmt(current)})",
            "give one size per dimension, e.g. --input-shape x:1,3,48,320",
        )
    for axis, (have, want) in enumerate(zip(current, wanted)):
        if isinstance(have, int) and have != want:
            raise UserError(
                f"--input-shape for {name!r} sets dimension {axis} to {want}, but the model fixes "
                f"it at {have} ({_fmt(current)})",
                "change only the dynamic dimensions",
            )
        if want <= 0:
            raise UserError(f"--input-shape for {name!r} has a non-positive size {want}")


def _fmt(dims: Sequence[int | str]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"
