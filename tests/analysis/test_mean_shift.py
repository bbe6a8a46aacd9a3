"""Issue #22: `analyze` suggests bias correction where a layer's error is a per-channel mean
shift (what the free fix removes) instead of buying 16 bits for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.analysis.diagnostics import suggest
from quantlens.analysis.metrics import ErrorSums
from quantlens.artifacts.analysis import Diagnostics, LayerAnalysis, NoiseStats
from quantlens.pipeline.analyze import AnalyzeOptions, analyze_model
from quantlens.schemes.profiles import get_profile


def test_mean_shift_share_of_the_error() -> None:
    rng = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 4, 8, 8, generator=rng)
    shifted = ErrorSums()
    shifted.add(ref, ref + torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1))
    assert shifted.mean_shift_share == pytest.approx(1.0)
    noisy = ErrorSums()
    noise = torch.randn(2, 4, 8, 8, generator=rng) * 0.1
    noisy.add(ref, ref + noise - noise.mean(dim=(0, 2, 3), keepdim=True))
    assert noisy.mean_shift_share == pytest.approx(0.0, abs=1e-9)
    sequence = ErrorSums()  # axis 1 changes length: no channels to speak of
    sequence.add(torch.ones(1, 3, 2), torch.zeros(1, 3, 2))
    sequence.add(torch.ones(1, 5, 2), torch.zeros(1, 5, 2))
    assert sequence.mean_shift_share is None


def _layer(op_type: str, share: float) -> LayerAnalysis:
    stats = NoiseStats(snr_db=12.0, cosine=0.99, mse=0.1, max_abs_error=1.0, mean_shift_share=share)
    return LayerAnalysis(
        id="l", op_type=op_type, measured_at="y", accumulated=stats, diagnostics=Diagnostics()
    )


def test_suggests_bias_correction_for_a_shifted_conv() -> None:
    profile = get_profile("hailo8")
    assert suggest(_layer("Conv", 0.8), profile, "percentile").action == "bias-correction"
    assert suggest(_layer("Gemm", 0.6), profile, "percentile").action == "bias-correction"
    assert suggest(_layer("Conv", 0.2), profile, "percentile").action != "bias-correction"
    assert suggest(_layer("Add", 0.9), profile, "percentile").action != "bias-correction"


def _rounding_down_model() -> onnx.ModelProto:
    """A 1x1 conv on non-negative inputs whose weights all sit 0.45 of a grid step above a
    small code (one weight per channel at 127 steps fixes the per-channel scale; it reads
    input channel 0, which the data keeps negative, so the ReLU zeroes it): each rounds down,
    so the int8 error is mostly the same shift on every output of a channel, at ~6 dB SNR."""
    rng = np.random.default_rng(0)
    steps = rng.integers(0, 2, size=(8, 16)).astype(np.float32) + 0.45
    steps[:, 0] = 127.0
    w = (steps * np.float32(0.01)).reshape(8, 16, 1, 1).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w", "b"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "shift",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(8, np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_analyze_suggests_bias_correction(tmp_path: Path) -> None:
    model = tmp_path / "shift.onnx"
    onnx.save(_rounding_down_model(), model)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
        x[:, 0] = -np.abs(x[:, 0])
        np.savez(calib / f"{i}.npz", x=x)
    options = AnalyzeOptions(
        calib=calib, target="ort-cpu", run_dir=tmp_path / "run", mode="accumulated"
    )
    report = analyze_model(model, options)
    conv = report.layer("conv")
    assert conv.accumulated is not None and (conv.accumulated.mean_shift_share or 0) > 0.5
    assert conv.suggestion is not None and conv.suggestion.action == "bias-correction"
