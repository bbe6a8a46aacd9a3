"""One writer per run folder: an advisory lock file naming its holder.

The lock is `flock` on `.quantlens.lock` inside the folder, so the kernel drops it when the
holder dies however it dies: a lock file left by a dead process is simply taken over. Where
`flock` is missing (or refused, as on some network file systems) the file's pid is checked
instead. The holder (pid, host, command, start) is written into the file so a second writer
can say who has the folder. Locks are re-entrant within a process: a flow that runs several
stages into one folder takes it once.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from quantlens.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".quantlens.lock"

# Folders this process holds: resolved path -> (open lock file, depth).
_HELD: dict[Path, tuple[Any, int]] = {}


def holder_of(folder: Path) -> dict[str, Any]:
    """What the lock file says about its holder (empty when unreadable)."""
    try:
        data = json.loads((folder / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    command = f" (quantlens {holder['command']}" if holder.get("command") else " ("
    since = time.strftime("%H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
    return f"{who}{command}, since {since})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy(folder: Path) -> UserError:
    return UserError(
        f"run folder {folder} is in use by {_describe(holder_of(folder))}",
        "wait for that run to finish, or write to another folder with -o",
    )


def _try_flock(handle: Any) -> bool | None:
    """True when locked, False when another holder has it, None when flock is unavailable."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _open_locked(folder: Path) -> Any:
    """The lock file, open and held; retried when a releasing holder unlinked it under us."""
    path = folder / LOCK_FILE
    for _ in range(20):
        handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        locked = _try_flock(handle)
        if locked is False:
            handle.close()
            raise _busy(folder)
        if locked is None:
            holder = holder_of(folder)
            same_host = holder.get("host") == socket.gethostname()
            pid = holder.get("pid")
            if isinstance(pid, int) and pid != os.getpid() and same_host and _pid_alive(pid):
                handle.close()
                raise _busy(folder)
        # The holder before us unlinks the file when it lets go: a lock on that old inode
        # would not exclude a writer that creates the file anew.
        try:
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
                return handle
        except FileNotFoundError:
            pass
        handle.close()
    raise _busy(folder)


def acquire(folder: Path, command: str) -> None:
    """Hold `folder` for writing; one `UserError` naming the holder when someone else has it."""
    key = folder.resolve()
    if key in _HELD:
        handle, depth = _HELD[key]
        _HELD[key] = (handle, depth + 1)
        return
    handle = _open_locked(folder)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({**holder, "since": time.time()}))
    handle.flush()
    _HELD[key] = (handle, 1)


def release(folder: Path) -> None:
    key = folder.resolve()
    handle, depth = _HELD[key]
    if depth > 1:
        _HELD[key] = (handle, depth - 1)
        return
    del _HELD[key]
    (folder / LOCK_FILE).unlink(missing_ok=True)
    handle.close()  # closing drops the flock


def held(folder: Path) -> bool:
    """Whether this process holds `folder`."""
    return folder.resolve() in _HELD
