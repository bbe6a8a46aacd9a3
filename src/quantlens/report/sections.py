"""Turn a run folder's artifacts into the report's sections: plain data, compact and rounded.

Each `*_section` returns None when the artifacts it needs are missing, so the template omits it.
Tables go to the template (escaped by jinja2); plot data goes to one JSON block read by the
page's script, which writes names into the page as text only.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from quantlens.artifacts.analysis import AnalysisReport, LayerAnalysis
from quantlens.artifacts.search import SearchPoint, SearchReport
from quantlens.report.graph import edges, layer_depths
from quantlens.report.run import RunArtifacts

Data = dict[str, Any]
ARMS = (
    ("float vs ground truth (emulator)", "float_vs_gt"),
    ("float vs ground truth (ONNX Runtime)", "float_onnxruntime_vs_gt"),
    ("quantized vs ground truth (emulator)", "quantized_vs_gt"),
    ("quantized vs ground truth (QDQ in ONNX Runtime)", "quantized_onnxruntime_vs_gt"),
    ("quantized vs ground truth (ONNX simulation)", "quantized_simulation_vs_gt"),
    ("float vs quantized (emulator)", "float_vs_quantized"),
    ("float vs quantized (QDQ in ONNX Runtime)", "float_vs_quantized_onnxruntime"),
    ("float vs quantized (ONNX simulation)", "float_vs_quantized_simulation"),
)


def rnd(value: float | None, digits: int = 4) -> float | None:
    """`digits` significant digits; None for missing or non-finite values (JSON has no inf)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def fmt(value: float | None, spec: str = ".4f", unit: str = "") -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return f"{'' if value > 0 else '−'}∞{unit}"
    return f"{value:{spec}}{unit}"


# --- 1 summary ----------------------------------------------------------------------------------


def summary_section(run: RunArtifacts) -> Data:
    facts = _facts(run)
    return {
        "facts": facts,
        "table": _three_way(run),
        "verdict": verdict(run),
    }


def _facts(run: RunArtifacts) -> list[tuple[str, str]]:
    q, a, e, s = run.quantize, run.analysis, run.eval, run.search
    model = next((x.model for x in (q, a, e, s) if x is not None), None)
    target = next((x.target for x in (q, a, s, e) if x is not None and x.target), None)
    facts = [("model", model or "—"), ("profile", target or "—")]
    facts.append(("calibration set", _calibration_text(run)))
    if e is not None:
        facts.append(("evaluation set", f"{e.data} ({e.samples} samples, task {e.task})"))
    if q is not None:
        facts.append(("precision modes", ", ".join(f"{m} ×{n}" for m, n in q.modes.items())))
    chosen = s.point(s.chosen) if s is not None else None
    if chosen is not None:
        facts.append(("chosen assignment", _point_text(chosen)))
    return facts


def _calibration_text(run: RunArtifacts) -> str:
    stats = run.calibration
    parts = []
    path = _param(run, "calib")
    if path:
        parts.append(path)
    if stats is not None:
        parts.append(f"{stats.samples} samples, {stats.method} ranges")
    elif run.quantize is not None:
        parts.append(f"{run.quantize.samples} samples, {run.quantize.method} ranges")
    return ", ".join(parts) or "—"


def _param(run: RunArtifacts, name: str) -> str | None:
    if run.command is None:
        return None
    values = [c.params[name] for c in run.command.commands if name in c.params]
    return values[-1] if values else None


def _point_text(point: SearchPoint) -> str:
    promoted = ", ".join(point.promoted[:8]) + (" …" if len(point.promoted) > 8 else "")
    text = f"{point.label}: cost {point.cost:.3f}× int8, promoted {promoted or 'nothing'}"
    if point.lowered:
        lowered = ", ".join(point.lowered[:8]) + (" …" if len(point.lowered) > 8 else "")
        text += f", 4-bit weights on {lowered}"
    return text


