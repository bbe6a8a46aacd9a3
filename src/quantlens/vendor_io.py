"""Kept for existing imports: vendor files in and out live in `quantlens.pipeline.export`."""

from quantlens.pipeline.export import (
    export_vendor,
    import_vendor,
    load_name_map,
    load_run,
    quantize_static_kwargs,
    vendor_formats,
)

__all__ = [
    "export_vendor",
    "import_vendor",
    "load_name_map",
    "load_run",
    "quantize_static_kwargs",
    "vendor_formats",
]
