"""Read whatever artifacts a run folder holds; the report is rendered from these only.

Only artifact schemas are imported here (`quantlens.artifacts`), never a pipeline, so rendering
a report loads neither torch nor ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from quantlens.artifacts.analysis import AnalysisReport
from quantlens.artifacts.calibration import CalibrationStats
from quantlens.artifacts.compare import CompareReport
from quantlens.artifacts.doctor import DoctorReport
from quantlens.artifacts.evaluation import EvalReport
from quantlens.artifacts.folder import ARTIFACT_FILES, RunFolder
from quantlens.artifacts.graph import GraphArtifact
from quantlens.artifacts.provenance import CommandLog
from quantlens.artifacts.quantize import QuantizeReport
from quantlens.artifacts.search import SearchReport
from quantlens.errors import UserError
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan

# Kept under its old name for existing imports.
FILES = ARTIFACT_FILES


@dataclass
class RunArtifacts:
    """Every artifact the report knows; None where the run folder lacks it."""

    folder: Path
    quantize: QuantizeReport | None = None
    eval: EvalReport | None = None
    analysis: AnalysisReport | None = None
    assignment: Assignment | None = None
    plan: QuantPlan | None = None
    calibration: CalibrationStats | None = None
    search: SearchReport | None = None
    compare: CompareReport | None = None
    doctor: DoctorReport | None = None
    graph: GraphArtifact | None = None
    command: CommandLog | None = None

    def present(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "folder" and getattr(self, f.name)]


def load_run(run_dir: Path) -> RunArtifacts:
    """Load the run folder's artifacts; a missing folder or one with none is the user's error."""
    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise UserError(
            f"run folder {folder.path} does not exist",
            "pass the folder `quantlens quantize -o` or `quantlens analyze -o` wrote",
        )
    loaded = {name: folder.read(cls) for name, (_, cls) in ARTIFACT_FILES.items()}
    run = RunArtifacts(folder=folder.path, **loaded)  # type: ignore[arg-type]
    if not run.present() or run.present() == ["command"]:
        names = ", ".join(file for file, _ in ARTIFACT_FILES.values())
        raise UserError(
            f"{folder.path} holds no quantlens artifacts (looked for {names})",
            "run `quantlens quantize`, `analyze`, `eval` or `search` into it first",
        )
    return run
