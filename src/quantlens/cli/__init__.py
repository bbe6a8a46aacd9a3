"""The `quantlens` command line: the only place that prints or exits.

One module per command group; options shared by commands are declared once in `options`.
Every command ends with a one-line summary; `--json` prints the artifact instead of tables.
Problems with the user's input surface as one `error:` line and exit code 1. Modules here
import pipelines (and so torch) inside the commands that need them, so `--help`, `version`,
`profiles`, `report` and `zoo` start without loading torch.
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Sequence

import typer
from pydantic import ValidationError

from quantlens.cli.app import app
from quantlens.cli.console import err, error_line
from quantlens.errors import UserError, validation_problem

try:  # typer vendors click from 0.2x on; older ones depend on it
    from typer._click import exceptions as click
except ImportError:  # pragma: no cover
    from click import exceptions as click  # type: ignore[no-redef]

__all__ = ["app", "main", "run"]

# Each module registers its commands on the app; this order is the order of `--help`.
COMMAND_MODULES = ("basics", "demo", "quantize", "report", "data", "analyze", "search")
for _name in (*COMMAND_MODULES, "evaluate", "vendor", "compare"):
    importlib.import_module(f"quantlens.cli.{_name}")

# Exit codes (README "Errors and exit codes").
EXIT_USER_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main() -> None:
    """Console entry point."""
    sys.exit(run())


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command line and return its exit code (tests call this in-process).

    The one boundary for bad input: a usage error (unknown option, bad or missing value) is one
    `error:` line and exit 2; a problem with the user's files, data or values (`UserError`,
    and any unreadable path, non-UTF-8 file or invalid JSON shape that got past the checks) is
    one `error:` line and exit 1. Anything else is a bug in quantlens and keeps its traceback.
    """
    args = list(argv) if argv is not None else None
    try:
        code = app(args=args, prog_name="quantlens", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        err.print(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        return EXIT_USAGE
    except click.UsageError as exc:
        return _usage_error(exc)
    except click.ClickException as exc:
        error_line(exc.format_message())
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except UserError as exc:
        error_line(str(exc))
        return EXIT_USER_ERROR
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
            return EXIT_USER_ERROR  # the reader went away (`| head`): nothing to say
        error_line(_input_problem(exc))
        return EXIT_USER_ERROR
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into this code, silently
        err.print("interrupted")
    return code if isinstance(code, int) else 0


def _usage_error(exc: click.UsageError) -> int:
    command = exc.ctx.command_path if exc.ctx is not None else "quantlens"
    error_line(f"{exc.format_message().rstrip('.')}; see `{command} --help`")
    return EXIT_USAGE


def _input_problem(exc: OSError | UnicodeDecodeError | ValidationError) -> str:
    """One line for an input problem that escaped the checks where inputs enter."""
    if isinstance(exc, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({exc.reason}); save it as UTF-8"
    if isinstance(exc, ValidationError):
        return f"invalid {exc.title}: {validation_problem(exc)}; fix the file or option"
    where = exc.filename if exc.filename is not None else "a path"
    other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    why = exc.strerror or type(exc).__name__
    return f"cannot use {where}{other}: {why}; check the path, its type and its permissions"
