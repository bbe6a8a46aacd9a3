"""Vendor formats: the plan as the chip's own files, and those files back as an Assignment.

Importing this package registers every format; `get_format(name)` returns one.
"""

from quantlens.export.vendors import hailo, ort, qualcomm, tpu_mlir
from quantlens.export.vendors.base import (
    Dropped,
    ExportContext,
    ExportResult,
    ModelIndex,
    Rendered,
    VendorFormat,
    get_format,
    list_formats,
)

__all__ = [
    "Dropped",
    "ExportContext",
    "ExportResult",
    "ModelIndex",
    "Rendered",
    "VendorFormat",
    "get_format",
    "hailo",
    "list_formats",
    "ort",
    "qualcomm",
    "tpu_mlir",
]
