"""Pre-processing math against hand-computed values (no network, no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from quantlens.data import preprocess
from quantlens.data.preprocess import (
    FeedSet,
    InputSpec,
    letterbox_geometry,
    load_image,
    load_inputs,
    preprocess_image,
)
from quantlens.errors import UserError


def _spec(**kw: object) -> InputSpec:
    base: dict[str, object] = {"input_name": "x", "shape": [1, 3, 4, 4], "size": (4, 4)}
    return InputSpec.model_validate({**base, **kw})


def _solid(width: int, height: int, rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (width, height), rgb)


def test_normalisation_and_bgr_order() -> None:
    spec = _spec(color="BGR", mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125))
    out = preprocess_image(_solid(4, 4, (255, 0, 51)), spec)
    assert out.shape == (1, 3, 4, 4) and out.dtype == np.float32
    # channel 0 is blue (51) after the swap; mean/std apply in the spec's channel order
    expected = [(0.2 - 0.1) / 0.5, (0.0 - 0.2) / 0.25, (1.0 - 0.3) / 0.125]
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-6)


def test_nhwc_layout() -> None:
    out = preprocess_image(_solid(8, 6, (10, 20, 30)), _spec(layout="NHWC"))
    assert out.shape == (1, 4, 4, 3)
    np.testing.assert_allclose(out[0, 0, 0], np.array([10, 20, 30]) / 255, rtol=1e-6)


def test_letterbox_geometry_and_padding() -> None:
    assert letterbox_geometry(200, 100, (64, 64)) == (0.32, 0, 16)
    spec = _spec(resize="letterbox", size=(64, 64), pad_value=114.0)
    out = preprocess_image(_solid(200, 100, (255, 255, 255)), spec)
    assert out.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(out[0, :, :16], 114 / 255, rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 48:], 114 / 255, rtol=1e-6)
    np.testing.assert_allclose(out[0, :, 16:48], 1.0, rtol=1e-6)


def test_short_side_crop_keeps_centre() -> None:
    image = Image.new("RGB", (300, 400), (0, 0, 0))
    image.paste((255, 255, 255), (100, 150, 200, 250))  # a white square in the middle
    spec = _spec(resize="short-side-crop", resize_short=6, size=(4, 4), interpolation="nearest")
    out = preprocess_image(image, spec)
    # 300x400 -> 6x8, centre crop rows 2..5, cols 1..4: the square lands on rows 1-2, cols 1-2
    assert out.shape == (1, 3, 4, 4)
    assert out[0, 0, 1:3, 1:3].min() == 1.0 and out[0, 0, 0].max() == 0.0


def test_short_side_crop_needs_large_enough_resize() -> None:
    with pytest.raises(ValidationError):
        _spec(resize="short-side-crop", resize_short=3, size=(4, 4))


def _ocr_spec(**kw: object) -> InputSpec:
    return _spec(
        resize="height-keep-ratio",
        size=(48, 320),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        pad_space="normalized",
        **kw,
    )


@pytest.mark.parametrize(
    ("width", "height", "content", "total"),
    [
        (100, 20, 240, 320),  # narrow: height 48, width 240, padded to the 320 minimum
        (101, 20, 243, 320),  # PaddleOCR rounds the width up...
        (1001, 100, 480, 480),  # ...but truncates a line wider than the minimum
    ],
)
def test_height_keep_ratio_width(width: int, height: int, content: int, total: int) -> None:
    out = preprocess_image(_solid(width, height, (255, 255, 255)), _ocr_spec())
    assert out.shape == (1, 3, 48, total)
    np.testing.assert_allclose(out[0, :, :, :content], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(out[0, :, :, content:], 0.0)


def test_height_keep_ratio_width_multiple_and_pixel_pad() -> None:
    spec = _ocr_spec(width_multiple=8).model_copy(update={"pad_space": "pixel"})
    out = preprocess_image(_solid(1001, 100, (0, 0, 0)), spec)
    assert out.shape == (1, 3, 48, 480)
    spec = spec.model_copy(update={"size": (48, 8), "pad_value": 255.0})
    out = preprocess_image(_solid(101, 20, (0, 0, 0)), spec)
    assert out.shape == (1, 3, 48, 248)  # 243 rounded up to a multiple of 8
    np.testing.assert_allclose(out[0, :, :, 243:], 1.0)  # pixel 255 normalised


def test_linear_resize_matches_opencv_convention() -> None:
    image = Image.fromarray(np.array([[[0] * 3, [255] * 3]], dtype=np.uint8))
    out = preprocess_image(image, _spec(size=(1, 4), interpolation="linear", scale=1.0))
    # cv2.resize(INTER_LINEAR) of [0, 255] to 4 columns: half-pixel centres, edges clamped
    np.testing.assert_array_equal(out[0, 0, 0], [0, 64, 191, 255])


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (4, 4), 100).save(tmp_path / "grey.png")
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    spec = _spec(scale=1.0)
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png", spec), 100.0)
    np.testing.assert_array_equal(load_image(tmp_path / "clear.png", spec), 255.0)


def test_corrupt_and_missing_images_are_user_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(bad, _spec())
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "missing.jpg", _spec())


def test_load_inputs_reads_images_and_arrays_sorted(tmp_path: Path) -> None:
    _solid(4, 4, (255, 255, 255)).save(tmp_path / "b.png")
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 4), dtype=np.float64))
    np.savez(tmp_path / "c.npz", x=np.ones((1, 3, 4, 4)), ids=np.arange(3))
    (tmp_path / "notes.txt").write_text("ignored")
    feeds = load_inputs(tmp_path, _spec())
    assert len(feeds) == 3
    assert feeds[0]["x"].shape == (1, 3, 4, 4) and feeds[0]["x"].dtype == np.float32
    np.testing.assert_allclose(feeds[1]["x"], 1.0)
    assert feeds[2]["ids"].dtype.kind == "i" and feeds[2]["x"].dtype == np.float32


def test_load_inputs_single_file(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros((1, 3, 4, 4), dtype=np.float32))
    assert len(load_inputs(tmp_path / "one.npy", _spec())) == 1


def test_load_inputs_rejects_wrong_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 5, 4), dtype=np.float32))
    with pytest.raises(UserError, match="has shape"):
        load_inputs(tmp_path, _spec())


def test_empty_folder_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("no data here")
    with pytest.raises(UserError, match=r"has no images or \.npy/\.npz files"):
        load_inputs(tmp_path, _spec())
    with pytest.raises(UserError, match="does not exist"):
        load_inputs(tmp_path / "nope", _spec())


def test_load_inputs_reads_files_on_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feeds beyond the cache budget are read from disk when used, not held: streaming passes
    over many large calibration images keep a bounded amount in memory. A slice stays lazy and
    shares the cache."""
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.full((1, 3, 4, 4), i, dtype=np.float32))
    monkeypatch.setattr(preprocess, "CACHE_BYTES", 2 * 3 * 4 * 4 * 4)  # room for two feeds
    feeds = load_inputs(tmp_path, _spec())
    assert feeds.cache.held == 2 * 3 * 4 * 4 * 4
    np.save(tmp_path / "1.npy", np.full((1, 3, 4, 4), 7, dtype=np.float32))
    np.save(tmp_path / "2.npy", np.full((1, 3, 4, 4), 9, dtype=np.float32))
    assert float(feeds[1]["x"].max()) == 1.0  # cached at the check
    assert float(feeds[2]["x"].max()) == 9.0  # over budget: read again
    tail = feeds[1:]
    assert isinstance(tail, FeedSet) and tail.cache is feeds.cache
    assert [float(f["x"].max()) for f in tail] == [1.0, 9.0]


