"""The run folder: every artifact's file name and schema in one place.

Stages write into a run folder and later stages (and the report) read from it. Names are kept
here, not as string literals across the pipelines, so a stage can be cached, resumed and
re-rendered by anyone holding a `RunFolder`. Reads check the artifact's schema version and turn
a mismatch or a damaged file into one clear `UserError`. Commands write a folder as one unit
under its lock (`quantlens.artifacts.journal`); `check_whole` refuses a folder whose artifacts
the manifest does not vouch for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from quantlens.artifacts import Artifact, journal, write_text_atomic
from quantlens.artifacts.analysis import AnalysisReport
from quantlens.artifacts.calibration import CalibrationStats
from quantlens.artifacts.compare import CompareReport
from quantlens.artifacts.doctor import DoctorReport
from quantlens.artifacts.evaluation import EvalReport
from quantlens.artifacts.graph import GraphArtifact
from quantlens.artifacts.provenance import CommandLog
from quantlens.artifacts.quantize import QuantizeReport
from quantlens.artifacts.search import SearchReport
from quantlens.errors import UserError
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.qparams import QuantPlan

A = TypeVar("A", bound=Artifact)

# Report field name -> (file name, schema); the order is the report's reading order.
ARTIFACT_FILES: dict[str, tuple[str, type[Artifact]]] = {
    "quantize": ("quantize.json", QuantizeReport),
    "eval": ("eval.json", EvalReport),
    "analysis": ("analysis.json", AnalysisReport),
    "assignment": ("assignment.json", Assignment),
    "plan": ("plan.json", QuantPlan),
    "calibration": ("calibration.json", CalibrationStats),
    "search": ("search.json", SearchReport),
    "compare": ("compare.json", CompareReport),
    "doctor": ("doctor.json", DoctorReport),
    "graph": ("graph.json", GraphArtifact),
    "command": ("command.json", CommandLog),
}
FILE_OF: dict[type[Artifact], str] = {cls: name for name, cls in ARTIFACT_FILES.values()}


class RunFolder:
    """A run folder on disk: typed reads and writes of its artifacts, paths of its other files."""

    # Files that are not JSON artifacts.
    CALIBRATION_KEY = "calibration.key"
    QDQ_MODEL = "model.qdq.onnx"
    # The float graph the plan names (canonicalized, after graph passes and weight fixes);
    # written by every `quantize`, so later stages never re-derive or guess the model.
    CANONICAL_MODEL = "model.canonical.onnx"
    # Only when graph passes or fixes changed the model (kept for `eval --run` and older folders).
    OPTIMIZED_MODEL = "model.float.onnx"
    ASSIGNMENT_REQUEST = "assignment.request.json"
    SEARCH_CACHE = "search-cache"
    # Calibrations per context and grid, reused by later stages in the folder.
    CALIBRATION_CACHE = "calibration-cache"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, cls: type[Artifact]) -> Path:
        """Where the artifact of schema `cls` lives in this folder."""
        return self.path / FILE_OF[cls]

    def has(self, cls: type[Artifact]) -> bool:
        return self.file(cls).is_file()

    def read(self, cls: type[A]) -> A | None:
        """The artifact, or None when the folder lacks it."""
        path = self.file(cls)
        return load_artifact(path, cls) if path.is_file() else None

    def require(self, cls: type[A], writer: str = "quantlens quantize") -> A:
        """The artifact; a missing one is the user's error, naming the command that writes it."""
        found = self.read(cls)
        if found is None:
            raise UserError(
                f"{self.file(cls)} is missing", f"pass a run folder written by `{writer}`"
            )
        return found

    def write(self, artifact: Artifact) -> Path:
        return artifact.save(self.file(type(artifact)))

    def model_file(self, name: str) -> Path:
        return self.path / name

    @property
    def qdq_model(self) -> Path:
        return self.path / self.QDQ_MODEL

    @property
    def canonical_model(self) -> Path:
        return self.path / self.CANONICAL_MODEL

    @property
    def optimized_model(self) -> Path:
        return self.path / self.OPTIMIZED_MODEL

    @property
    def calibration_key(self) -> Path:
        return self.path / self.CALIBRATION_KEY

    def read_calibration_key(self) -> str | None:
        """The context `calibration.json` was made in, or None unless the key file also holds
        the hash of exactly the `calibration.json` beside it: a key alone could vouch for ranges
        another (killed or edited) run left there."""
        key, stats = self.calibration_key, self.file(CalibrationStats)
        try:
            lines = key.read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError):
            return None
        if len(lines) != 2 or not stats.is_file():
            return None
        return lines[0] if lines[1] == journal.sha256_of(stats) else None

    def write_calibration_key(self, key: str) -> Path:
        """Written after `calibration.json`: the context and the hash of that file."""
        digest = journal.sha256_of(self.file(CalibrationStats))
        return write_text_atomic(self.calibration_key, f"{key}\n{digest}\n")

    @property
    def manifest(self) -> Path:
        return self.path / journal.MANIFEST

    def check_whole(self) -> None:
        """Refuse a folder holding artifacts its manifest does not vouch for (a mix of runs)."""
        names = [name for name, _ in ARTIFACT_FILES.values()]
        names += [self.CALIBRATION_KEY, self.QDQ_MODEL, self.CANONICAL_MODEL, self.OPTIMIZED_MODEL]
        wrong = journal.mixed_files(self.path, names)
        if wrong:
            raise UserError(
                f"run folder {self.path} mixes runs: {', '.join(wrong)} changed after the "
                f"command that wrote the folder (see {journal.MANIFEST})",
                "re-run the commands into a fresh folder with -o",
            )

    @property
    def calibration_cache(self) -> Path:
        return self.path / self.CALIBRATION_CACHE

    @property
    def search_cache(self) -> Path:
        return self.path / self.SEARCH_CACHE


def load_artifact(path: Path, cls: type[A]) -> A:
    """`cls.load`: schema and validation problems are one line that says what to do."""
    return cls.load(path)
