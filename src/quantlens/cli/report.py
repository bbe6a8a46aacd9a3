"""`quantlens report`: one self-contained HTML page from a run folder (no torch needed)."""

from __future__ import annotations

from quantlens.cli.app import app
from quantlens.cli.console import out
from quantlens.cli.options import OutputOpt, RunDirArg, output_file


@app.command()
def report(
    run_dir: RunDirArg,
    output: OutputOpt = None,
) -> None:
    """One self-contained HTML page from the run folder's artifacts; works offline."""
    from quantlens.report.render import render_report

    result = render_report(run_dir, None if output is None else output_file(output, "report.html"))
    out.print(result.summary, markup=False)
    mb, plotly_mb = result.bytes / 1e6, result.plotly_bytes / 1e6
    out.print(
        f"report: {len(result.sections)} sections ({', '.join(result.sections)}), {mb:.1f} MB "
        f"({plotly_mb:.1f} MB of it plotly.js) -> {result.path}",
        markup=False,
    )
