"""The top floor's import rules: stages never import each other; the report reads artifact
schemas only; nothing below the pipeline imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import quantlens

PACKAGE = Path(quantlens.__file__).parent
STAGES = ("inspect", "check", "doctor", "quantize", "analyze", "evaluate", "search", "export")
SHARED = ("session", "calibration", "tasks")  # what every stage may use
COMPOSERS = ("flows", "demo")  # runs of several stages
# Modules kept at the package root for existing imports: they only re-export the pipeline.
SHIMS = ("api", "quantize", "analyze", "evaluation", "search_run", "vendor_io", "demo")


def _imports(path: Path) -> set[str]:
    """Every quantlens module `path` imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("quantlens"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("quantlens"))
    return found


def test_stages_never_import_each_other() -> None:
    for stage in STAGES:
        imported = _imports(PACKAGE / "pipeline" / f"{stage}.py")
        others = {f"quantlens.pipeline.{name}" for name in (*STAGES, *COMPOSERS) if name != stage}
        assert not imported & others, (stage, imported & others)


def test_shared_pipeline_modules_import_no_stage() -> None:
    for name in SHARED:
        imported = _imports(PACKAGE / "pipeline" / f"{name}.py")
        stages = {f"quantlens.pipeline.{s}" for s in (*STAGES, *COMPOSERS)}
        assert not imported & stages, (name, imported & stages)


def test_report_imports_no_pipeline() -> None:
    for path in (PACKAGE / "report").glob("*.py"):
        imported = _imports(path)
        pipelines = {f"quantlens.{name}" for name in SHIMS} | {"quantlens.pipeline"}
        bad = {m for m in imported if m in pipelines or m.startswith("quantlens.pipeline")}
        assert not bad, (path.name, bad)


def test_layers_below_the_pipeline_do_not_import_it() -> None:
    below = ("artifacts", "ir", "schemes", "emulate", "calib", "data", "evaluate", "analysis")
    below += ("search", "export", "fixes", "report")
    for package in below:
        for path in (PACKAGE / package).rglob("*.py"):
            imported = _imports(path)
            bad = {m for m in imported if m.startswith(("quantlens.pipeline", "quantlens.cli"))}
            bad |= {m for m in imported if m in {f"quantlens.{name}" for name in SHIMS}}
            assert not bad, (str(path.relative_to(PACKAGE)), bad)
