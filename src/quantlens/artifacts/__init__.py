"""Versioned, JSON-serialisable artifacts and atomic writes.

Every stage writes its result into the run folder through `write_json_atomic`, so a crash never
leaves a half-written file and a finished stage survives a later one failing.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from quantlens.errors import UserError

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
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {path}: {exc}", "pass a file quantlens wrote") from exc
        if not isinstance(data, dict) or data.pop("kind", cls.kind) != cls.kind:
            raise UserError(f"{path} is not a {cls.kind} artifact", f"pass a {cls.kind} JSON file")
        cls.check_version(path, data.get("schema_version", 1))
        return cls.model_validate(data)

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


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
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