def _three_way(run: RunArtifacts) -> Data | None:
    e, s = run.eval, run.search
    rows: list[tuple[str, dict[str, float]]] = []
    if e is not None:
        rows = [(label, getattr(e, arm)) for label, arm in ARMS if getattr(e, arm) is not None]
    if s is not None:
        rows.extend(_search_rows(s))
    if not rows:
        return None
    primary = e.primary if e is not None else (s.metric_name if s is not None else None)
    keys = list(dict.fromkeys(k for _, metrics in rows for k in metrics))
    if primary in keys:
        keys.remove(primary)
        keys.insert(0, primary)
    body = [(label, [fmt(metrics.get(k)) for k in keys]) for label, metrics in rows]
    return {"columns": keys, "rows": body, "primary": primary}


def _search_rows(search: SearchReport) -> list[tuple[str, dict[str, float]]]:
    rows = []
    for key, name in (
        (search.baseline, "all-int8"),
        (search.chosen, "chosen"),
        (search.cheapest_gain, "cheapest gain over the free fixes"),
        (search.all16, "all promoted"),
    ):
        point = search.point(key)
        if point is None:
            continue
        metrics = {"cost ×int8": point.cost}
        if point.metric is not None:
            metrics[search.metric_name or "metric"] = point.metric
        if point.snr_db is not None:
            metrics["output SNR dB"] = point.snr_db
        rows.append((f"search: {name} ({point.label})", metrics))
    return rows


def verdict(run: RunArtifacts) -> str:
    """One sentence: what the run says about int8 on this model."""
    s, e, q, a = run.search, run.eval, run.quantize, run.analysis
    chosen = s.point(s.chosen) if s is not None else None
    if s is not None and chosen is not None:
        return _search_verdict(s, chosen)
    if e is not None and e.primary_metric("float_vs_gt") is not None:
        return _eval_verdict(run)
    if q is not None:
        snr = q.worst_snr()
        tail = _worst_layer_hint(a)
        if snr >= 30:
            return (
                f"Output SNR {snr:.1f} dB: int8 looks safe; confirm it with `quantlens eval`{tail}."
            )
        return f"Output SNR {snr:.1f} dB: int8 adds visible noise{tail}."
    if a is not None:
        flagged = sum(1 for la in a.layers if la.flags)
        return f"{flagged} of {len(a.layers)} layers are flagged{_worst_layer_hint(a)}."
    return "No quantization results in this run folder yet."


def _search_verdict(search: SearchReport, chosen: SearchPoint) -> str:
    base = search.point(search.baseline)
    name = search.metric_name or "metric"
    if chosen.metric is not None and base is not None and base.metric is not None:
        gain = f"brings {name} from {base.metric:.4f} (all-int8) to {chosen.metric:.4f}"
    elif chosen.snr_db is not None and base is not None and base.snr_db is not None:
        gain = f"brings output SNR from {base.snr_db:.1f} dB (all-int8) to {chosen.snr_db:.1f} dB"
    else:
        gain = "is the search's choice"
    ref = f" (float {search.float_metric:.4f})" if search.float_metric is not None else ""
    count = len(chosen.promoted)
    return (
        f"Promoting {count} layer group{'s' if count != 1 else ''} at {chosen.cost:.3f}× the "
        f"int8 cost {gain}{ref}."
    )


def _eval_verdict(run: RunArtifacts) -> str:
    e = run.eval
    assert e is not None
    base, quant = e.primary_metric("float_vs_gt"), e.primary_metric("quantized_vs_gt")
    assert base is not None
    if quant is None:
        return f"Float {e.primary} is {base:.4f}; no quantized arm was evaluated."
    drop = base - quant
    relative = drop / abs(base) if base else 0.0
    if relative <= 0.01:
        return (
            f"int8 keeps {e.primary} within 1% of float ({base:.4f} → {quant:.4f}); "
            "no layer needs promoting."
        )
    return (
        f"int8 loses {relative:.0%} of {e.primary} ({base:.4f} → {quant:.4f})"
        f"{_worst_layer_hint(run.analysis)}; run `quantlens search` for the cheapest fix."
    )


def _worst_layer_hint(analysis: AnalysisReport | None) -> str:
    if analysis is None or not analysis.ranking:
        return ""
    worst = analysis.layer(analysis.ranking[0])
    action = f" ({worst.suggestion.action})" if worst.suggestion else ""
    return f"; the worst layer is {worst.id}{action}"


