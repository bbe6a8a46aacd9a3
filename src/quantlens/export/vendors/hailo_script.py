"""The Hailo model-script (.alls) grammar, as far as reading precision modes needs it.

One command per line, Python-call-like (`quantization_param([conv1, conv2], precision_mode=
a16_w16)`), `#` comments, optional `name = command(...)` or `a, b = command(...)` assignments;
layer arguments are bare or scoped names (`net/conv3`), lists `[a, b]` and brace globs
`{conv*}` (vendor-formats.md 1.4).
A call whose brackets are still open at the end of a line continues on the next one, so
hand-wrapped lines read too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantlens.errors import UserError

# `name = cmd(...)` and, as the model zoo's defuse lines do, `a, b, c = cmd(...)`.
_CALL = re.compile(
    r"^(?:[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s*=\s*)?([A-Za-z_]\w*)\s*\((.*)\)$", re.DOTALL
)
_OPEN, _CLOSE = "([{", ")]}"


@dataclass(frozen=True)
class Target:
    """One layer argument: an exact name or a glob (`{...}` in the script)."""

    text: str
    is_glob: bool


@dataclass(frozen=True)
class Command:
    line: int
    name: str
    positional: tuple[str, ...]
    keywords: dict[str, str]


def parse_script(text: str, source: str) -> list[Command]:
    """Every command with the line it starts on; a malformed one is a UserError."""
    commands = []
    for line, statement in _statements(text, source):
        match = _CALL.match(statement)
        if match is None:
            raise _malformed(source, line, statement)
        positional, keywords = _arguments(match.group(2), source, line)
        commands.append(Command(line, match.group(1), tuple(positional), keywords))
    return commands


def parse_targets(argument: str, source: str, line: int) -> list[Target]:
    """`conv1`, `[conv1, {dw*}]` or `{conv*}` as a list of targets."""
    argument = argument.strip()
    items = _split_top(argument[1:-1]) if argument.startswith("[") else [argument]
    if argument.startswith("[") and not argument.endswith("]"):
        raise _malformed(source, line, argument)
    targets = []
    for item in (i.strip() for i in items):
        if item.startswith("{") and item.endswith("}") and len(item) > 2:
            targets.append(Target(item[1:-1].strip(), is_glob=True))
        elif item and not any(c in item for c in "[]{}()=, \t"):
            targets.append(Target(item, is_glob=False))
        else:
            raise UserError(
                f"{source}:{line}: cannot read the layer argument {item!r}",
                "write a name (conv3), a list ([conv1, conv2]) or a glob ({conv*})",
            )
    return targets


def _statements(text: str, source: str) -> list[tuple[int, str]]:
    statements: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        code = _strip_comment(raw).strip()
        if not code:
            continue
        start = start if pending else number
        pending = f"{pending} {code}" if pending else code
        if _depth(pending) <= 0:
            statements.append((start, pending))
            pending = ""
    if pending:
        raise UserError(
            f"{source}:{start}: unclosed bracket in {pending[:60]!r}", "close every ( [ and {"
        )
    return statements


def _strip_comment(line: str) -> str:
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _depth(text: str) -> int:
    return sum(1 for c in text if c in _OPEN) - sum(1 for c in text if c in _CLOSE)


def _arguments(body: str, source: str, line: int) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    keywords: dict[str, str] = {}
    for part in _split_top(body):
        key, sep, value = part.partition("=")
        if sep and re.fullmatch(r"\s*[A-Za-z_]\w*\s*", key) and not key.strip().startswith("{"):
            keywords[key.strip()] = value.strip()
        elif keywords:
            raise _malformed(source, line, body)
        elif part.strip():
            positional.append(part.strip())
    return positional, keywords


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    parts, depth, quoted, current = [], 0, False, ""
    for char in text:
        quoted = not quoted if char == '"' else quoted
        if not quoted:
            depth += (char in _OPEN) - (char in _CLOSE)
        if char == "," and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _malformed(source: str, line: int, text: str) -> UserError:
    return UserError(
        f"{source}:{line}: malformed model-script line {text[:80]!r}",
        "write one command per line, e.g. quantization_param(conv3, precision_mode=a16_w16)",
    )
