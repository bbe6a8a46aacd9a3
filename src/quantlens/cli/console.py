"""The terminal: the only place quantlens prints. Progress bars, `say` lines, command records.

Both consoles print text, never rich markup: paths, node names and messages come from users,
and a `[/x]` in one must print as itself (markup would crash on it). Colour goes through
`styled`, which builds a `Text`.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])
ProgressFn = Callable[[int, int], None]
# A flag of `records`: fixed, or decided from the command's parsed options.
ParamsFlag = bool | Callable[[dict[str, Any]], bool]

# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
out = Console(
    highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160
)
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text from plain strings and (text, style) pairs; nothing in them is read as markup."""
    return Text.assemble(*parts)


def say(message: str) -> None:
    err.print(Text(message, style="dim"))


def warn(message: str) -> None:
    """A `warning:` line on stderr: something the user should know, the command goes on."""
    err.print(styled(("warning:", "yellow"), " ", message))


def error_line(message: str) -> None:
    """The one `error:` line of a failed command."""
    err.print(styled(("error:", "red"), " ", message))


def print_json(text: str) -> None:
    out.print(text, markup=False)


# Without a terminal (output to a file, CI), progress is a plain line this often at most.
LOG_EVERY_S = 30.0


@contextmanager
def progress(label: str) -> Iterator[ProgressFn]:
    """A bar on a terminal; elsewhere a log line at the first step, every `LOG_EVERY_S`
    seconds and at the end, so a long run in a log file is never silent."""
    if not err.is_terminal:
        yield _log_lines(label)
        return
    columns = (
        TextColumn(label, markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _log_lines(label: str, clock: Callable[[], float] = time.monotonic) -> ProgressFn:
    """Log lines for one label. A command may count several loops under it (the search: its
    calibrations, fixes, noise, evaluations), so the time left is from the current loop's own
    pace: a loop starts where the count falls back or the total changes (a search once printed
    "1/824 after 12s, about 10163s left" for a 3 s loop). The pace is measured from the loop's
    first reported step on, because that step may carry the loop's setup (an export and a
    session: "1/64 after 280s, about 4978s left" for a loop of 1 s steps)."""
    start = clock()
    last = [-LOG_EVERY_S]
    loop = {"first_at": start, "first_done": 0.0, "done": 0, "total": 0}

    def update(done: int, total: int) -> None:
        now = clock()
        if done < loop["done"] or total != loop["total"] or loop["done"] == 0:
            loop.update(first_at=now, first_done=done, total=total)
        loop.update(done=done)
        elapsed = now - start
        if done < total and done > 1 and elapsed - last[0] < LOG_EVERY_S:
            return
        last[0] = elapsed
        stepped = done - loop["first_done"]
        pace = (now - loop["first_at"]) / stepped if stepped > 0 else 0.0
        left = f", about {pace * (total - done):.0f}s left" if pace > 0 and done < total else ""
        say(f"{label}: {done}/{total} after {elapsed:.0f}s{left}")

    return update


def records(
    folder: str,
    seeds: dict[str, int] | None = None,
    default: ParamsFlag = False,
    reads: ParamsFlag = False,
) -> Callable[[F], F]:
    """Decorate a command that writes into the run folder held by its option `folder` (with
    `default`, None there means runs/<command>; with `reads`, the folder must exist and hold
    one run, not a mix): the command runs under the folder's lock as one unit of writes (see
    `quantlens.artifacts.journal`), and once it succeeds its command line goes into the
    folder's command.json (the report's reproducibility section)."""

    def decorate(command: F) -> F:
        name = command.__name__.removesuffix("_cmd")

        @functools.wraps(command)
        def run(**params: Any) -> Any:
            run_dir = params.get(folder)
            if run_dir is None and _flag(default, params):
                run_dir = Path("runs") / name
                option = "-o" if folder == "output" else f"--{folder}"
                say(f"run folder: {run_dir} (the default; {option} names another)")
            # `-o FILE.json` names a file, not a run folder.
            if not isinstance(run_dir, Path) or run_dir.suffix == ".json":
                return command(**params)
            from quantlens.artifacts.folder import RunFolder
            from quantlens.artifacts.journal import writing
            from quantlens.cli.options import existing_run_dir

            reading = _flag(reads, params)
            if reading:
                existing_run_dir(run_dir)
            with writing(run_dir, name, notify=warn):
                if reading:
                    RunFolder(run_dir).check_whole()
                result = command(**params)
                _record(run_dir, name, params, seeds)
            return result

        return cast(F, run)

    return decorate


def _flag(flag: ParamsFlag, params: dict[str, Any]) -> bool:
    return flag(params) if callable(flag) else flag


def _record(run_dir: Path, name: str, params: dict[str, Any], seeds: dict[str, int] | None) -> None:
    from quantlens.report.provenance import record_command

    program = Path(sys.argv[0]).name
    argv = sys.argv if "quantlens" in program or program == "__main__.py" else None
    if argv is None:  # called in-process (tests): rebuild the line from the parsed options
        options = [f"--{k.replace('_', '-')}={v}" for k, v in params.items() if v]
        argv = ["quantlens", name, *options]
    record_command(run_dir, name, params, seeds, argv)
