"""What every canonicalization pass reports."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PassReport(BaseModel):
    """One pass's account of itself: whether it changed the graph, and how."""

    name: str
    changed: bool = False
    details: list[str] = Field(default_factory=list)

    def note(self, detail: str) -> None:
        self.changed = True
        self.details.append(detail)

    def summary(self) -> str:
        if not self.changed:
            return f"{self.name}: nothing to do"
        shown = "; ".join(self.details[:3])
        more = f" (+{len(self.details) - 3} more)" if len(self.details) > 3 else ""
        return f"{self.name}: {shown}{more}"
