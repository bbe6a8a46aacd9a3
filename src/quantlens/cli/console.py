"""The terminal: the only place quantlens prints. Progress bars, `say` lines, command records."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

F = TypeVar("F", bound=Callable[..., Any])
ProgressFn = Callable[[int, int], None]

# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


def print_json(text: str) -> None:
    out.print(text, markup=False)


@contextmanager
def progress(label: str) -> Iterator[ProgressFn]:
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def records(folder: str, seeds: dict[str, int] | None = None) -> Callable[[F], F]:
    """Decorate a command that writes into the run folder held by its option `folder`: once it
    succeeds, its command line goes into that folder's command.json (the report's
    reproducibility section)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(**params: Any) -> Any:
            result = command(**params)
            run_dir = params.get(folder)
            # `-o FILE.json` names a file, not a run folder: nothing to record then.
            if isinstance(run_dir, Path) and run_dir.suffix != ".json" and run_dir.is_dir():
                _record(run_dir, command.__name__.removesuffix("_cmd"), params, seeds)
            return result

        return cast(F, run)

    return decorate


def _record(run_dir: Path, name: str, params: dict[str, Any], seeds: dict[str, int] | None) -> None:
    from quantlens.report.provenance import record_command

    program = Path(sys.argv[0]).name
    argv = sys.argv if "quantlens" in program or program == "__main__.py" else None
    if argv is None:  # called in-process (tests): rebuild the line from the parsed options
        options = [f"--{k.replace('_', '-')}={v}" for k, v in params.items() if v]
        argv = ["quantlens", name, *options]
    record_command(run_dir, name, params, seeds, argv)
