"""Calibration observers on data with known answers, streaming, errors and the artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.calib import (
    CalibrationStats,
    Histogram,
    ObserverSettings,
    calibrate,
    make_observer,
    observer_names,
    register_observer,
    weight_ranges,
)
from quantlens.calib.entropy import grid_levels, kl_divergences
from quantlens.calib.histogram import GrowingHistogram
from quantlens.calib.mse import expected_sq_error
from quantlens.emulate import Executor
from quantlens.errors import UserError
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.schemes.formats import IntFormat, int_format
from quantlens.schemes.qparams import int_qparams

CPU = torch.device("cpu")
INT8_SYM = int_format("int8-sym")
UINT8_ASYM = int_format("uint8-asym")


# --- helpers -------------------------------------------------------------------------------------


def gaussian_with_outliers(n: int = 200_000, outliers: int = 2, seed: int = 0) -> torch.Tensor:
    """Standard normal values plus `outliers` values at +40 and as many at -30."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(n, generator=generator)
    values[:outliers] = 40.0
    values[outliers : 2 * outliers] = -30.0
    return values


def observe(
    method: str, values: torch.Tensor, fmt: IntFormat, **settings: float
) -> tuple[float, float]:
    """The clip range `method` chooses for `values`, computed the way `calibrate` does."""
    observer = make_observer(method, ObserverSettings(**settings))  # type: ignore[arg-type]
    low, high = values.min().item(), values.max().item()
    hist = None
    if observer.needs_histogram:
        lo, hi, bins = observer.histogram_range(low, high, fmt)
        hist = Histogram.empty(lo, hi, bins, CPU)
        hist.add(values)
    return observer.clip_range(low, high, hist, fmt)


def fake_quant_mse(values: torch.Tensor, clip: tuple, fmt: IntFormat) -> float:
    scale, zero = int_qparams(np.array(clip[0]), np.array(clip[1]), fmt)
    s, z = float(scale), int(zero)
    q = torch.clamp(torch.round(values.double() / s) + z, fmt.qmin, fmt.qmax)
    return float(((q - z) * s - values.double()).pow(2).mean())


