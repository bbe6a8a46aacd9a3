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
