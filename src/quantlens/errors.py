"""Errors shared by every layer.

`UserError` is a problem with the user's input (file, flag, data): the CLI prints its message as
one line and exits with code 1. Anything else that escapes is a bug in quantlens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix in one line."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class UnsupportedOpError(UserError):
    """The model uses an operator the emulator has no kernel for."""

    def __init__(self, op_type: str, node: str, domain: str = "", opset: int | None = None) -> None:
        where = f"{domain}::{op_type}" if domain else op_type
        version = f" (opset {opset})" if opset is not None else ""
        super().__init__(
            f"unsupported op {where}{version} at node {node!r}",
            "run `quantlens inspect` to list every unsupported node, and open an issue with the "
            "model so a kernel can be added",
        )
        self.op_type = op_type
        self.node = node


class InvariantError(RuntimeError):
    """An internal consistency check failed: a bug in quantlens, not in the input."""


def validation_problem(exc: Any) -> str:
    """The first problem of a pydantic `ValidationError` as `where: what` (typed loosely so this
    layer-0 module imports no pydantic)."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def read_user_text(path: str | Path, what: str, fix: str) -> str:
    """The text of a file the user named (`what`: "labels file", ...): unreadable or not UTF-8
    is one `UserError` naming the file, never an `OSError` or `UnicodeDecodeError`."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError as exc:
        raise UserError(f"{what} {path} is a folder", fix) from exc
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}", fix) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte {exc.start})", "save it as UTF-8"
        ) from exc


class PluginError(UserError):
    """A user's plug-in (a `file.py:name` evaluator or post-process) failed: the problem is in
    that file, so the message names it and the line, not quantlens."""

    @classmethod
    def raised(cls, exc: BaseException, file: Path, call: str) -> PluginError:
        line = _plugin_line(exc, file)
        where = f"{file}:{line}" if line is not None else str(file)
        return cls(
            f"plug-in {where} raised {type(exc).__name__} in {call}: {exc}",
            "fix the plug-in; quantlens only called it",
        )


def _plugin_line(exc: BaseException, file: Path) -> int | None:
    """The last line of `file` in the traceback (where the plug-in itself failed)."""
    target, line, tb = file.resolve(), None, exc.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == target:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
