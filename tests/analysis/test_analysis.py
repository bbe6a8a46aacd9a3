"""`quantlens.analysis`: three modes on a model whose worst layer is known, and the fix."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from rich.console import Console

from quantlens.analysis import ErrorSums, OutputNoise, batches, spearman
from quantlens.analysis.metrics import HistogramPair, channel_axes, rankdata
from quantlens.analyze import AnalyzeOptions, analyze_model
from quantlens.cli.analyze import render_table
from quantlens.errors import UserError
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.schemes.assignment import Assignment
from tests.helpers import npz_folder
from tests.models import outlier_model

OUTLIER_LAYER = "conv3"


def _npz_folder(folder: Path, count: int) -> Path:
    return npz_folder(folder, count, seed=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("analysis")
    model = root / "outlier.onnx"
    onnx.save(outlier_model(), model)
    return model, _npz_folder(root / "calib", 6)


@pytest.mark.parametrize("target", ["ort-cpu", "hailo8"])
def test_all_modes_find_the_outlier_layer(
    small: tuple[Path, Path], tmp_path: Path, target: str
) -> None:
    model, calib = small
    options = AnalyzeOptions(calib=calib, target=target, run_dir=tmp_path / "run", mode="all")
    report = analyze_model(model, options)
    # conv3 reads the outlier on ort-cpu (input quantizer); on hailo8 conv2 writes it.
    worst = OUTLIER_LAYER if target == "ort-cpu" else "conv2"
    assert report.ranking[0] == worst
    assert report.batch_size > 1
    layer = report.layer(worst)
    assert layer.isolated is not None and layer.gradient is not None
    assert layer.isolated.activation_snr_db is not None and layer.isolated.weight_snr_db is not None
    assert layer.isolated.activation_snr_db < layer.isolated.weight_snr_db
    assert layer.suggestion is not None and "flag" not in layer.suggestion.action
    # The gradient estimate finds the same layer, within a few dB of the measured value (noise
    # is compared per output channel, and the 10 logits of 6 samples make small channels whose
    # first-order estimate is rough: 3.7 dB apart here, 1-2 dB on the other layers); the other
    # layers lie within ~2 dB of each other, so their order is noise on ort-cpu.
    assert report.spearman_gradient_isolated is not None
    gradient_worst = min(report.layers, key=lambda la: la.gradient.snr_db if la.gradient else 0)
    assert gradient_worst.id == worst
    assert layer.isolated.snr_db is not None
    assert abs(layer.gradient.snr_db - layer.isolated.snr_db) < 4.5
    assert layer.scatter is not None and len(layer.scatter.float_values) == 512
    assert layer.histogram is not None and sum(layer.histogram.float_counts) > 0
    saved = json.loads((tmp_path / "run" / "analysis.json").read_text())
    assert saved["kind"] == "analysis" and saved["schema_version"] == 1
    console = Console(record=True, width=200)
    console.print(render_table(report, top=3))
    assert worst in console.export_text()


def test_hailo_compares_after_the_relu(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    report = analyze_model(
        model, AnalyzeOptions(calib=calib, target="hailo8", run_dir=tmp_path, mode="accumulated")
    )
    layer = report.layer("conv1")
    assert layer.measured_at == "r1" and layer.fused == ["Relu"]
    assert layer.nodes == ["conv1", "relu1"]
    assert any("like with like" in note for note in report.notes)
    assert report.ranked_by == "accumulated"


@pytest.mark.parametrize("target", ["ort-cpu", "hailo8"])
def test_promoting_the_worst_layer_raises_output_snr(
    small: tuple[Path, Path], tmp_path: Path, target: str
) -> None:
    model, calib = small
    report = analyze_model(
        model, AnalyzeOptions(calib=calib, target=target, run_dir=tmp_path / "a", mode="isolated")
    )
    base = quantize_model(
        model, QuantizeOptions(calib=calib, target=target, run_dir=tmp_path / "b")
    )
    fixed_path = report.promote(Assignment(target=target), 1).save(tmp_path / "fix.json")
    fixed = quantize_model(
        model,
        QuantizeOptions(calib=calib, target=target, run_dir=tmp_path / "c", assignment=fixed_path),
    )
    assert fixed.worst_snr() > base.worst_snr() + 3


def test_split_only_for_the_worst(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    options = AnalyzeOptions(calib=calib, run_dir=tmp_path, mode="isolated", split=1)
    report = analyze_model(model, options)
    splits = [la.isolated.weight_snr_db is not None for la in report.layers if la.isolated]
    assert splits.count(True) == 1 and report.layer(report.ranking[0]).isolated is not None


def test_unknown_mode(small: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = small
    with pytest.raises(UserError, match="unknown analysis mode"):
        analyze_model(model, AnalyzeOptions(calib=calib, run_dir=tmp_path, mode="partial"))


# --- accumulators and statistics ----------------------------------------------------------------


def test_accumulators_are_fixed_size() -> None:
    sums, hist = ErrorSums(), HistogramPair(16, -4.0, 4.0)
    before = (len(vars(sums)), hist.ref.numel())
    for seed in range(20):
        x = torch.randn(1000, generator=torch.Generator().manual_seed(seed))
        sums.add(x, x + 0.01)
        hist.add(x, x + 0.01)
    assert (len(vars(sums)), hist.ref.numel()) == before
    assert sums.count == 20_000
    assert sums.stats().mse == pytest.approx(1e-4, rel=1e-3)
    assert sums.snr_db == pytest.approx(40.0, abs=0.3)


def test_output_noise_averages_relative_noise() -> None:
    noise = OutputNoise()
    a, b = torch.ones(100), torch.ones(100) * 100
    noise.add({"a": a, "b": b}, {"a": a * 1.1, "b": b})
    # a: relative noise 0.01; b: none -> mean 0.005 -> 23 dB
    assert noise.snr_db == pytest.approx(-10 * math.log10(0.005))


def test_spearman_matches_definition() -> None:
    assert rankdata([3.0, 1.0, 1.0, 2.0]).tolist() == [4.0, 1.5, 1.5, 3.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, math.nan, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert spearman([1, 2], [1, 2]) is None


def test_batches_keep_shapes_apart() -> None:
    """Samples of different widths (text lines) batch only with neighbours of their own width,
    streaming (one batch held at a time)."""
    widths = (16, 24, 16, 16, 16, 24, 24)
    feeds = ({"x": np.zeros((1, 3, 8, w), np.float32)} for w in widths)
    shapes = [b["x"].shape[::3] for b in batches(feeds, 2)]
    assert shapes == [(1, 16), (1, 24), (2, 16), (1, 16), (2, 24)]


def test_outputs_with_a_variable_axis_1_are_pooled() -> None:
    import onnx_ir as ir

    seq = ir.Value(name="seq", shape=ir.Shape(["N", "T", 5]))
    logits = ir.Value(name="logits", shape=ir.Shape(["N", 4]))
    axes = channel_axes([seq, logits])
    assert axes == {"seq": None}
    noise = OutputNoise(axes=axes)
    for steps in (3, 7):  # per-channel sums over axis 1 would not add up across these
        y = torch.ones(1, steps, 5)
        noise.add(
            {"seq": y, "logits": torch.ones(1, 4)}, {"seq": y * 1.1, "logits": torch.ones(1, 4)}
        )
    assert noise.snr_db == pytest.approx(-10 * math.log10(0.01 / 2))


def test_a_head_listing_anchors_before_classes_is_compared_per_class() -> None:
    """[N, anchors, classes] (PicoDet's heads): per anchor, the background anchors' near-zero
    scores would make the mean; per class, the noise on the scores that count shows."""
    import onnx_ir as ir

    head = ir.Value(name="scores", shape=ir.Shape(["N", 600, 10]))
    yolo = ir.Value(name="yolo", shape=ir.Shape([1, 14, 8400]))
    assert channel_axes([head, yolo]) == {"scores": 2}
    scores = torch.full((1, 600, 10), 1e-4)
    scores[0, :6] = 0.9  # six detections, every class
    noisy = scores + 1e-3  # one small offset everywhere: background scores grow tenfold
    per_class, per_anchor = OutputNoise(axes=channel_axes([head])), OutputNoise()
    for noise in (per_class, per_anchor):
        noise.add({"scores": scores}, {"scores": noisy})
    assert per_class.snr_db > 25 > 0 > per_anchor.snr_db


def test_gradient_terms_only_for_the_layers_asked_for(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    """Asking for fewer layers leaves out the others' tensors, not their numbers."""
    from quantlens.analysis import run_gradient
    from quantlens.analyze import prepare_analysis

    model, calib = small
    options = AnalyzeOptions(calib=calib, target="hailo8", run_dir=tmp_path / "run")
    setup = prepare_analysis(model, options, None)
    ex, plan, layers = setup.executor, setup.plan, setup.layers
    every = run_gradient(ex, plan, layers, batches(setup.feeds, 3))
    some = run_gradient(ex, plan, layers[1:3], batches(setup.feeds, 3))
    assert set(some.noise) == {lt.id for lt in layers[1:3]}
    for lt in layers[1:3]:
        for variant in ("both", "weight", "activation"):
            assert some.snr_db(lt.id, variant) == pytest.approx(every.snr_db(lt.id, variant))


def test_channel_powers_match_float64_sums_in_any_layout() -> None:
    from quantlens.analysis.metrics import channel_powers

    x = torch.randn(2, 3, 5, 7).contiguous(memory_format=torch.channels_last) * 1e3
    exact = (x.double() ** 2).sum(dim=(0, 2, 3))
    torch.testing.assert_close(channel_powers(x), exact, rtol=1e-12, atol=0)
    torch.testing.assert_close(channel_powers(x, None), exact.sum().reshape(1))
    labels = torch.tensor([[1, 2], [3, 4]])  # integer outputs (argmax indices) count too
    assert channel_powers(labels).tolist() == pytest.approx([10.0, 20.0], rel=1e-12)


def test_output_noise_with_a_given_signal_equals_computing_it() -> None:
    from quantlens.analysis.metrics import output_powers

    ref = {"y": torch.randn(4, 6, 3), "seq": torch.randn(4, 9, 5)}
    cand = {name: value + 0.01 * torch.randn_like(value) for name, value in ref.items()}
    axes = {"seq": None}
    plain, given = OutputNoise(axes=axes), OutputNoise(axes=axes)
    plain.add(ref, cand)
    given.add(ref, cand, output_powers(ref, axes))
    assert given.snr_db == plain.snr_db
    assert plain.signal["seq"].shape == (1,) and plain.signal["y"].shape == (6,)
