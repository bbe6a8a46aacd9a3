"""Calibration: stream a calibration set through the executor and choose every clip range.

By default histogram methods (percentile, mse, entropy) make one pass: each target tensor's
exact min/max and a `GrowingHistogram` (power-of-two bins that coarsen as the range grows) are
updated as the tensor is computed, and at the end the histogram is spread over the range the
observer asks for. `passes=2` is the exact alternative: pass 1 records the min/max, pass 2 fills
fixed-range histograms over it. Either way each tensor is reduced on the executor's device as it
is computed and let go, so memory does not grow with the number of samples, unlike calibrators
that keep every activation of every batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field

import numpy as np
import torch

from quantlens.calib.histogram import GrowingHistogram, Histogram, flat_view
from quantlens.calib.observers import Observer, ObserverSettings, make_observer
from quantlens.calib.stats import CalibrationStats, TensorStats, summarize
from quantlens.emulate.executor import Executor
from quantlens.errors import UserError
from quantlens.schemes.formats import IntFormat

Tensor = torch.Tensor
Progress = Callable[[int, int], None]
Feeds = Iterable[Mapping[str, np.ndarray]]
# The running histogram has 4x the bins the observer reads over the widest range it may ask for:
# its bins are then at most half as wide as the final ones, which keeps the interpolation when
# resampling small (the entropy observer is the sensitive one; at 2x it strayed more often).
_OVERSAMPLE = 4


def _non_finite(name: str, sample: int) -> UserError:
    return UserError(
        f"tensor {name!r} holds NaN or Inf on calibration sample {sample} (0-based)",
        "check that sample's pre-processing, and that the float model runs it cleanly",
    )


class _RangeHooks:
    """Min/max only: running min/max per target; a NaN or Inf stops the run naming the tensor."""

    def __init__(self, targets: Mapping[str, IntFormat]) -> None:
        self.targets = targets
        self.slot: dict[str, int] = {}
        self.numel: dict[str, int] = {}
        self.ranges: Tensor | None = None
        self._names: list[str] = []
        self._pairs: list[Tensor] = []

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        return tensor

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        if name in self.targets:
            self.numel[name] = self.numel.get(name, 0) + tensor.numel()
            self.slot.setdefault(name, len(self.slot))
            if tensor.numel():
                low, high = torch.aminmax(flat_view(tensor.detach()))
                self._names.append(name)
                self._pairs.append(torch.stack([low, high]).to(torch.float64))
        return tensor

    def end_sample(self, index: int) -> None:
        """Fold this sample's ranges in; one device sync per sample for the finiteness check."""
        if not self._pairs:
            return
        pairs = torch.stack(self._pairs)
        finite = torch.isfinite(pairs).all(1)
        if not bool(finite.all()):
            raise _non_finite(self._names[int((~finite).nonzero()[0])], index)
        slots = torch.tensor([self.slot[n] for n in self._names], device=pairs.device)
        grown = pairs.new_empty(len(self.slot), 2)
        grown[:, 0], grown[:, 1] = torch.inf, -torch.inf
        if self.ranges is not None:
            grown[: self.ranges.shape[0]] = self.ranges
        grown[:, 0] = grown[:, 0].scatter_reduce(0, slots, pairs[:, 0], "amin")
        grown[:, 1] = grown[:, 1].scatter_reduce(0, slots, pairs[:, 1], "amax")
        self.ranges = grown
        self._names.clear()
        self._pairs.clear()

    def observed(self) -> dict[str, tuple[float, float]]:
        """(min, max) per target in the order first seen; (0, 0) for a tensor never non-empty."""
        values = self.ranges.cpu().tolist() if self.ranges is not None else []
        result = {}
        for name, slot in self.slot.items():
            low, high = values[slot] if slot < len(values) else (0.0, 0.0)
            result[name] = (0.0, 0.0) if low > high else (low, high)
        return result


