"""`quantlens report`: one self-contained HTML page from a run folder (no torch needed)."""

from __future__ import annotations

from quantlens.cli.app import app
from quantlens.cli.console import out, warn
from quantlens.cli.options import OutputOpt, RunDirArg, existing_run_dir, output_file


@app.command()
def report(
    run_dir: RunDirArg,
    output: OutputOpt = None,
) -> None:
    """One self-contained HTML page from the run folder's artifacts; works offline."""
    from quantlens.artifacts.folder import RunFolder
    from quantlens.artifacts.journal import reading
    from quantlens.report.render import render_report

    # Under the folder's lock: a killed writer's leftovers are rolled back first, a writer at
    # work is named, and a folder mixing runs is refused rather than rendered.
    with reading(existing_run_dir(run_dir), "report", notify=warn):
        RunFolder(run_dir).check_whole()
        target = None if output is None else output_file(output, "report.html")
        result = render_report(run_dir, target)
    out.print(result.summary, markup=False)
    mb, plotly_mb = result.bytes / 1e6, result.plotly_bytes / 1e6
    out.print(
        f"report: {len(result.sections)} sections ({', '.join(result.sections)}), {mb:.1f} MB "
        f"({plotly_mb:.1f} MB of it plotly.js) -> {result.path}",
        markup=False,
    )
