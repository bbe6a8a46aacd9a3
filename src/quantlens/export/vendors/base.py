"""What every vendor format shares: the exporter/importer Protocol, its registry, and the inputs.

An exporter is a pure function of an `ExportContext` (assignment, plan, calibration, the
canonical model's nodes, an optional name map) to `Rendered` texts; an importer is a pure
function of a file's text and the model's nodes to an Assignment. Reading run folders and
writing files is `quantlens.vendor_io`'s job, so formats are easy to test on strings.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import onnx_ir as ir
from pydantic import BaseModel, Field

from quantlens.calib.stats import CalibrationStats
from quantlens.errors import UserError

# Re-exported: their home is quantlens.ir.index, below the emulation that reads them too.
from quantlens.ir.index import ModelIndex as ModelIndex
from quantlens.ir.index import NodeInfo as NodeInfo
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan


class Dropped(BaseModel):
    """A wish the vendor file cannot carry; `reason` says why and what was written instead."""

    layer: str
    mode: str
    reason: str


class ExportResult(BaseModel):
    format: str
    files: list[str]
    entries: int = Field(description="layers or tensors the files set")
    dropped: list[Dropped] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    usage: str = Field(default="", description="how to hand the files to the vendor tool")


@dataclass
class ExportContext:
    assignment: Assignment
    plan: QuantPlan
    model: ModelIndex
    calibration: CalibrationStats | None = None
    # ONNX node name -> vendor layer name (Hailo renames every layer).
    name_map: Mapping[str, str] | None = None
    run_target: str = ""
    qdq_model: str | None = None
    # The canonical float model, for formats whose tool must quantize that exact graph (ORT).
    canonical: ir.Model | None = None
    # Names the vendor's graph will not contain are errors instead of warnings (--strict).
    strict: bool = False


@dataclass
class Rendered:
    """File texts keyed by suffix (".alls", ".qtable", ...), with what could not be said."""

    texts: dict[str, str]
    entries: int
    dropped: list[Dropped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    usage: str = ""
    # Binary side files (the float model ORT quantizes), keyed by suffix.
    binaries: dict[str, bytes] = field(default_factory=dict)


class VendorFormat(Protocol):
    name: str
    description: str
    # Suffixes of the files written, the first one being the main file.
    suffixes: tuple[str, ...]
    default_target: str
    # Target profiles whose plans this format carries faithfully.
    targets: tuple[str, ...]

    def export(self, ctx: ExportContext) -> Rendered: ...

    def parse(
        self, text: str, source: str, model: ModelIndex, name_map: Mapping[str, str] | None
    ) -> Assignment: ...


F = TypeVar("F", bound=VendorFormat)
_FORMATS: dict[str, VendorFormat] = {}


def register(cls: type[F]) -> type[F]:
    """Class decorator: one instance per format, keyed by its `name`."""
    instance = cls()
    _FORMATS[instance.name] = instance
    return cls


def get_format(name: str) -> VendorFormat:
    if name not in _FORMATS:
        raise UserError(f"unknown vendor format {name!r}", f"use one of: {', '.join(_FORMATS)}")
    return _FORMATS[name]


def list_formats() -> list[VendorFormat]:
    return list(_FORMATS.values())


def unknown_name_error(what: str, name: str, known: Iterable[str], source: str) -> UserError:
    """The one error every importer raises for a name the model lacks, with close matches."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "check the file against the model"
    return UserError(f"{source}: {what} {name!r} is not in the model", hint)


def compact_assignment(modes: Mapping[str, str], target: str, default: str = "a8_w8") -> Assignment:
    """An Assignment listing only the layers whose mode differs from `default`."""
    layers = {name: mode for name, mode in modes.items() if mode != default}
    return Assignment.model_validate({"target": target, "default": default, "layers": layers})


def resolved_modes(assignment: Assignment, names: Iterable[str]) -> dict[str, str]:
    return {name: assignment.mode_name(name) for name in names}
