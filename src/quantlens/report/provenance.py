"""`command.json`: every quantlens command that wrote into a run folder, for reproducibility.

The CLI appends one entry per finished command (argv, parameters, seeds, time, versions), so the
report can say exactly how the run folder's artifacts were made.
"""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from quantlens import __version__
from quantlens.artifacts.provenance import CommandEntry, CommandLog
from quantlens.errors import UserError

VERSIONED = ("torch", "onnxruntime", "onnx", "onnx-ir", "numpy")


def versions() -> dict[str, str]:
    found = {"quantlens": __version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def record_command(
    run_dir: Path,
    command: str,
    params: Mapping[str, object] | None = None,
    seeds: Mapping[str, int] | None = None,
    argv: Sequence[str] | None = None,
) -> Path:
    """Append this command to `run_dir/command.json` (created if missing)."""
    path = Path(run_dir) / "command.json"
    try:
        log = CommandLog.load(path) if path.exists() else CommandLog()
    except (UserError, ValueError):
        log = CommandLog()  # a damaged log is replaced rather than blocking the command
    words = list(sys.argv if argv is None else argv)
    entry = CommandEntry(
        command=command,
        argv=["quantlens", *words[1:]] if words else ["quantlens", command],
        params={k: str(v) for k, v in (params or {}).items() if v is not None},
        seeds=dict(seeds or {}),
        time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=versions(),
    )
    log.commands.append(entry)
    return log.save(path)
