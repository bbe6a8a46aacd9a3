"""`command.json`: every quantlens command that wrote into a run folder, for reproducibility."""

from __future__ import annotations

import shlex

from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact


class CommandEntry(BaseModel):
    command: str = Field(description="the subcommand, e.g. quantize")
    argv: list[str]
    params: dict[str, str] = Field(default_factory=dict, description="every option as parsed")
    seeds: dict[str, int] = Field(default_factory=dict)
    time: str = Field(description="UTC, ISO 8601, when the command finished")
    versions: dict[str, str] = Field(default_factory=dict)

    def line(self) -> str:
        return shlex.join(self.argv)


class CommandLog(Artifact):
    kind = "command"
    commands: list[CommandEntry] = Field(default_factory=list)