# --- 2 and 3: per-layer noise, scatter and histogram --------------------------------------------


def layers_data(analysis: AnalysisReport) -> Data:
    """Columnar per-layer data in graph order, shared by the noise plot and the layer panel."""
    layers = analysis.layers
    return {
        "id": [la.id for la in layers],
        "op": [la.op_type for la in layers],
        "acc": [rnd(la.accumulated.snr_db) if la.accumulated else None for la in layers],
        "iso": [rnd(la.isolated.snr_db) if la.isolated else None for la in layers],
        "grad": [rnd(la.gradient.snr_db) if la.gradient else None for la in layers],
        "flags": [la.flags for la in layers],
        "action": [_suggestion(la) for la in layers],
        "details": [_details(la) for la in layers],
        "nodes": [la.nodes for la in layers],
        "ranked_by": analysis.ranked_by,
    }


def _suggestion(la: LayerAnalysis) -> str:
    s = la.suggestion
    if s is None:
        return ""
    mode = f" → {s.mode}" if s.mode else ""
    return f"{s.action}{mode}: {s.reason}"


def _details(la: LayerAnalysis) -> list[list[str]]:
    """(label, value) rows for the layer panel, already formatted."""
    rows = [["op", la.op_type], ["measured at", la.measured_at]]
    if la.accumulated is not None:
        acc = la.accumulated
        rows += [
            ["accumulated SNR", fmt(acc.snr_db, ".2f", " dB")],
            ["accumulated cosine", fmt(acc.cosine, ".5f")],
            ["max abs error", fmt(acc.max_abs_error, ".4g")],
        ]
    if la.isolated is not None:
        iso = la.isolated
        rows += [
            ["isolated SNR", fmt(iso.snr_db, ".2f", " dB")],
            [
                "isolated weight / activation",
                f"{fmt(iso.weight_snr_db, '.1f')} / {fmt(iso.activation_snr_db, '.1f')} dB",
            ],
        ]
    if la.gradient is not None:
        rows.append(["gradient-estimated SNR", fmt(la.gradient.snr_db, ".2f", " dB")])
    d = la.diagnostics
    rows += [
        ["range", f"{fmt(d.clip_min, '.4g')} … {fmt(d.clip_max, '.4g')}"],
        ["outlier ratio (output)", fmt(d.output_outlier_ratio, ".2f")],
        ["weight channel spread", fmt(d.weight_channel_spread, ".2f")],
        ["BatchNorm folded", d.folded_bn or ("no (conv without BN)" if d.conv_without_bn else "—")],
    ]
    if la.flags:
        rows.append(["flags", ", ".join(la.flags)])
    if la.suggestion is not None:
        rows.append(["suggested", _suggestion(la)])
    return rows


def flagged_rows(analysis: AnalysisReport) -> list[list[str]]:
    rows = []
    for la in analysis.layers:
        if la.flags:
            snr = la.accumulated.snr_db if la.accumulated else None
            rows.append([la.id, la.op_type, fmt(snr, ".1f"), ", ".join(la.flags), _suggestion(la)])
    return rows


def scatter_data(analysis: AnalysisReport) -> tuple[list[Data], list[tuple[int, str]]]:
    """Per layer (graph order) the scatter and histogram; and the pick list, widest first."""
    plots: list[Data] = []
    spreads: list[tuple[float, int, str]] = []
    for index, la in enumerate(analysis.layers):
        plot: Data = {}
        if la.scatter is not None and la.scatter.float_values:
            f, q = la.scatter.float_values, la.scatter.quantized_values
            plot["f"] = [rnd(v) for v in f]
            plot["q"] = [rnd(v) for v in q]
            spreads.append((_spread(f, q), index, la.id))
        if la.histogram is not None:
            h = la.histogram
            plot["e"] = [rnd(v) for v in h.edges]
            plot["fc"] = h.float_counts
            plot["qc"] = h.quantized_counts
        plots.append(plot)
    spreads.sort(key=lambda item: -item[0])
    choices = [(i, f"{name} (relative spread {s:.3f})") for s, i, name in spreads]
    return plots, choices


