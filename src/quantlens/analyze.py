"""Kept for existing imports: the analyze stage lives in `quantlens.pipeline.analyze`."""

from quantlens.cli.analyze import render_table
from quantlens.pipeline.analyze import (
    MODES,
    AnalyzeOptions,
    Setup,
    analyze_model,
    assemble,
    modes_for,
    prepare_analysis,
)

__all__ = [
    "MODES",
    "AnalyzeOptions",
    "Setup",
    "analyze_model",
    "assemble",
    "modes_for",
    "prepare_analysis",
    "render_table",
]
