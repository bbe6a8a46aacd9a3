"""Observers: how a tensor's clip range follows from its observed range and histogram.

An observer is a plug-in behind the `Observer` protocol, registered by name with
`@register_observer`. Calibration asks it which histogram it needs (range and bins, fixed from
the pass-1 min/max), streams the data into that histogram on the device, then asks it for the
clip range. Every observer's answer is clamped to the observed [min, max] by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from quantlens.calib.histogram import Histogram
from quantlens.errors import UserError
from quantlens.schemes.formats import IntFormat

HistogramRange = tuple[float, float, int]


@dataclass(frozen=True)
class ObserverSettings:
    percentile: float = 99.999
    bins: int = 2048


class Observer(Protocol):
    """Chooses the clip range [clip_min, clip_max] of one tensor for one integer grid."""

    needs_histogram: bool

    def histogram_range(self, low: float, high: float, fmt: IntFormat) -> HistogramRange:
        """(low, high, bins) of the histogram this observer reads; unused without histogram."""
        ...

    def clip_range(
        self, low: float, high: float, hist: Histogram | None, fmt: IntFormat
    ) -> tuple[float, float]: ...


ObserverFactory = Callable[[ObserverSettings], Observer]
F = TypeVar("F", bound=ObserverFactory)
_OBSERVERS: dict[str, ObserverFactory] = {}


def register_observer(name: str) -> Callable[[F], F]:
    def decorate(factory: F) -> F:
        if name in _OBSERVERS:
            raise ValueError(f"observer {name!r} is registered twice")
        _OBSERVERS[name] = factory
        return factory

    return decorate


def observer_names() -> list[str]:
    return sorted(_OBSERVERS)


def make_observer(name: str, settings: ObserverSettings) -> Observer:
    factory = _OBSERVERS.get(name)
    if factory is None:
        raise UserError(
            f"unknown calibration method {name!r}", f"use one of: {', '.join(observer_names())}"
        )
    return factory(settings)


def value_range(low: float, high: float, bins: int) -> HistogramRange:
    return low, high, bins


def zero_anchored_range(low: float, high: float, bins: int) -> HistogramRange:
    """A range that folds exactly into a histogram of |x| with `bins` bins."""
    if low >= 0.0:
        return 0.0, high, bins
    if high <= 0.0:
        return low, 0.0, bins
    amax = max(-low, high)
    return -amax, amax, 2 * bins


class ValueRangeObserver:
    """Base of the observers whose histogram spans the observed values, `settings.bins` bins."""

    def __init__(self, settings: ObserverSettings) -> None:
        self.bins = settings.bins

    def histogram_range(self, low: float, high: float, fmt: IntFormat) -> HistogramRange:
        return value_range(low, high, self.bins)


@register_observer("minmax")
class MinMaxObserver(ValueRangeObserver):
    """The observed range, outliers included: nothing is clipped."""

    needs_histogram = False

    def clip_range(
        self, low: float, high: float, hist: Histogram | None, fmt: IntFormat
    ) -> tuple[float, float]:
        return low, high


@register_observer("percentile")
class PercentileObserver(ValueRangeObserver):
    """Keeps `percentile` % of the values: two-sided for signed data, top only for one-signed.

    For signed data the (100 - percentile) % cut is split evenly between the two tails, as
    ONNX Runtime's asymmetric percentile calibrator does.
    """

    needs_histogram = True

    def __init__(self, settings: ObserverSettings) -> None:
        if not 0.0 < settings.percentile <= 100.0:
            raise UserError(
                f"percentile {settings.percentile} is out of range", "pass a value in (0, 100]"
            )
        super().__init__(settings)
        self.keep = settings.percentile / 100.0

    def clip_range(
        self, low: float, high: float, hist: Histogram | None, fmt: IntFormat
    ) -> tuple[float, float]:
        assert hist is not None
        if fmt.bits >= 16:
            # A 16-bit grid resolves the outliers a percentile cut exists to drop for 8 bits;
            # clipping them would only add error (the entropy observer does the same).
            return low, high
        cut = 1.0 - self.keep
        if low >= 0.0:
            fractions = [0.0, self.keep]
        elif high <= 0.0:
            fractions = [cut, 1.0]
        else:
            fractions = [cut / 2.0, 1.0 - cut / 2.0]
        lo, hi = hist.quantiles(torch.tensor(fractions, dtype=torch.float64)).tolist()
        return (low if low >= 0.0 else lo), (high if high <= 0.0 else hi)
