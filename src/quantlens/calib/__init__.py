"""Calibration: observers that stream activations on the device and choose clip ranges."""

from quantlens.calib import entropy as _entropy  # noqa: F401  (registers "entropy")
from quantlens.calib import mse as _mse  # noqa: F401  (registers "mse")
from quantlens.calib.collect import calibrate, weight_ranges
from quantlens.calib.histogram import Histogram
from quantlens.calib.observers import (
    Observer,
    ObserverSettings,
    make_observer,
    observer_names,
    register_observer,
)
from quantlens.calib.stats import CalibrationStats, HistogramSummary, TensorStats

__all__ = [
    "CalibrationStats",
    "Histogram",
    "HistogramSummary",
    "Observer",
    "ObserverSettings",
    "TensorStats",
    "calibrate",
    "make_observer",
    "observer_names",
    "register_observer",
    "weight_ranges",
]
