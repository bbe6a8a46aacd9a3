"""Versioned, JSON-serialisable artifacts and atomic writes.

Every stage writes its result into the run folder through `write_text_atomic`, so a crash never
leaves a half-written file and a finished stage survives a later one failing. Files get the
modes the umask gives (mkstemp's 0600 would hide a run from a colleague). Every completed write
passes `write_boundary`, the one place the fault tests inject a kill.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from quantlens.errors import UserError, read_user_text, validation_problem

A = TypeVar("A", bound="Artifact")


class Artifact(BaseModel):
    """Base of every artifact: carries its kind and schema version for later readers."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str] = "artifact"
    schema_version: int = 1

    def to_json(self) -> str:
        payload = {"kind": self.kind, **self.model_dump(mode="json")}
        return json.dumps(_finite(payload), indent=2, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls: type[A], path: str | Path) -> A:
        """The artifact in `path`; any problem with the file (unreadable, not UTF-8, not JSON,
        the wrong shape or values) is one `UserError` naming the file."""
        data = read_json(path, f"pass a {cls.kind} JSON file quantlens wrote")
        if not isinstance(data, dict) or data.pop("kind", cls.kind) != cls.kind:
            raise UserError(f"{path} is not a {cls.kind} artifact", f"pass a {cls.kind} JSON file")
        cls.check_version(path, data.get("schema_version", 1))
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise UserError(
                f"cannot read {path}: {validation_problem(exc)}",
                f"fix the file or pass a {cls.kind} JSON file quantlens wrote",
            ) from exc

    @classmethod
    def check_version(cls, path: str | Path, found: object) -> None:
        """A file of another schema version would fail validation somewhere deep, or worse pass
        with the wrong meaning: refuse it with one line naming both versions."""
        current = cls.model_fields["schema_version"].default
        if found == current:
            return
        age = "an older" if isinstance(found, int) and found < current else "another"
        raise UserError(
            f"{path} is a {cls.kind} artifact of schema version {found}, written by {age} "
            f"quantlens; this one reads version {current}",
            "re-run the command that wrote it with this quantlens version",
        )


def read_json(path: str | Path, fix: str) -> Any:
    """JSON from a file the user named: unreadable, not UTF-8 or not JSON is one clear line."""
    text = read_user_text(path, "file", fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"cannot read {path}: not valid JSON ({exc})", fix) from exc


def write_boundary(path: Path) -> None:
    """Called after every file a run writes has reached its name. The fault tests replace it to
    kill a run at each boundary; `QUANTLENS_KILL_AFTER_WRITES=N` does it for real in a child
    process (hard exit, no cleanup), so a kill at any write is reproducible."""
    limit = os.environ.get("QUANTLENS_KILL_AFTER_WRITES")
    if limit is None:
        return
    _WRITES[0] += 1
    if _WRITES[0] >= int(limit):
        os._exit(137)


_WRITES = [0]


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give: 0666 less the umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    # Linux shows the umask without changing it; elsewhere set-and-restore (a thread creating
    # a file in between would get umask 0, so this is the fallback only).
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_file(tmp: str | Path, target: str | Path) -> Path:
    """Move a finished temporary file onto `target` with normal modes (one write boundary)."""
    os.chmod(tmp, file_mode())
    os.replace(tmp, target)
    write_boundary(Path(target))
    return Path(target)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    target = Path(path)
    if target.is_dir():
        raise UserError(f"cannot write {target}: it is a folder", "pass a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UserError(
            f"cannot write {target}: {exc.filename or target.parent} is not a folder",
            "pass a path whose parent folders are folders",
        ) from exc
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        replace_file(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _finite(data: Any) -> Any:
    """Strict JSON has no inf/nan: write them as the strings pydantic reads back as floats
    (an SNR of two identical tensors is +inf dB)."""
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if math.isnan(data) else ("Infinity" if data > 0 else "-Infinity")
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_finite(value) for value in data]
    return data
