"""Read whatever artifacts a run folder holds; the report is rendered from these only."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from quantlens.analysis.report import AnalysisReport
from quantlens.artifacts import Artifact
from quantlens.calib import CalibrationStats
from quantlens.data.doctor import DoctorReport
from quantlens.errors import UserError
from quantlens.evaluation import EvalReport
from quantlens.quantize import QuantizeReport
from quantlens.report.graph import GraphArtifact
from quantlens.report.provenance import CommandLog
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan
from quantlens.search.artifact import SearchReport

A = TypeVar("A", bound=Artifact)


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
    doctor: DoctorReport | None = None
    graph: GraphArtifact | None = None
    command: CommandLog | None = None

    def present(self) -> list[str]:
        return [f.name for f in fields(self) if f.name != "folder" and getattr(self, f.name)]


FILES: dict[str, tuple[str, type[Artifact]]] = {
    "quantize": ("quantize.json", QuantizeReport),
    "eval": ("eval.json", EvalReport),
    "analysis": ("analysis.json", AnalysisReport),
    "assignment": ("assignment.json", Assignment),
    "plan": ("plan.json", QuantPlan),
    "calibration": ("calibration.json", CalibrationStats),
    "search": ("search.json", SearchReport),
    "doctor": ("doctor.json", DoctorReport),
    "graph": ("graph.json", GraphArtifact),
    "command": ("command.json", CommandLog),
}


def _load(path: Path, cls: type[A]) -> A | None:
    if not path.is_file():
        return None
    try:
        return cls.load(path)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(
            f"cannot read {path}: {where}: {first['msg']}",
            "re-run the command that wrote it with this quantlens version, or delete the file",
        ) from exc


def load_run(run_dir: Path) -> RunArtifacts:
    """Load the run folder's artifacts; a missing folder or one with none is the user's error."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(
            f"run folder {folder} does not exist",
            "pass the folder `quantlens quantize -o` or `quantlens analyze -o` wrote",
        )
    loaded = {name: _load(folder / file, cls) for name, (file, cls) in FILES.items()}
    run = RunArtifacts(folder=folder, **loaded)  # type: ignore[arg-type]
    if not run.present() or run.present() == ["command"]:
        names = ", ".join(file for file, _ in FILES.values())
        raise UserError(
            f"{folder} holds no quantlens artifacts (looked for {names})",
            "run `quantlens quantize`, `analyze`, `eval` or `search` into it first",
        )
    return run