def elementwise_model() -> ir.Model:
    """x -> Mul(2) -> Add(-1) -> Relu -> Tanh; also Log(x) as a second output.

    Elementwise only, so one batch of 16 and 16 batches of one compute identical values.
    """
    f32 = np.float32
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["scaled"]),
        helper.make_node("Add", ["scaled", "minus_one"], ["shifted"]),
        helper.make_node("Relu", ["shifted"], ["relu"]),
        helper.make_node("Tanh", ["relu"], ["y"]),
        helper.make_node("Log", ["x"], ["log"]),
    ]
    graph = helper.make_graph(
        nodes,
        "elementwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8]),
            helper.make_tensor_value_info("log", TensorProto.FLOAT, ["N", 4, 8]),
        ],
        [
            numpy_helper.from_array(np.array(2.0, f32), "two"),
            numpy_helper.from_array(np.array(-1.0, f32), "minus_one"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(proto)


def conv_model() -> ir.Model:
    """Conv -> Relu -> GlobalAveragePool, canonicalized like a real model."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        [numpy_helper.from_array(weight, "w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return model


def positive_samples(count: int, batch: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(0.01, 2.0, (batch, 4, 8)).astype(np.float32)} for _ in range(count)]


TARGETS = {"x": UINT8_ASYM, "scaled": INT8_SYM, "relu": UINT8_ASYM, "y": UINT8_ASYM}


# --- observers on synthetic data ----------------------------------------------------------------


def test_registry_lists_the_four_methods_and_rejects_unknown() -> None:
    assert {"minmax", "percentile", "mse", "entropy"} <= set(observer_names())
    with pytest.raises(UserError, match="unknown calibration method 'kl'"):
        make_observer("kl", ObserverSettings())


def test_minmax_keeps_outliers() -> None:
    values = gaussian_with_outliers()
    assert observe("minmax", values, INT8_SYM) == (-30.0, 40.0)


def test_percentile_clips_each_tail_at_its_quantile() -> None:
    values = gaussian_with_outliers()
    low, high = observe("percentile", values, INT8_SYM, percentile=99.9)
    expected = torch.quantile(values.double(), torch.tensor([0.0005, 0.9995], dtype=torch.float64))
    bin_width = 70.0 / 2048
    assert low == pytest.approx(float(expected[0]), abs=bin_width)
    assert high == pytest.approx(float(expected[1]), abs=bin_width)
    # the outliers are beyond the cut; the Gaussian's 99.95 % point is about 3.29
    assert 3.0 < high < 3.6 and -3.6 < low < -3.0


def test_percentile_is_one_sided_for_non_negative_data() -> None:
    values = gaussian_with_outliers().abs()
    low, high = observe("percentile", values, UINT8_ASYM, percentile=99.9)
    assert low == float(values.min())
    expected = float(torch.quantile(values.double(), 0.999))
    assert high == pytest.approx(expected, abs=40.0 / 2048)


@pytest.mark.parametrize("method", ["mse", "entropy"])
@pytest.mark.parametrize("spec", ["int8-sym", "uint8-asym"])
def test_mse_and_entropy_clip_inside_and_beat_minmax(method: str, spec: str) -> None:
    # One outlier a side in a million: rare enough that clipping it pays off on an 8-bit grid.
    values = gaussian_with_outliers(n=1_000_000, outliers=1)
    fmt = int_format(spec)
    clip = observe(method, values, fmt)
    assert -30.0 < clip[0] < 0.0 < clip[1] < 40.0
    assert fake_quant_mse(values, clip, fmt) < 0.5 * fake_quant_mse(values, (-30.0, 40.0), fmt)


def test_mse_finds_the_best_symmetric_threshold() -> None:
    values = gaussian_with_outliers(outliers=20)
    clip = observe("mse", values, INT8_SYM)
    best = min(
        fake_quant_mse(values, (-t, t), INT8_SYM) for t in np.linspace(1.0, 40.0, 391).tolist()
    )
    assert fake_quant_mse(values, clip, INT8_SYM) <= best * 1.001


def test_expected_error_matches_fake_quantization() -> None:
    values = gaussian_with_outliers(outliers=20)
    hist = Histogram.empty(-30.0, 40.0, 2048, CPU)
    hist.add(values)
    lows = torch.tensor([-3.0, -10.0, -30.0], dtype=torch.float64)
    highs = torch.tensor([5.0, 10.0, 40.0], dtype=torch.float64)
    for fmt in (INT8_SYM, UINT8_ASYM):
        predicted = (expected_sq_error(hist, lows, highs, fmt) / hist.total()).tolist()
        for lo, hi, guess in zip(lows.tolist(), highs.tolist(), predicted):
            assert guess == pytest.approx(fake_quant_mse(values, (lo, hi), fmt), rel=0.02)


def tensorrt_entropy_reference(hist: np.ndarray, levels: int, start: int) -> int:
    """TensorRT's pytorch-quantization `_compute_amax_entropy` loop, returning the end bin."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(start, len(bins) + 1):
        space = np.linspace(0, i, num=levels + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        q = np.zeros(i)
        for level in range(levels):
            members = digitized == level
            if members.any():
                q[members] = bins[:i][members].sum() / members.sum()
        p = bins[:i].copy()
        p[-1] += bins[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / q), 0.0)
        divergences.append(terms.sum())
    scores = np.array(divergences)
    return start + len(scores) - 1 - int(np.argmin(scores[::-1]))


def test_entropy_matches_tensorrt_reference() -> None:
    rng = np.random.default_rng(1)
    samples = np.abs(np.concatenate([rng.standard_normal(50_000), rng.uniform(4, 9, 30)]))
    hist, _ = np.histogram(samples, bins=256, range=(0.0, samples.max()))
    ends, kl = kl_divergences(torch.from_numpy(hist.astype(np.float64)), levels=16, start=16)
    ours = int(ends[len(kl) - 1 - int(torch.argmin(kl.flip(0)))])
    assert ours == tensorrt_entropy_reference(hist, levels=16, start=16)


def test_entropy_is_one_sided_for_affine_grids_over_relu_data() -> None:
    assert grid_levels(0.0, 5.0, UINT8_ASYM) == 256  # one-sided: the whole grid
    assert grid_levels(-1.0, 5.0, UINT8_ASYM) == 128  # signed data: folded around zero
    assert grid_levels(0.0, 5.0, INT8_SYM) == 128  # zero-centred grid: half of it
    values = torch.relu(gaussian_with_outliers())
    values[:2] = 8.0
    clip = observe("entropy", values, UINT8_ASYM)
    hist = Histogram.empty(0.0, 8.0, 2048, CPU)
    hist.add(values)
    ends, kl = kl_divergences(hist.counts, levels=256)
    best = int(ends[len(kl) - 1 - int(torch.argmin(kl.flip(0)))])
    assert clip[0] == 0.0 and clip[1] == pytest.approx(best * 8.0 / 2048)
    assert 3.0 < clip[1] < 8.0


def test_histogram_of_one_batch_equals_sum_of_chunks() -> None:
    values = gaussian_with_outliers(n=50_000)
    whole = Histogram.empty(-30.0, 40.0, 2048, CPU)
    whole.add(values)
    parts = Histogram.empty(-30.0, 40.0, 2048, CPU)
    for chunk in values.split(977):
        parts.add(chunk)
    assert torch.equal(whole.counts, parts.counts)
    assert whole.total() == values.numel()


def growing_batches(count: int = 40, seed: int = 0) -> list[torch.Tensor]:
    """Batches whose range keeps growing on both sides, with exact zeros (ReLU-like) mixed in."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for k in range(count):
        values = torch.randn(2000, generator=generator) * (0.1 + 0.2 * k) + 0.05 * k
        values[:100] = 0.0
        batches.append(values)
    return batches


def test_growing_histogram_is_bounded_exact_and_batching_independent() -> None:
    batches = growing_batches()
    streamed = GrowingHistogram(512, CPU)
    for values in batches:
        streamed.add(values, float(values.min()), float(values.max()))
        assert streamed.counts.numel() == 512  # memory does not grow with the data
    everything = torch.cat(batches)
    at_once = GrowingHistogram(512, CPU)
    at_once.add(everything, float(everything.min()), float(everything.max()))
    assert (streamed.exponent, streamed.first) == (at_once.exponent, at_once.first)
    assert torch.equal(streamed.counts, at_once.counts)
    assert int(streamed.counts.sum()) == everything.numel()
    # The grid is as fine as it can be: one step finer would not cover the range.
    width = 2.0**streamed.exponent
    assert (everything.max() - everything.min()) / width > (512 - 1) / 2
    final = streamed.histogram(float(everything.min()), float(everything.max()), 256)
    assert float(final.counts.sum()) == pytest.approx(everything.numel())


def test_growing_histogram_resamples_like_a_fixed_range_one() -> None:
    values = torch.cat(growing_batches())
    low, high = float(values.min()), float(values.max())
    growing = GrowingHistogram(4 * 512, CPU)
    growing.add(values, low, high)
    fixed = Histogram.empty(low, high, 512, CPU)
    fixed.add(values)
    resampled = growing.histogram(low, high, 512)
    # Each final bin is off by at most the mass near its edges: compare cumulative counts.
    error = (resampled.counts.cumsum(0) - fixed.counts.cumsum(0)).abs().max()
    assert float(error) <= 0.5 * float(fixed.counts.max())
    # On a grid with an edge at zero (as entropy's) the exact zeros stay in the bin above it.
    amax = max(-low, high)
    centred = growing.histogram(-amax, amax, 512)
    above_zero = float(((values >= 0) & (values < amax / 256)).sum())
    assert float(centred.counts[256]) == pytest.approx(
        above_zero, abs=0.5 * float((values > 0).sum()) / 256
    )


def growing_feeds(count: int = 12, batch: int = 64) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    feeds = []
    for k in range(count):
        x = rng.standard_normal((batch, 4, 8)) * (0.2 + 0.3 * k) + 0.1 * k
        x[0, 0, :2] = [-((1 + k) ** 1.5), (1 + k) ** 1.7]  # outliers that keep growing
        feeds.append({"x": x.astype(np.float32)})
    return feeds


@pytest.mark.parametrize("method", ["percentile", "mse", "entropy"])
def test_one_pass_agrees_with_two_passes_on_a_growing_range(method: str) -> None:
    executor = Executor(elementwise_model())
    feeds = growing_feeds()
    one = calibrate(executor, feeds, TARGETS, method, percentile=99.9)
    two = calibrate(executor, feeds, TARGETS, method, percentile=99.9, passes=2)
    assert (one.settings["passes"], two.settings["passes"]) == (1, 2)
    outputs = [executor.run(feed, outputs=list(TARGETS)) for feed in feeds]
    for name, fmt in TARGETS.items():
        a, b = one.tensors[name], two.tensors[name]
        assert (a.min, a.max, a.numel) == (b.min, b.max, b.numel)
        assert a.histogram is not None and b.histogram is not None
        assert sum(a.histogram.counts) == pytest.approx(sum(b.histogram.counts))
        width = (b.max - b.min) / 2048  # a bin of the two-pass histogram
        # MSE and KL are flat near their optimum: the clip may move while the error does not.
        tolerance = {"percentile": 1.0, "mse": 8.0, "entropy": 40.0}[method] * width
        assert a.clip_min == pytest.approx(b.clip_min, abs=tolerance)
        assert a.clip_max == pytest.approx(b.clip_max, abs=tolerance)
        values = torch.cat([out[name].flatten() for out in outputs])
        one_error = fake_quant_mse(values, (a.clip_min, a.clip_max), fmt)
        two_error = fake_quant_mse(values, (b.clip_min, b.clip_max), fmt)
        assert one_error <= two_error * (1.01 if method != "entropy" else 1.05)


# --- calibrate() through the executor -----------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_one_big_batch_and_many_small_ones_agree(method: str) -> None:
    executor = Executor(elementwise_model())
    small = positive_samples(16)
    big = [{"x": np.concatenate([feed["x"] for feed in small])}]
    one = calibrate(executor, big, TARGETS, method)
    many = calibrate(executor, small, TARGETS, method)
    assert (one.samples, many.samples) == (1, 16)
    for name in TARGETS:
        a, b = one.tensors[name], many.tensors[name]
        assert (a.min, a.max, a.numel) == (b.min, b.max, b.numel)
        assert (a.clip_min, a.clip_max) == (b.clip_min, b.clip_max)
        assert a.histogram == b.histogram


@pytest.mark.parametrize("passes", [1, 2])
def test_calibrate_reports_ranges_histograms_and_progress(passes: int) -> None:
    executor = Executor(elementwise_model())
    feeds = positive_samples(5, batch=16)
    ticks: list[tuple[int, int]] = []
    stats = calibrate(
        executor,
        feeds,
        TARGETS,
        "percentile",
        percentile=99.0,
        passes=passes,
        progress=lambda d, t: ticks.append((d, t)),
    )
    assert ticks == [(i, 5 * passes) for i in range(1, 5 * passes + 1)]
    assert list(stats.tensors) == ["x", "scaled", "relu", "y"]  # execution order
    x = np.concatenate([f["x"] for f in feeds])
    relu = stats.tensors["relu"]
    assert relu.min == 0.0 and relu.max == pytest.approx(float((2 * x - 1).max()))
    assert relu.numel == x.size
    assert relu.histogram is not None
    assert sum(relu.histogram.counts) == x.size and len(relu.histogram.edges) == 65
    assert relu.histogram.beyond_clip == pytest.approx(0.01, abs=0.002)
    assert relu.histogram.percentiles["p50"] == pytest.approx(
        float(np.median(np.maximum(2 * x - 1, 0))), abs=0.01
    )
    assert stats.settings == {"passes": passes, "bins": 2048, "percentile": 99.0}


def test_conv_model_through_the_executor() -> None:
    executor = Executor(conv_model())
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    names = executor.activation_names()
    targets = dict.fromkeys(names, INT8_SYM)
    stats = calibrate(executor, feeds, targets, "entropy")
    outputs = [executor.run(feed, outputs=names) for feed in feeds]
    for name in names:
        values = torch.cat([out[name].flatten() for out in outputs])
        assert stats.tensors[name].min == pytest.approx(float(values.min()))
        assert stats.tensors[name].max == pytest.approx(float(values.max()))
        assert stats.tensors[name].clip_max <= stats.tensors[name].max


def test_nan_names_the_tensor_and_the_sample() -> None:
    executor = Executor(elementwise_model())
    feeds = positive_samples(4)
    feeds[2]["x"][0, 1, 3] = 0.0  # Log(0) = -inf
    with pytest.raises(UserError, match=r"tensor 'log' holds NaN or Inf on calibration sample 2"):
        calibrate(executor, feeds, {"log": INT8_SYM, "y": INT8_SYM})
    feeds[2]["x"][0, 1, 3] = np.nan
    with pytest.raises(UserError, match=r"tensor 'scaled' .* sample 2"):
        calibrate(executor, feeds, {"scaled": INT8_SYM})


def test_empty_set_unknown_targets_and_one_shot_iterators() -> None:
    executor = Executor(elementwise_model())
    with pytest.raises(UserError, match="calibration set is empty"):
        calibrate(executor, [], TARGETS)
    with pytest.raises(UserError, match="'nope'"):
        calibrate(executor, positive_samples(1), {"nope": INT8_SYM})

    def one_shot() -> Iterator[dict[str, np.ndarray]]:
        yield from positive_samples(3)

    with pytest.raises(UserError, match="reads the calibration set twice"):
        calibrate(executor, one_shot(), TARGETS, "entropy", passes=2)
    with pytest.raises(UserError, match="cannot make 3 passes"):
        calibrate(executor, positive_samples(1), TARGETS, "entropy", passes=3)
    assert calibrate(executor, one_shot(), TARGETS, "minmax", count=2).samples == 2
    assert calibrate(executor, one_shot(), TARGETS, "entropy").samples == 3


def test_json_round_trip(tmp_path: Path) -> None:
    executor = Executor(elementwise_model())
    stats = calibrate(executor, positive_samples(3), TARGETS, "mse")
    path = stats.save(tmp_path / "calibration.json")
    loaded = CalibrationStats.load(path)
    assert loaded == stats
    assert loaded.tensors["relu"].format == UINT8_ASYM
    assert '"kind": "calibration"' in path.read_text()


def test_weight_ranges_per_channel_and_per_tensor() -> None:
    weight = torch.randn(4, 3, 3, 3)
    low, high = weight_ranges(weight, axis=0)
    assert low.shape == (4,)
    np.testing.assert_array_equal(low, weight.reshape(4, -1).min(1).values.double().numpy())
    np.testing.assert_array_equal(high, weight.reshape(4, -1).max(1).values.double().numpy())
    low, high = weight_ranges(weight, axis=-1)
    assert low.shape == (3,)
    low, high = weight_ranges(weight, axis=None)
    assert (float(low), float(high)) == (float(weight.min()), float(weight.max()))
    weight[1, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="'w1' holds NaN"):
        weight_ranges(weight, axis=0, name="w1")


def test_custom_observers_plug_in_by_name() -> None:
    @register_observer("test-half-range")
    class HalfRange:
        needs_histogram = False

        def __init__(self, settings: ObserverSettings) -> None:
            pass

        def histogram_range(self, low: float, high: float, fmt: IntFormat) -> tuple:
            return low, high, 2

        def clip_range(self, low: float, high: float, hist: object, fmt: IntFormat) -> tuple:
            return low / 2, high / 2

    stats = calibrate(
        Executor(elementwise_model()), positive_samples(2), TARGETS, "test-half-range"
    )
    assert stats.tensors["x"].clip_max == pytest.approx(stats.tensors["x"].max / 2)


def test_percentile_keeps_the_full_range_on_16_bit_grids() -> None:
    from quantlens.calib.histogram import Histogram
    from quantlens.calib.observers import ObserverSettings, make_observer
    from quantlens.schemes.formats import int_format

    data = torch.cat([torch.randn(100_000), torch.tensor([50.0])])
    observer = make_observer("percentile", ObserverSettings(percentile=99.9))
    low, high = float(data.min()), float(data.max())
    h_low, h_high, bins = observer.histogram_range(low, high, int_format("uint16-asym"))
    hist = Histogram.empty(h_low, h_high, bins, torch.device("cpu"))
    hist.add(data)
    assert observer.clip_range(low, high, hist, int_format("uint16-asym")) == (low, high)
    clipped = observer.clip_range(low, high, hist, int_format("uint8-asym"))
    assert clipped[1] < 10.0