def _rapidocr_det_size(w: int, h: int, limit: int = 736) -> tuple[int, int]:
    """rapidocr 3.10's DetPreProcess.resize (limit_type min), written out as it does."""
    ratio = 1.0
    if min(h, w) < limit:
        ratio = float(limit) / h if h < w else float(limit) / w
    resize_h, resize_w = int(h * ratio), int(w * ratio)
    return int(round(resize_w / 32) * 32), int(round(resize_h / 32) * 32)


@pytest.mark.parametrize(("w", "h"), [(736, 736), (500, 300), (1024, 1448), (2000, 900), (37, 9)])
def test_limit_side_follows_paddleocr_det_resize(w: int, h: int) -> None:
    spec = _spec(resize="limit-side", size=None, limit_side_len=736, shape=[1, 3, -1, -1])
    out = preprocess_image(_solid(w, h, (10, 20, 30)), spec)
    assert out.shape[2:][::-1] == _rapidocr_det_size(w, h)


def test_limit_side_max_shrinks_only_large_images() -> None:
    spec = _spec(resize="limit-side", size=None, limit_side_len=960, limit_type="max")
    assert preprocess.limit_side_size(1920, 1000, spec) == (960, 512)
    assert preprocess.limit_side_size(640, 480, spec) == (640, 480)
    with pytest.raises(ValidationError):
        _spec(resize="limit-side", size=None)


@pytest.mark.parametrize(("width", "content"), [(40, 8), (400, 48)])
def test_cap_width_squeezes_wide_lines_and_pads_to_the_width(width: int, content: int) -> None:
    spec = _spec(resize="height-keep-ratio", size=(4, 48), cap_width=True, pad_space="normalized")
    out = preprocess_image(_solid(width, 20, (255, 255, 255)), spec)
    assert out.shape == (1, 3, 4, 48)
    assert np.all(out[..., :content] > 0.9) and np.all(out[..., content:] == 0)
