"""The calibration-set diagnostics artifact (`doctor.json`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact


class Warning_(BaseModel):
    code: str
    message: str
    why: str
    fix: str
    files: list[str] = Field(default_factory=list)


class DoctorReport(Artifact):
    kind = "doctor"
    calib: str
    data: str | None = None
    samples: int
    checks: list[str]
    warnings: list[Warning_] = Field(default_factory=list)
