"""Kept for existing imports: `quantlens demo` lives in `quantlens.pipeline.demo`."""

from quantlens.pipeline.demo import (
    MODEL,
    VENDOR_FORMAT,
    DemoOptions,
    DemoSummary,
    MixedSummary,
    run_demo,
)

__all__ = ["MODEL", "VENDOR_FORMAT", "DemoOptions", "DemoSummary", "MixedSummary", "run_demo"]
