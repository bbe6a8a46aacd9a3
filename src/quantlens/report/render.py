"""Render the run folder into one self-contained HTML page (plotly.js inline, no network).

Model-derived strings reach the page two ways, both escaped: through jinja2 with autoescape, and
inside one JSON data block whose `<`, `>`, `&` and line separators are written as \\u escapes.
A Content-Security-Policy allows only the page's own scripts (by hash) and no network at all, so
even a missed escape could not run an injected script or load anything.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from quantlens.artifacts import write_text_atomic
from quantlens.report import sections
from quantlens.report.compare import compare_section
from quantlens.report.run import RunArtifacts, load_run

_JSON_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


@dataclass
class ReportResult:
    path: Path
    sections: list[str]
    bytes: int
    plotly_bytes: int
    summary: str


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element: nothing in it can close the element or start HTML."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.translate(_JSON_ESCAPES)


@cache
def plotly_js() -> str:
    """The plotly.min.js bundled in the plotly wheel (embedded, so the page works offline)."""
    bundled = resources.files("plotly") / "package_data" / "plotly.min.js"
    if bundled.is_file():
        return bundled.read_text(encoding="utf-8")
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _asset(name: str) -> str:
    return (resources.files("quantlens.report") / "templates" / name).read_text(encoding="utf-8")


def _csp_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def build_context(run: RunArtifacts) -> dict[str, Any]:
    """The template's variables: escaped-by-jinja tables, and `data` for the page's script."""
    data: dict[str, Any] = {}
    context: dict[str, Any] = {
        "folder": str(run.folder),
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "summary": sections.summary_section(run),
        "diagnostics": sections.diagnostics_section(run),
        "compare": compare_section(run.compare),
        "repro": sections.reproducibility_section(run),
    }
    if run.analysis is not None:
        data["layers"] = sections.layers_data(run.analysis)
        context["flagged"] = sections.flagged_rows(run.analysis)
        plots, choices = sections.scatter_data(run.analysis)
        if choices:
            data["plots"] = plots
            context["layer_choices"] = choices
    if run.search is not None and run.search.points:
        data["search"] = sections.search_data(run.search)
        context["pareto_rows"] = sections.pareto_rows(run.search)
        context["search_cost"] = sections.cost_wording(run.search)
    graph = sections.graph_data(run)
    if graph is not None:
        data["graph"] = graph
    context["data"] = data
    return context


def section_names(context: dict[str, Any]) -> list[str]:
    data = context["data"]
    present = {
        "summary": True,
        "noise": "layers" in data,
        "scatter": "plots" in data,
        "search": "search" in data,
        "graph": "graph" in data,
        "diagnostics": context["diagnostics"] is not None,
        "compare": context["compare"] is not None,
        "reproducibility": True,
    }
    return [name for name, shown in present.items() if shown]


def render_html(run: RunArtifacts) -> tuple[str, list[str]]:
    context = build_context(run)
    names = section_names(context)
    app_js, plotly = _asset("report.js"), plotly_js()
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("quantlens.report", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )
    template = env.get_template("report.html.j2")
    html = template.render(
        **context,
        sections=names,
        data_json=script_json(context["data"]),
        plotly_js=plotly,
        app_js=app_js,
        css=_asset("report.css"),
        csp_scripts=" ".join(_csp_hash(s) for s in (plotly, app_js)),
    )
    return html, names


def render_report(run_dir: Path, output: Path | None = None) -> ReportResult:
    """Render `run_dir`'s artifacts to `output` (default: RUN_DIR/report.html)."""
    run = load_run(run_dir)
    html, names = render_html(run)
    path = write_text_atomic(output or Path(run_dir) / "report.html", html)
    size = len(html.encode("utf-8"))
    return ReportResult(
        path=path,
        sections=names,
        bytes=size,
        plotly_bytes=len(plotly_js().encode("utf-8")),
        summary=sections.verdict(run),
    )
