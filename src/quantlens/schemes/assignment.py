"""The Assignment: which precision mode each layer runs in.

Resolution order for a layer id: an exact entry in `layers`, then the first matching glob in
`patterns` (fnmatch syntax, in order), then `default`. It is the central artifact: analysis,
search, every exporter and every importer speak it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable

from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact
from quantlens.errors import UserError
from quantlens.schemes.modes import ModeName, PrecisionMode, get_mode


class PatternRule(BaseModel):
    pattern: str
    mode: ModeName


class Assignment(Artifact):
    kind = "assignment"
    target: str = "ort-cpu"
    default: ModeName = "a8_w8"
    patterns: list[PatternRule] = Field(default_factory=list)
    layers: dict[str, ModeName] = Field(default_factory=dict)

    def mode_name(self, layer_id: str) -> str:
        if layer_id in self.layers:
            return self.layers[layer_id]
        for rule in self.patterns:
            if fnmatch.fnmatchcase(layer_id, rule.pattern):
                return rule.mode
        return self.default

    def mode_for(self, layer_id: str) -> PrecisionMode:
        return get_mode(self.mode_name(layer_id))

    def with_layers(self, updates: dict[str, ModeName]) -> Assignment:
        return self.model_copy(update={"layers": {**self.layers, **updates}})

    def check_layers(self, known: Iterable[str]) -> None:
        """Every exact name must exist and every pattern must match something."""
        names = list(known)
        present = set(names)
        for name in self.layers:
            if name not in present:
                close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
                hint = f"did you mean {', '.join(close)}?" if close else "run `quantlens inspect`"
                raise UserError(f"the assignment names layer {name!r}, which the model lacks", hint)
        for rule in self.patterns:
            if not any(fnmatch.fnmatchcase(n, rule.pattern) for n in names):
                raise UserError(
                    f"assignment pattern {rule.pattern!r} matches no layer",
                    "fix the pattern; layer ids are node names (see `quantlens inspect`)",
                )
