"""The report's section on another runtime's per-layer dump (`quantlens compare`)."""

from __future__ import annotations

from typing import Any

from quantlens.artifacts.compare import Agreement, CompareReport

# Rows shown: the first divergence and its neighbourhood matter most; the JSON has them all.
MAX_ROWS = 60


def _db(value: float) -> str:
    return "inf" if value == float("inf") else f"{value:.1f}"


def _cells(agreement: Agreement) -> list[str]:
    return [_db(agreement.snr_db), f"{agreement.cosine:.5f}", f"{agreement.max_abs_error:.4g}"]


def compare_section(report: CompareReport | None) -> dict[str, Any] | None:
    """Summary line and table rows, or None without a compare.json."""
    if report is None:
        return None
    first = report.first_divergence
    if first is None:
        verdict = f"every compared tensor is within {report.threshold_db:.0f} dB of our emulation"
    else:
        verdict = (
            f"first below {report.threshold_db:.0f} dB: {first.tensor} "
            f"({_db(first.snr_db)} dB) — {first.cause}"
        )
    rows = []
    for entry in report.tensors[:MAX_ROWS]:
        codes = "" if entry.codes_equal is None else f"{100 * entry.codes_equal:.2f}%"
        rows.append(
            [
                entry.tensor,
                entry.op_type,
                *_cells(entry.vs_float),
                *_cells(entry.vs_emulation),
                codes,
            ]
        )
    replays = [
        [
            replay.tensor,
            replay.op_type,
            ", ".join(replay.inputs),
            _db(replay.agreement.snr_db),
            "" if replay.codes_equal is None else f"{100 * replay.codes_equal:.4g}%",
            replay.cause,
            replay.detail,
        ]
        for replay in report.replays
    ]
    return {
        "replays": replays,
        "summary": (
            f"{report.format} dump {report.dumps}, {len(report.tensors)} tensors aligned, "
            f"{report.samples} sample(s), target {report.target}; {verdict}"
        ),
        "rows": rows,
        "hidden": max(0, len(report.tensors) - MAX_ROWS),
        "skipped": len(report.skipped),
    }
