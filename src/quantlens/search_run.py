"""Kept for existing imports: the search stage lives in `quantlens.pipeline.search`, the search
with its export in `quantlens.pipeline.flows`."""

from quantlens.pipeline.flows import search_model
from quantlens.pipeline.search import (
    DEFAULT_MIN_SNR,
    DEFAULT_RECOVERY,
    Planner,
    SearchOptions,
    Setup,
    explain,
    pareto,
    prepare_search,
)

__all__ = [
    "DEFAULT_MIN_SNR",
    "DEFAULT_RECOVERY",
    "Planner",
    "SearchOptions",
    "Setup",
    "explain",
    "pareto",
    "prepare_search",
    "search_model",
]