def _spread(f: Sequence[float], q: Sequence[float]) -> float:
    """RMS distance from the diagonal over the RMS of the float values: a scatter's width."""
    signal = math.sqrt(statistics.fmean(v * v for v in f)) if f else 0.0
    noise = math.sqrt(statistics.fmean((b - a) ** 2 for a, b in zip(f, q))) if f else 0.0
    return noise / signal if signal > 0 else (math.inf if noise > 0 else 0.0)


# --- 4 search -----------------------------------------------------------------------------------


def search_data(search: SearchReport) -> Data:
    points = search.points
    use_metric = any(p.metric is not None for p in points)
    value = (lambda p: p.metric) if use_metric else (lambda p: p.snr_db)
    return {
        "y_label": (search.metric_name or "metric") if use_metric else "output SNR (dB)",
        "cost": [rnd(p.cost) for p in points],
        "y": [rnd(value(p)) for p in points],
        "label": [
            f"{p.label} ({p.strategy}), {len(p.promoted)} promoted"
            + (f", {len(p.lowered)} down to 4-bit weights" if p.lowered else "")
            + ("" if p.verified else ", predicted")
            for p in points
        ],
        "verified": [p.verified for p in points],
        "pareto": _indices(points, search.pareto),
        "chosen": _indices(points, [search.chosen]),
        "baseline": _indices(points, [search.baseline]),
        "all16": _indices(points, [search.all16]),
        "float": rnd(search.float_metric) if use_metric else None,
    }


# What "cost" meant in a run, by its cost model (search.cost's names).
_COST_WORDS = {
    "analytic": "the target profile's modeled cost (each layer's MACs and output size times "
    "its mode's factor)",
    "measured": "the latency of each candidate's QDQ export measured in ONNX Runtime",
    "imported": "the per-layer times of the vendor profiler table given with --cost-table",
    "weight-bytes": "the model's weight size in bytes",
}


def cost_wording(search: SearchReport) -> str:
    """One sentence on the cost the run used, for the plot's caption."""
    words = _COST_WORDS.get(search.cost_model, f"the {search.cost_model!r} cost model's cost")
    return f"Cost is {words}, relative to all-int8."


def _indices(points: Sequence[SearchPoint], keys: Iterable[str | None]) -> list[int]:
    where = {p.key: i for i, p in enumerate(points)}
    return [where[k] for k in keys if k in where]


def pareto_rows(search: SearchReport) -> list[list[str]]:
    rows = []
    for key in search.pareto:
        p = search.point(key)
        if p is not None:
            mark = " (chosen)" if key == search.chosen else ""
            rows.append(
                [
                    p.label + mark,
                    f"{p.cost:.3f}",
                    fmt(p.metric),
                    fmt(p.snr_db, ".1f"),
                    f"{len(p.promoted)}" + (f" (+{len(p.lowered)} down)" if p.lowered else ""),
                    "yes" if p.verified else "no",
                ]
            )
    return rows


# --- 5 graph ------------------------------------------------------------------------------------


def graph_data(run: RunArtifacts) -> Data | None:
    graph = run.graph
    if graph is None:
        return None
    depths = layer_depths(graph)
    rows: dict[int, int] = {}
    y = []
    for depth in depths:
        y.append(rows.get(depth, 0))
        rows[depth] = y[-1] + 1
    names = [node.name for node in graph.nodes]
    return {
        "name": names,
        "op": [node.op_type for node in graph.nodes],
        "x": depths,
        "y": [row - (rows[d] - 1) / 2 for row, d in zip(y, depths)],
        "edges": [list(pair) for pair in edges(graph)],
        "mode": _node_modes(run, names),
        "group": _node_groups(run, names),
        "layer": _node_layers(run, names),
    }


def _node_modes(run: RunArtifacts, names: Sequence[str]) -> list[str]:
    assignment, search = run.assignment, run.search
    chosen = search.point(search.chosen) if search is not None else None
    default = assignment.default if assignment is not None else "a8_w8"
    modes = []
    for name in names:
        if chosen is not None:
            modes.append(chosen.modes.get(name, default))
        else:
            modes.append(assignment.mode_name(name) if assignment is not None else default)
    return modes


