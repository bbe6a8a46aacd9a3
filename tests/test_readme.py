"""The README stays true: every `quantlens` example uses a real command and real options."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantlens.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _examples() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        for part in line.split("&&"):
            words = shlex.split(part.strip())
            if words and words[0].endswith("quantlens"):
                commands.append(words[1:])
    return commands


def _subcommand(words: list[str]) -> list[str]:
    groups = {"zoo", "data"}
    return words[:2] if words and words[0] in groups else words[:1]


def test_readme_has_examples_for_every_command() -> None:
    used = {" ".join(_subcommand(w)) for w in _examples()}
    expected = {
        "inspect",
        "check",
        "profiles",
        "quantize",
        "doctor",
        "data make",
        "zoo list",
        "zoo fetch",
        "search",
        "report",
    }
    assert expected <= used, expected - used


@functools.cache
def _help(sub: tuple[str, ...]) -> str:
    # Wide columns so rich does not wrap or elide option names.
    result = CliRunner().invoke(app, [*sub, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("words", _examples(), ids=lambda w: " ".join(w)[:60])
def test_readme_example_options_exist(words: list[str]) -> None:
    sub = tuple(_subcommand(words))
    for option in (w.split("=")[0] for w in words if w.startswith("-")):
        assert option in _help(sub), f"{' '.join(sub)} has no option {option}"


def test_readme_plugin_evaluator_runs(tmp_path: Path) -> None:
    import numpy as np
    import onnx

    from quantlens.evaluation import EvalOptions, evaluate_three_way
    from tests.models import conv_bn_model

    code = re.search(r"```python\n(# my_eval\.py\n.*?)```", README.read_text(), flags=re.S)
    assert code is not None
    plugin = tmp_path / "my_eval.py"
    plugin.write_text(code.group(1))
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        x = np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.savez(data / f"{i}.npz", x=x)
    report = evaluate_three_way(model, data, f"{plugin}:make_evaluator", EvalOptions())
    assert report.float_vs_gt is not None and "mean" in report.float_vs_gt
