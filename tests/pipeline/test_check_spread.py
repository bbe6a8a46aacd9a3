"""`check` holds the emulator to ONNX Runtime's own spread between its optimization levels when
an output misses the tolerance, and says when random inputs are the likely cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from quantlens.pipeline.check import OutputCheck, _within_ort_spread, onnxruntime_spread
from tests.helpers import quantlens
from tests.models import conv_bn_model, single_op_model


def _feeds(shape: tuple[int, ...], count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def _output(relative_error: float) -> OutputCheck:
    return OutputCheck(
        name="y",
        shape=[1, 10],
        max_abs_error=relative_error,
        relative_error=relative_error,
        cosine=1.0,
        snr_db=100.0,
        passed=False,
    )


def test_spread_is_zero_without_fusions_and_measured_with_them(tmp_path: Path) -> None:
    relu = tmp_path / "relu.onnx"
    onnx.save(single_op_model("Relu"), relu)
    assert onnxruntime_spread(relu, _feeds((1, 4))) == {"y": 0.0}
    conv = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), conv)  # ORT folds the BatchNorm into the conv
    spread = onnxruntime_spread(conv, _feeds((1, 3, 8, 8)))["y"]
    assert 0.0 < spread < 1e-4


def test_an_output_within_the_spread_passes_and_one_beyond_fails(tmp_path: Path) -> None:
    conv = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), conv)
    feeds = _feeds((1, 3, 8, 8))
    spread = onnxruntime_spread(conv, feeds)["y"]
    (inside,), notes = _within_ort_spread(conv, feeds, [_output(spread / 2)], 0.0)
    assert inside.passed and inside.onnxruntime_spread == spread and "passed" in notes[0]
    (beyond,), notes = _within_ort_spread(conv, feeds, [_output(spread * 2)], 0.0)
    assert not beyond.passed and "failed" in notes[0]


def test_a_failure_on_random_inputs_says_to_use_real_ones(tmp_path: Path) -> None:
    # A Sigmoid: ONNX Runtime's levels agree on it, torch's and MLAS's sigmoids differ by ulps
    # (conv_bn's spread covered the emulator's error on an AVX-512 CPU, so it passed there).
    model = tmp_path / "sigmoid.onnx"
    onnx.save(single_op_model("Sigmoid", width=4096), model)
    result = quantlens("check", str(model), "--random", "1", "--tolerance", "-1")
    assert result.returncode == 1
    assert "out of distribution" in result.stdout and "--data" in result.stdout
