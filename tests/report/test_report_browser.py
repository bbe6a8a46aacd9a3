"""The report in a real browser: Debian's headless Chromium, no network, no extra dependencies.

CI installs `chromium` (see `.ci/run`); elsewhere these tests skip with the reason. A screenshot
of each page goes into the test's tmp folder and, when QUANTLENS_SCREENSHOT_DIR is set, there.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantlens.report.render import render_report
from tests.report.browser import Browser, find_chromium
from tests.report.test_report import build_crafted_run

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium), as CI installs"
)
PLOTS = "document.querySelectorAll('.js-plotly-plot').length"
DRAWN = "document.querySelectorAll('.js-plotly-plot .main-svg .trace').length"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    assert CHROMIUM is not None
    page = Browser(CHROMIUM, tmp_path / "profile")
    # A desktop-sized viewport before the page loads, so plotly sizes its plots for it.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
    )
    yield page
    page.close()


def _open(browser: Browser, html: Path) -> None:
    browser.open(html.resolve().as_uri())
    deadline = time.monotonic() + 20
    while browser.evaluate(DRAWN) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def _screenshot(browser: Browser, tmp_path: Path, name: str) -> Path:
    shot = browser.screenshot(tmp_path / name)
    folder = os.environ.get("QUANTLENS_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / name)
    assert shot.stat().st_size > 10_000
    return shot


def test_crafted_names_run_no_script(browser: Browser, tmp_path: Path) -> None:
    run = build_crafted_run(tmp_path / "crafted")
    html = render_report(run).path
    _open(browser, html)
    # Use the page as a user would: hover and click feed names into plotly and the panels.
    browser.evaluate("document.getElementById('layer-select').dispatchEvent(new Event('change'))")
    assert browser.evaluate("document.title") == "quantlens report"
    assert browser.evaluate("document.body.dataset.pwned === undefined")
    assert browser.evaluate("document.querySelectorAll('img, main svg[onload]').length") == 0
    assert browser.evaluate(PLOTS) == 5 and browser.evaluate(DRAWN) >= 10
    assert browser.evaluate(
        "document.body.textContent.includes(\"<script>document.title='pwned'\")"
    )
    _screenshot(browser, tmp_path, "report-crafted.png")
    assert browser.errors() == []


@pytest.mark.zoo
def test_zoo_report_renders_in_chromium(browser: Browser, tmp_path: Path) -> None:
    from quantlens import api
    from quantlens.analyze import AnalyzeOptions, analyze_model
    from quantlens.data import zoo
    from quantlens.data.render import write_samples
    from quantlens.evaluation import EvalOptions, evaluate_three_way
    from quantlens.quantize import QuantizeOptions, quantize_model

    model = zoo.fetch("pplcnet-orientation")
    calib = write_samples("rotated-pages", 4, tmp_path / "calib", seed=1)
    data = write_samples("rotated-pages", 4, tmp_path / "eval", seed=2)
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    evaluate_three_way(model, data, "classification", EvalOptions(run_dir=run))
    options = AnalyzeOptions(
        calib=calib, target="hailo8", run_dir=run, mode="accumulated", samples=4
    )
    analysis = analyze_model(model, options)
    api.doctor(calib, data).save(run / "doctor.json")
    result = render_report(run)
    assert result.sections == [
        "summary", "noise", "scatter", "graph", "diagnostics", "reproducibility",
    ]  # fmt: skip
    _open(browser, result.path)
    assert browser.evaluate(PLOTS) == 4
    assert browser.evaluate(DRAWN) >= 6  # noise, scatter + diagonal, two histograms, graph
    # Clicking through: a graph node's panel shows the numbers of the layer it belongs to.
    worst = analysis.ranking[0]
    index = [la.id for la in analysis.layers].index(worst)
    browser.evaluate(f"document.getElementById('layer-select').value = '{index}'")
    browser.evaluate("document.getElementById('layer-select').dispatchEvent(new Event('change'))")
    _screenshot(browser, tmp_path, "report-pplcnet-orientation.png")
    assert browser.errors() == []
    print(f"pplcnet-orientation report: {result.bytes / 1e6:.2f} MB, {len(analysis.layers)} layers")