class _StreamHooks:
    """One pass: exact min/max and a growing histogram per target.

    Whether the grid must grow is decided on the host, so every target tensor costs one device
    sync (free on a CPU); that same read-back of min/max checks for NaN and Inf, which min and
    max propagate.
    """

    def __init__(self, capacities: Mapping[str, int], device: torch.device) -> None:
        self.capacities, self.device = capacities, device
        self.sample = 0
        self.numel: dict[str, int] = {}
        self.ranges: dict[str, tuple[float, float]] = {}
        self.histograms: dict[str, GrowingHistogram] = {}

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        return tensor

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        capacity = self.capacities.get(name)
        if capacity is not None:
            self._observe(name, flat_view(tensor.detach()), capacity)
        return tensor

    def end_sample(self, index: int) -> None:
        self.sample = index + 1

    def _observe(self, name: str, flat: Tensor, capacity: int) -> None:
        self.numel[name] = self.numel.get(name, 0) + flat.numel()
        if not flat.numel():
            return
        low, high = torch.stack(torch.aminmax(flat)).tolist()
        if not (math.isfinite(low) and math.isfinite(high)):
            raise _non_finite(name, self.sample)
        seen_low, seen_high = self.ranges.get(name, (low, high))
        self.ranges[name] = (min(low, seen_low), max(high, seen_high))
        histogram = self.histograms.get(name)
        if histogram is None:
            histogram = self.histograms[name] = GrowingHistogram(capacity, self.device)
        if flat.dtype != torch.float32:
            # Binning is exact in float32; rounding is monotone, so the bounds still hold.
            flat = flat.float()
            low, high = float(np.float32(low)), float(np.float32(high))
        histogram.add(flat, low, high)

    def observed(self) -> dict[str, tuple[float, float]]:
        """(min, max) per target in the order first seen; (0, 0) for a tensor never non-empty."""
        return {name: self.ranges.get(name, (0.0, 0.0)) for name in self.numel}


class _HistogramHooks:
    """Pass 2 of two: every target's values go into its fixed-range histogram."""

    def __init__(self, histograms: Mapping[str, Histogram]) -> None:
        self.histograms = histograms

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        return tensor

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        histogram = self.histograms.get(name)
        if histogram is not None and tensor.numel():
            histogram.add(tensor)
        return tensor


class _Ticker:
    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _run_pass(
    executor: Executor,
    feeds: Iterable[Mapping[str, np.ndarray]],
    hooks: _RangeHooks | _StreamHooks | _HistogramHooks,
    tick: _Ticker,
) -> int:
    samples = 0
    with torch.inference_mode():
        for index, feed in enumerate(feeds):
            executor.run(feed, hooks=hooks)
            if not isinstance(hooks, _HistogramHooks):
                hooks.end_sample(index)
            samples += 1
            tick()
    return samples


def _limited(feeds: Feeds, count: int | None) -> Iterator[Mapping[str, np.ndarray]]:
    return iter(feeds) if count is None else itertools.islice(feeds, count)


def _planned_samples(feeds: Feeds, count: int | None) -> int:
    """Samples per pass for progress totals; 0 when unknown (a generator with no `count`)."""
    size = len(feeds) if isinstance(feeds, Sized) else None
    if size is None:
        return count or 0
    return size if count is None else min(size, count)


def _check_targets(targets: Mapping[str, IntFormat], seen: Mapping[str, object]) -> None:
    missing = [name for name in targets if name not in seen]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(
            f"calibration targets not computed on the way to the model outputs: {shown}{more}",
            "calibrate model inputs or tensors listed by Executor.activation_names()",
        )


def _tensor_stats(
    name: str,
    fmt: IntFormat,
    observed: tuple[float, float],
    numel: int,
    histogram: Histogram | None,
    observer: Observer,
) -> TensorStats:
    low, high = observed
    clip_min, clip_max = observer.clip_range(low, high, histogram, fmt) if numel else observed
    clip_min = min(max(clip_min, low), high)
    clip_max = max(min(clip_max, high), clip_min)
    return TensorStats(
        name=name,
        format=fmt,
        numel=numel,
        min=low,
        max=high,
        clip_min=clip_min,
        clip_max=clip_max,
        histogram=summarize(histogram, clip_min, clip_max) if histogram is not None else None,
    )


