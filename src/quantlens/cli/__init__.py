"""The `quantlens` command line: the only place that prints or exits.

One module per command group; options shared by commands are declared once in `options`.
Every command ends with a one-line summary; `--json` prints the artifact instead of tables.
Problems with the user's input surface as one `error:` line and exit code 1. Modules here
import pipelines (and so torch) inside the commands that need them, so `--help`, `version`,
`profiles`, `report` and `zoo` start without loading torch.
"""

from __future__ import annotations

import importlib
import sys

from quantlens.cli.app import app
from quantlens.cli.console import err
from quantlens.errors import UserError

__all__ = ["app", "main"]

# Each module registers its commands on the app; this order is the order of `--help`.
COMMAND_MODULES = ("basics", "demo", "quantize", "report", "data", "analyze", "search")
for _name in (*COMMAND_MODULES, "evaluate", "vendor"):
    importlib.import_module(f"quantlens.cli.{_name}")


def main() -> None:
    """Console entry point: user errors become one line and exit code 1, never a traceback."""
    try:
        app()  # standalone mode: exits itself on success and on usage errors
    except UserError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
