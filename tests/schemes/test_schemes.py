"""Formats, modes, the Assignment and the target profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantlens.errors import UserError
from quantlens.schemes.assignment import Assignment, PatternRule
from quantlens.schemes.formats import int_format
from quantlens.schemes.modes import MODES, get_mode
from quantlens.schemes.profiles import get_profile, list_profiles
from quantlens.schemes.qparams import int_qparams


@pytest.mark.parametrize(
    ("spec", "narrow", "qmin", "qmax"),
    [
        ("uint8-asym", False, 0, 255),
        ("int8-sym", False, -128, 127),
        ("int8-sym", True, -127, 127),
        ("uint16-asym", False, 0, 65535),
        ("int16-sym", False, -32768, 32767),
        ("int4-sym", True, -7, 7),
        ("int32-sym", False, -(2**31), 2**31 - 1),
    ],
)
def test_int_format_grids(spec: str, narrow: bool, qmin: int, qmax: int) -> None:
    fmt = int_format(spec, narrow=narrow)
    assert (fmt.qmin, fmt.qmax) == (qmin, qmax)


def test_affine_qparams_match_onnxruntime_convention() -> None:
    scale, zero = int_qparams(np.array([-1.0]), np.array([3.0]), int_format("uint8-asym"))
    assert scale.dtype == np.float32 and scale[0] == np.float32(4.0 / 255)
    assert zero[0] == 64  # round(0 - (-1) / scale)
    # A range that excludes zero is stretched to contain it (zero must be exact for padding).
    scale, zero = int_qparams(np.array([2.0]), np.array([4.0]), int_format("uint8-asym"))
    assert zero[0] == 0 and scale[0] == np.float32(4.0 / 255)


def test_symmetric_per_channel_qparams() -> None:
    fmt = int_format("int8-sym", per_channel=True, narrow=True)
    scale, zero = int_qparams(np.array([-1.0, -0.5]), np.array([0.5, 2.0]), fmt)
    np.testing.assert_array_equal(scale, np.array([1 / 127, 2 / 127], np.float32))
    assert zero.tolist() == [0, 0]


def test_modes() -> None:
    assert get_mode("a8_w8_a16").act_out_bits == 16 and get_mode("a8_w8_a16").act_in_bits == 8
    assert get_mode("fp16").is_float and not get_mode("a16_w16").is_float
    assert set(MODES) == {
        "a8_w8",
        "a8_w4",
        "a16_w16",
        "a16_w8",
        "a8_w8_a16",
        "fp16",
        "bf16",
        "fp32",
    }
    with pytest.raises(UserError, match="unknown precision mode"):
        get_mode("a4_w4")


def test_assignment_resolution_order_and_round_trip(tmp_path: Path) -> None:
    assignment = Assignment(
        target="hailo8",
        default="a8_w8",
        patterns=[
            PatternRule(pattern="/model.22/*", mode="a16_w16"),
            PatternRule(pattern="/model.*", mode="a8_w4"),
        ],
        layers={"/model.22/cv3/Conv": "a8_w8_a16"},
    )
    assert assignment.mode_name("/model.22/cv3/Conv") == "a8_w8_a16"  # exact name first
    assert assignment.mode_name("/model.22/cv2/Conv") == "a16_w16"  # then the first pattern
    assert assignment.mode_name("/model.3/Conv") == "a8_w4"
    assert assignment.mode_name("images_conv") == "a8_w8"  # then the default
    path = assignment.save(tmp_path / "assignment.json")
    assert Assignment.load(path) == assignment


def test_assignment_unknown_layer_suggests_close_names() -> None:
    assignment = Assignment(layers={"conv_12": "a16_w16"})
    with pytest.raises(UserError, match="did you mean conv_2, conv_1"):
        assignment.check_layers(["conv_1", "conv_2", "relu"])
    with pytest.raises(UserError, match="matches no layer"):
        Assignment(patterns=[PatternRule(pattern="head/*", mode="fp32")]).check_layers(["a"])


def test_profiles_load_and_say_what_they_allow() -> None:
    names = {p.name for p in list_profiles()}
    assert names == {
        "hailo8",
        "hailo8l",
        "hailo10h",
        "qnn-htp",
        "bm1684x",
        "ort-cpu",
        "ort-cpu-fast",
    }
    qnn = get_profile("qnn-htp")
    assert qnn.activation_format(8).onnx_type == "uint8" and not qnn.activation_format(8).symmetric
    assert qnn.weight_format(8).per_channel and qnn.weight_format(8).symmetric
    assert get_profile("bm1684x").activation_format(8).onnx_type == "int8"
    with pytest.raises(UserError, match="not allowed on hailo8"):
        get_profile("hailo8").check_mode("fp16", "conv1")
    with pytest.raises(UserError, match="no 16-bit format"):
        get_profile("bm1684x").activation_format(16)
    with pytest.raises(UserError, match="unknown target profile"):
        get_profile("tpu9000")
    for profile in list_profiles():
        assert profile.default_mode in profile.modes
        assert set(profile.cost) == set(profile.modes), profile.name


def test_artifacts_keep_infinite_values(tmp_path: Path) -> None:
    from quantlens.evaluate.distance import Distance
    from quantlens.quantize import OutputQuality

    quality = OutputQuality(
        name="y",
        float_vs_quantized=Distance(
            max_abs_error=0, relative_error=0, cosine=1, snr_db=float("inf")
        ),
    )
    from quantlens.artifacts import Artifact

    class Holder(Artifact):
        kind = "holder"
        items: list[OutputQuality]

    path = Holder(items=[quality]).save(tmp_path / "h.json")
    assert '"Infinity"' in path.read_text()
    assert Holder.load(path).items[0].float_vs_quantized.snr_db == float("inf")