def calibrate(
    executor: Executor,
    feeds: Feeds,
    targets: Mapping[str, IntFormat],
    method: str = "minmax",
    *,
    percentile: float = 99.999,
    bins: int = 2048,
    passes: int = 1,
    count: int | None = None,
    progress: Progress | None = None,
) -> CalibrationStats:
    """Observe the `targets` activations over the calibration set and choose their clip ranges.

    `feeds` holds one mapping of input name -> array per sample (a sample may be a batch).
    Histogram methods (percentile, mse, entropy) read it once by default, into histograms whose
    range grows with the data; `passes=2` reads it twice (min/max, then histograms over exactly
    that range) and then needs a re-iterable `feeds` (a list or other Sequence). `count` limits
    the run to the first `count` samples. `targets` maps each tensor to observe to the grid it
    will be quantized onto (the MSE and entropy observers optimise for that grid); every other
    tensor passes through untouched. `progress(done, total)` is called after every sample of
    every pass (total is 0 when the length is unknown).
    """
    observer = make_observer(method, ObserverSettings(percentile=percentile, bins=bins))
    if bins < 64:
        raise UserError(f"{bins} histogram bins are too few", "use at least 64 (default 2048)")
    if passes not in (1, 2):
        raise UserError(f"calibration cannot make {passes} passes", "pass passes=1 or passes=2")
    passes = passes if observer.needs_histogram else 1
    if passes == 2 and iter(feeds) is feeds:
        raise UserError(
            f"two-pass {method} calibration reads the calibration set twice, "
            "but got a one-shot iterator",
            "pass a list (or other sequence) of input mappings, or use passes=1",
        )
    tick = _Ticker(progress, _planned_samples(feeds, count) * passes)
    if not observer.needs_histogram:
        samples, observed, numel, histograms = _observe_ranges(
            executor, feeds, targets, count, tick
        )
    elif passes == 1:
        samples, observed, numel, histograms = _observe_one_pass(
            executor, feeds, targets, observer, count, tick
        )
    else:
        samples, observed, numel, histograms = _observe_two_passes(
            executor, feeds, targets, observer, count, tick
        )
    tensors = {
        name: _tensor_stats(
            name, targets[name], observed[name], numel[name], histograms.get(name), observer
        )
        for name in observed
    }
    return CalibrationStats(
        method=method,
        settings=_settings(method, passes, observer.needs_histogram, bins, percentile),
        samples=samples,
        device=str(executor.device),
        tensors=tensors,
    )


# What a run observed: samples, (min, max) and value count per target, histograms by target.
Observed = tuple[int, dict[str, tuple[float, float]], dict[str, int], dict[str, Histogram]]


def _settings(
    method: str, passes: int, histogram: bool, bins: int, percentile: float
) -> dict[str, float | int | str]:
    """What a calibration's result depends on besides its samples (recorded with it)."""
    settings: dict[str, float | int | str] = {"passes": passes}
    if histogram:
        settings["bins"] = bins
    if method == "percentile":
        settings["percentile"] = percentile
    return settings


def _observe_ranges(
    executor: Executor,
    feeds: Feeds,
    targets: Mapping[str, IntFormat],
    count: int | None,
    tick: _Ticker,
) -> Observed:
    ranges = _RangeHooks(targets)
    samples = _run_pass(executor, _limited(feeds, count), ranges, tick)
    return samples, _checked(ranges.observed(), targets, samples), ranges.numel, {}


def _observe_one_pass(
    executor: Executor,
    feeds: Feeds,
    targets: Mapping[str, IntFormat],
    observer: Observer,
    count: int | None,
    tick: _Ticker,
) -> Observed:
    # The most bins the observer can ask for is for signed data (zero-anchored ranges double).
    capacities = {
        name: _OVERSAMPLE * observer.histogram_range(-1.0, 1.0, fmt)[2]
        for name, fmt in targets.items()
    }
    hooks = _StreamHooks(capacities, executor.device)
    samples = _run_pass(executor, _limited(feeds, count), hooks, tick)
    observed = _checked(hooks.observed(), targets, samples)
    histograms = {
        name: growing.histogram(*observer.histogram_range(*observed[name], targets[name]))
        for name, growing in hooks.histograms.items()
    }
    return samples, observed, hooks.numel, histograms


def _observe_two_passes(
    executor: Executor,
    feeds: Feeds,
    targets: Mapping[str, IntFormat],
    observer: Observer,
    count: int | None,
    tick: _Ticker,
) -> Observed:
    ranges = _RangeHooks(targets)
    samples = _run_pass(executor, _limited(feeds, count), ranges, tick)
    observed = _checked(ranges.observed(), targets, samples)
    histograms: dict[str, Histogram] = {}
    for name, (low, high) in observed.items():
        if ranges.numel[name]:
            spec = observer.histogram_range(low, high, targets[name])
            histograms[name] = Histogram.empty(*spec, device=executor.device)
    _run_pass(executor, _limited(feeds, count), _HistogramHooks(histograms), tick)
    return samples, observed, ranges.numel, histograms


def _checked(
    observed: dict[str, tuple[float, float]], targets: Mapping[str, IntFormat], samples: int
) -> dict[str, tuple[float, float]]:
    if samples == 0:
        raise UserError("calibration set is empty", "pass at least one input sample")
    _check_targets(targets, observed)
    return observed


