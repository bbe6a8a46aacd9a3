"""The search artifact (kept here for existing imports; the schema lives in `artifacts`)."""

from quantlens.artifacts.search import GroupInfo, SearchGoal, SearchPoint, SearchReport

__all__ = ["GroupInfo", "SearchGoal", "SearchPoint", "SearchReport"]
