"""The analysis artifact (kept here for existing imports; the schema lives in `artifacts`)."""

from quantlens.artifacts.analysis import (
    AnalysisReport,
    Diagnostics,
    GradientNoise,
    IsolatedNoise,
    LayerAnalysis,
    Suggestion,
)

__all__ = [
    "AnalysisReport",
    "Diagnostics",
    "GradientNoise",
    "IsolatedNoise",
    "LayerAnalysis",
    "Suggestion",
]