def weight_ranges(
    tensor: Tensor, axis: int | None = None, name: str = "weight"
) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of a weight, per channel along `axis` (shape (C,)) or per tensor (shape ())."""
    if tensor.numel() == 0:
        raise UserError(f"weight {name!r} is empty", "quantize only weights with values")
    values = tensor.detach()
    if axis is None:
        low, high = torch.aminmax(values)
    else:
        low, high = torch.aminmax(values.movedim(axis, 0).reshape(values.shape[axis], -1), dim=1)
    pair = torch.stack([low, high]).to(torch.float64).cpu().numpy()
    if not np.isfinite(pair).all():
        raise UserError(f"weight {name!r} holds NaN or Inf", "fix the model's weights")
    return pair[0], pair[1]


# --- calibration in shards (workers observe, the driver merges) ---------------------------------


@dataclass
class ShardObservation:
    """What one-pass calibration saw of a run of consecutive samples: value counts, exact
    min/max and growing histograms per target. Shards merge exactly (`merge_observations`):
    counts add, min/max take the extremes, and growing histograms re-bin onto the grid of the
    joint range, which is the grid one stream over all the samples ends on. So every method
    (minmax, percentile, mse, entropy) chooses the ranges it chooses in one process."""

    samples: int = 0
    numel: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    histograms: dict[str, GrowingHistogram] = field(default_factory=dict)


def observe_shard(
    executor: Executor,
    feeds: Feeds,
    targets: Mapping[str, IntFormat],
    method: str,
    *,
    start: int = 0,
    percentile: float = 99.999,
    bins: int = 2048,
) -> ShardObservation:
    """One-pass observation of `feeds`, samples numbered from `start` (for error messages)."""
    observer = make_observer(method, ObserverSettings(percentile=percentile, bins=bins))
    capacities = {
        name: _OVERSAMPLE * observer.histogram_range(-1.0, 1.0, fmt)[2]
        for name, fmt in targets.items()
    }
    hooks = _StreamHooks(capacities, executor.device)
    hooks.sample = start
    samples = 0
    with torch.inference_mode():
        for index, feed in enumerate(feeds, start=start):
            executor.run(feed, hooks=hooks)
            hooks.end_sample(index)
            samples += 1
    # minmax reads no histogram: do not ship one
    histograms = hooks.histograms if observer.needs_histogram else {}
    cpu = torch.device("cpu")
    for histogram in histograms.values():
        # A plain CPU tensor (not an inference one), so merging may add to it in place.
        histogram.counts = histogram.counts.to(cpu).clone()
    return ShardObservation(samples, hooks.numel, hooks.ranges, histograms)


def merge_observations(parts: Iterable[ShardObservation]) -> ShardObservation:
    """The shards in sample order, merged (targets keep the order one stream first saw them)."""
    merged = ShardObservation()
    for part in parts:
        merged.samples += part.samples
        for name, count in part.numel.items():
            merged.numel[name] = merged.numel.get(name, 0) + count
        for name, (low, high) in part.ranges.items():
            seen_low, seen_high = merged.ranges.get(name, (low, high))
            merged.ranges[name] = (min(low, seen_low), max(high, seen_high))
        for name, histogram in part.histograms.items():
            if name in merged.histograms:
                merged.histograms[name].merge(histogram)
            else:
                merged.histograms[name] = histogram
    return merged


def stats_from_observation(
    observation: ShardObservation,
    targets: Mapping[str, IntFormat],
    method: str,
    device: str,
    *,
    percentile: float = 99.999,
    bins: int = 2048,
) -> CalibrationStats:
    """The clip ranges of a merged observation, as `calibrate(..., passes=1)` chooses them."""
    observer = make_observer(method, ObserverSettings(percentile=percentile, bins=bins))
    found = {name: observation.ranges.get(name, (0.0, 0.0)) for name in observation.numel}
    observed = _checked(found, targets, observation.samples)
    histograms = {
        name: growing.histogram(*observer.histogram_range(*observed[name], targets[name]))
        for name, growing in observation.histograms.items()
    }
    tensors = {
        name: _tensor_stats(
            name,
            targets[name],
            observed[name],
            observation.numel[name],
            histograms.get(name),
            observer,
        )
        for name in observed
    }
    return CalibrationStats(
        method=method,
        settings=_settings(method, 1, observer.needs_histogram, bins, percentile),
        samples=observation.samples,
        device=device,
        tensors=tensors,
    )