def _node_groups(run: RunArtifacts, names: Sequence[str]) -> list[str]:
    """Per node, the precision group (search unit) it belongs to in the chosen assignment."""
    search = run.search
    chosen = search.point(search.chosen) if search is not None else None
    if search is None or chosen is None:
        return [""] * len(names)
    member: dict[str, str] = {}
    promoted = set(chosen.promoted)
    for group in search.groups:
        if group.unit in promoted:
            for node in group.modes:
                member.setdefault(node, group.unit)
    return [member.get(name, "") for name in names]


def _node_layers(run: RunArtifacts, names: Sequence[str]) -> list[int | None]:
    """Per node, the index of the analysed layer it belongs to (its conv, or fused into one)."""
    if run.analysis is None:
        return [None] * len(names)
    owner: dict[str, int] = {}
    for index, la in enumerate(run.analysis.layers):
        for node in [la.id, *la.nodes]:
            owner.setdefault(node, index)
    return [owner.get(name) for name in names]


# --- 6 diagnostics and reproducibility ----------------------------------------------------------


def diagnostics_section(run: RunArtifacts) -> Data | None:
    section: Data = {}
    if run.doctor is not None:
        d = run.doctor
        section["doctor"] = {
            "summary": f"{d.samples} calibration images ({d.calib}); checks: {', '.join(d.checks)}",
            "warnings": [[w.code, w.message, w.why, w.fix, str(len(w.files))] for w in d.warnings],
        }
    if run.calibration is not None:
        section["calibration"] = _calibration_rows(run)
    if run.eval is not None:
        check = run.eval.float_check
        verdict = "passed" if check.passed else "FAILED"
        section["float_check"] = (
            f"float baseline {verdict}: emulator vs ONNX Runtime metric difference "
            f"{check.max_metric_difference:.2e} (tolerance {check.tolerance:g})"
        )
    if run.analysis is not None:
        no_bn = [la.id for la in run.analysis.layers if la.diagnostics.conv_without_bn]
        if no_bn:
            section["no_bn"] = no_bn
    notes = _notes(run)
    if notes:
        section["notes"] = notes
    return section or None


def _calibration_rows(run: RunArtifacts, top: int = 12) -> Data:
    stats = run.calibration
    assert stats is not None
    tensors = list(stats.tensors.values())

    def clipped(t: Any) -> float:
        return t.histogram.beyond_clip if t.histogram is not None else 0.0

    tensors.sort(key=lambda t: (-clipped(t), -(t.max - t.min)))
    rows = [
        [
            t.name,
            f"{t.min:.4g} … {t.max:.4g}",
            f"{t.clip_min:.4g} … {t.clip_max:.4g}",
            f"{clipped(t):.2e}",
        ]
        for t in tensors[:top]
    ]
    return {
        "summary": f"{stats.samples} samples, {stats.method} ranges, {len(tensors)} tensors",
        "rows": rows,
    }


def _notes(run: RunArtifacts) -> list[list[str]]:
    sources = (
        ("quantize", run.quantize),
        ("eval", run.eval),
        ("analysis", run.analysis),
        ("plan", run.plan),
        ("search", run.search),
    )
    return [
        [name, note]
        for name, artifact in sources
        if artifact is not None
        for note in artifact.notes
    ]


def reproducibility_section(run: RunArtifacts) -> Data:
    commands = run.command.commands if run.command is not None else []
    versions: dict[str, str] = {}
    for entry in commands:
        versions.update(entry.versions)
    for artifact in (run.quantize, run.analysis, run.search):
        if artifact is not None and "quantlens" not in versions:
            versions["quantlens"] = artifact.quantlens_version
    seeds = {k: str(v) for entry in commands for k, v in entry.seeds.items()}
    return {
        "commands": [[entry.time, entry.line()] for entry in commands],
        "versions": sorted(versions.items()),
        "seeds": sorted(seeds.items()),
        "files": [name for name in run.present()],
    }
