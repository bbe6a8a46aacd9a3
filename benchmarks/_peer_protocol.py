"""The line protocol between a benchmark and a peer's worker running in the peer's own venv.

The worker asks the caller for a task metric (one JSON line on the original stdout) and reads
the reply (one JSON line on stdin); everything the peer library prints goes to stderr. Standard
library only: it is imported by workers in NNCF's and AIMET's venvs.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


class Protocol:
    """Requests on the original stdout, replies on stdin; fd 1 then points at stderr."""

    def __init__(self) -> None:
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.out.write(json.dumps(message) + "\n")
        line = sys.stdin.readline()
        if not line:
            raise RuntimeError("the caller closed the protocol")
        return json.loads(line)

    def tell(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message) + "\n")


def last_json(stdout: str) -> dict[str, Any] | None:
    """The last line of a worker's output that is a JSON object (its report), if any."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
