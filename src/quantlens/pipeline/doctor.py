"""The doctor stage: image checks on the calibration set; with a model, activation-range shift."""

from __future__ import annotations

from pathlib import Path

from quantlens.data.doctor import DoctorReport, activation_extremes, check_activations, diagnose
from quantlens.data.preprocess import load_inputs
from quantlens.emulate import Executor
from quantlens.pipeline.session import prepare, spec_for


def doctor(
    calib: Path, data: Path | None = None, model: Path | None = None, limit: int = 32
) -> DoctorReport:
    """Image checks on the calibration set; with a model and --data, activation-range shift."""
    report = diagnose(calib, data)
    if model is None or data is None:
        return report
    prepared = prepare(model, batch=1)
    executor = Executor(prepared.model)
    spec = spec_for(model, prepared.model)
    calib_peaks = activation_extremes(executor, load_inputs(calib, spec)[:limit])
    data_peaks = activation_extremes(executor, load_inputs(data, spec)[:limit])
    report.checks.append("activations")
    report.warnings.extend(check_activations(calib_peaks, data_peaks))
    return report
