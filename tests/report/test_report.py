"""The HTML report: rendered from artifacts only, sections omitted when missing, escaped, small."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantlens.analysis.metrics import NoiseStats, Scatter, ValueHistogram
from quantlens.analysis.report import AnalysisReport, Diagnostics, LayerAnalysis, Suggestion
from quantlens.analyze import AnalyzeOptions, analyze_model
from quantlens.data.doctor import DoctorReport, Warning_
from quantlens.errors import UserError
from quantlens.evaluation import EvalReport, FloatCheck, SampleResult
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.report.graph import GraphArtifact, GraphNode
from quantlens.report.provenance import CommandLog, record_command
from quantlens.report.render import render_report, script_json
from quantlens.search.artifact import GroupInfo, SearchGoal, SearchPoint, SearchReport
from tests.helpers import quantlens
from tests.models import conv_bn_model

# Model-derived strings that would run script if they reached the page unescaped.
PAYLOAD = (
    "\"'><script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
)
CONV = "conv1" + PAYLOAD
RELU = "relu1</script><script>document.body.dataset.pwned=1</script>"
TENSOR = "r1<svg onload=\"document.title='pwned'\">"


def crafted_model() -> onnx.ModelProto:
    """conv_bn_model with node and tensor names that carry script payloads."""
    model = conv_bn_model(unnamed=False)
    for node in model.graph.node:
        node.name = {"conv1": CONV, "relu1": RELU}.get(node.name, node.name)
        node.input[:] = [TENSOR if n == "r1" else n for n in node.input]
        node.output[:] = [TENSOR if n == "r1" else n for n in node.output]
    return model


def _calibration(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(3):
        x = np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32)
        np.savez(folder / f"{i}.npz", x=x)
    return folder


def _search(model: str) -> SearchReport:
    def point(key: str, label: str, cost: float, metric: float, promoted: list[str]) -> SearchPoint:
        modes = dict.fromkeys(promoted, "a16_w16")
        return SearchPoint(
            key=key, label=label, strategy="greedy", promoted=promoted, modes=modes,
            cost=cost, metric=metric, snr_db=20 + 10 * metric, verified=key != "p2",
        )  # fmt: skip

    points = [
        point("int8", "all-int8", 1.0, 0.5, []),
        point("p1", "greedy 1", 1.1, 0.8, [CONV]),
        point("p2", "greedy 2", 1.3, 0.79, [CONV, "conv2"]),
        point("all16", "all-16-bit", 2.0, 0.85, [CONV, "conv2", "matmul"]),
    ]
    group = GroupInfo(unit=CONV, op_type="Conv", modes={CONV: "a16_w16", RELU: "a16_w16"},
                      cost_delta=0.1, snr_db=30.0)  # fmt: skip
    return SearchReport(
        model=model, target="hailo8", cost_model="hailo", strategy="greedy",
        metric_name="top1", float_metric=0.86, goal=SearchGoal(max_drop=0.1),
        baseline="int8", all16="all16", chosen="p1", points=points,
        pareto=["int8", "p1", "all16"], groups=[group], notes=[f"note about {CONV}"],
    )  # fmt: skip


def _eval(model: str) -> EvalReport:
    return EvalReport(
        model=model, data="eval/", task="classification", primary="top1", samples=4,
        target="hailo8", float_vs_gt={"top1": 0.86, "top5": 1.0},
        quantized_vs_gt={"top1": 0.5, "top5": 0.9}, float_vs_quantized={"top1": 0.55},
        float_check=FloatCheck(passed=True, tolerance=1e-4, max_metric_difference=0.0,
                               emulator_vs_onnxruntime={}),
        per_sample=[SampleResult(name=PAYLOAD, float_score=1.0, quantized_score=0.0)],
    )  # fmt: skip


def build_crafted_run(tmp: Path) -> Path:
    """A real quantize + analyze of the crafted model, plus eval, search and doctor artifacts."""
    tmp.mkdir(parents=True, exist_ok=True)
    model = tmp / "crafted.onnx"
    onnx.save(crafted_model(), model)
    calib = _calibration(tmp / "calib")
    run = tmp / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    options = AnalyzeOptions(calib=calib, target="hailo8", run_dir=run, mode="accumulated")
    analyze_model(model, options)
    _eval(str(model)).save(run / "eval.json")
    _search(str(model)).save(run / "search.json")
    warning = Warning_(code="too-few-samples", message=PAYLOAD, why="why", fix="fix")
    DoctorReport(calib=str(calib), samples=3, checks=["count"], warnings=[warning]).save(
        run / "doctor.json"
    )
    argv = ["quantlens", "quantize", str(model), "--calib", str(calib), "--seed", "3"]
    record_command(run, "quantize", {"calib": calib}, {"data": 3}, argv)
    return run


@pytest.fixture(scope="module")
def crafted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_crafted_run(tmp_path_factory.mktemp("report"))


def _data_block(html: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="ql-data">(.*?)</script>', html, re.S)
    assert match is not None
    return dict(json.loads(match.group(1)))


def test_every_section_renders(crafted_run: Path, tmp_path: Path) -> None:
    result = render_report(crafted_run, tmp_path / "r.html")
    html = result.path.read_text()
    expected = ["summary", "noise", "scatter", "search", "graph", "diagnostics", "reproducibility"]
    assert result.sections == expected
    for name in expected:
        assert f'<section id="{name}">' in html
    assert "Promoting 1 layer group at 1.100× the int8 cost brings top1" in result.summary
    assert "quantlens quantize" in html and "seed data" in html and "onnxruntime" in html
    data = _data_block(html)
    assert set(data) == {"layers", "plots", "search", "graph"}
    graph = data["graph"]
    assert isinstance(graph, dict) and CONV in graph["name"]
    assert graph["mode"][graph["name"].index(CONV)] == "a16_w16"
    assert graph["group"][graph["name"].index(RELU)] == CONV


def test_no_network_references(crafted_run: Path, tmp_path: Path) -> None:
    html = render_report(crafted_run, tmp_path / "r.html").path.read_text()
    assert "default-src 'none'" in html
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html)
    assert "cdn.plot.ly" not in html.split("<script>", 1)[0]


def test_model_strings_are_escaped(crafted_run: Path, tmp_path: Path) -> None:
    html = render_report(crafted_run, tmp_path / "r.html").path.read_text()
    for raw in ("<script>document", "<img src=x", "<svg onload", "</script><script>"):
        assert raw not in html, raw
    assert len(re.findall(r"<script\b", html)) == 3  # data, plotly.js, the page's own script
    assert "&lt;script&gt;document.title" in html  # in tables, escaped by jinja2
    data = _data_block(html)  # and in the data block, intact after JSON decoding
    assert CONV in data["layers"]["id"]  # type: ignore[index]


def test_script_json_escapes_html_and_line_separators() -> None:
    text = script_json({"a": "</script>&\u2028\u2029"})
    assert text == '{"a":"\\u003c/script\\u003e\\u0026\\u2028\\u2029"}'
    assert json.loads(text) == {"a": "</script>&\u2028\u2029"}


def test_sections_for_missing_artifacts_are_omitted(crafted_run: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(crafted_run / "quantize.json", partial)
    result = render_report(partial)
    assert result.path == partial / "report.html"
    assert result.sections == ["summary", "diagnostics", "reproducibility"] or result.sections == [
        "summary",
        "reproducibility",
    ]
    html = result.path.read_text()
    for name in ("noise", "scatter", "search", "graph"):
        assert f'<section id="{name}">' not in html
    assert "Output SNR" in result.summary


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        render_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no quantlens artifacts"):
        render_report(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "analysis.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        render_report(bad)
    (bad / "analysis.json").write_text('{"kind": "analysis", "model": 3}')
    with pytest.raises(UserError, match="cannot read"):
        render_report(bad)


def _big_analysis(layers: int, pairs: int = 512, bins: int = 32) -> AnalysisReport:
    rng = np.random.default_rng(0)

    def layer(i: int) -> LayerAnalysis:
        f = rng.standard_normal(pairs) * 3
        q = f + rng.standard_normal(pairs) * 0.05
        edges = np.linspace(-9, 9, bins + 1)
        flagged = i % 10 == 0
        return LayerAnalysis(
            id=f"/model.{i}/conv/Conv", op_type="Conv", measured_at=f"/model.{i}/act/Mul_output_0",
            nodes=[f"/model.{i}/conv/Conv", f"/model.{i}/act/Sigmoid", f"/model.{i}/act/Mul"],
            accumulated=NoiseStats(snr_db=float(rng.uniform(5, 40)), cosine=0.999, mse=1e-3,
                                   max_abs_error=0.1),
            diagnostics=Diagnostics(clip_min=-9.0, clip_max=9.0, output_outlier_ratio=2.5),
            flags=["low-snr"] if flagged else [],
            suggestion=Suggestion(action="16-bit", mode="a16_w16", reason="low SNR") if flagged
            else None,
            scatter=Scatter(float_values=[round(v, 6) for v in f.tolist()],
                            quantized_values=[round(v, 6) for v in q.tolist()]),
            histogram=ValueHistogram(edges=edges.tolist(), float_counts=[1000] * bins,
                                     quantized_counts=[999] * bins),
        )  # fmt: skip

    items = [layer(i) for i in range(layers)]
    return AnalysisReport(
        model="big.onnx", target="hailo8", method="percentile", modes=["accumulated"], samples=8,
        batch_size=4, ranked_by="accumulated", ranking=[la.id for la in items], layers=items,
    )  # fmt: skip


def test_size_of_a_100_layer_report(tmp_path: Path) -> None:
    run = tmp_path / "big"
    _big_analysis(100).save(run / "analysis.json")
    nodes = []
    for i in range(100):
        previous = [f"/model.{i - 1}/act/Mul_output_0"] if i else ["images"]
        for suffix, op in (("conv/Conv", "Conv"), ("act/Sigmoid", "Sigmoid"), ("act/Mul", "Mul")):
            outputs = [f"/model.{i}/{suffix}_output_0"]
            nodes.append(GraphNode(name=f"/model.{i}/{suffix}", op_type=op, inputs=previous,
                                   outputs=outputs))  # fmt: skip
            previous = outputs
    GraphArtifact(inputs=["images"], outputs=[], nodes=nodes).save(run / "graph.json")
    result = render_report(run)
    beyond_plotly = result.bytes - result.plotly_bytes
    print(
        f"100 layers: {result.bytes / 1e6:.2f} MB, {beyond_plotly / 1e6:.2f} MB without plotly.js"
    )
    assert beyond_plotly < 2_000_000


def test_record_command_appends(tmp_path: Path) -> None:
    record_command(
        tmp_path, "quantize", {"calib": Path("c"), "limit": None}, None, ["x", "-o", "r"]
    )
    record_command(tmp_path, "analyze", {}, {"seed": 1}, ["x", "analyze"])
    log = CommandLog.load(tmp_path / "command.json")
    assert [c.command for c in log.commands] == ["quantize", "analyze"]
    assert log.commands[0].line() == "quantlens -o r" and log.commands[0].params == {"calib": "c"}
    assert "torch" in log.commands[0].versions and log.commands[1].seeds == {"seed": 1}


def test_cli_report(crafted_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "page.html"
    result = quantlens("report", str(crafted_run), "-o", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("Promoting 1 layer group")
    assert lines[-1].startswith("report: 7 sections") and str(out) in lines[-1]
    assert out.is_file()
    missing = quantlens("report", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "error: run folder" in missing.stderr


def test_doctor_writes_into_a_run_folder(tmp_path: Path) -> None:
    from quantlens.data.render import write_samples

    calib = write_samples("rotated-pages", 2, tmp_path / "calib", seed=1)
    result = quantlens("doctor", "--calib", str(calib), "-o", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert DoctorReport.load(tmp_path / "run" / "doctor.json").samples == 2
    log = CommandLog.load(tmp_path / "run" / "command.json")
    assert log.commands[0].argv[:2] == ["quantlens", "doctor"]
    assert render_report(tmp_path / "run").sections == [
        "summary", "diagnostics", "reproducibility",
    ]  # fmt: skip
