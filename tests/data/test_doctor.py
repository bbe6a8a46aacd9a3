"""Each calibration-set warning fires on a crafted bad set and stays silent on a good one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quantlens.data.doctor import MIN_SAMPLES, check_activations, diagnose
from quantlens.data.render import write_samples
from tests.helpers import quantlens


def _codes(calib: Path, data: Path | None = None) -> set[str]:
    return {w.code for w in diagnose(calib, data).warnings}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One rendered set for the whole module (rendering dominates these tests' time)."""
    return write_samples("rotated-pages", MIN_SAMPLES, tmp_path_factory.mktemp("set"), seed=0)


def _copy(rendered: Path, folder: Path, start: int = 0, count: int = MIN_SAMPLES) -> Path:
    folder.mkdir()
    for path in sorted(rendered.glob("*.png"))[start : start + count]:
        shutil.copy(path, folder / path.name)
    return folder


def test_good_set_is_silent(rendered: Path, tmp_path: Path) -> None:
    data = _copy(rendered, tmp_path / "data", 8, 8)
    assert _codes(rendered, data) == set()


def test_too_few(rendered: Path, tmp_path: Path) -> None:
    assert _codes(_copy(rendered, tmp_path / "few", 0, 8)) == {"too-few-samples"}


def test_exact_and_near_duplicates(rendered: Path, tmp_path: Path) -> None:
    folder = _copy(rendered, tmp_path / "dups")
    first = sorted(folder.glob("*.png"))[0]
    shutil.copy(first, folder / "copy.png")
    image = np.asarray(Image.open(first).convert("RGB")).astype(np.int16)
    image[0, 0] = (image[0, 0] + 40) % 255  # one changed pixel: a different file, same picture
    Image.fromarray(image.astype(np.uint8)).save(folder / "near.png")
    codes = _codes(folder)
    assert {"exact-duplicates", "near-duplicates"} <= codes


def test_constant_and_noise_images(rendered: Path, tmp_path: Path) -> None:
    folder = _copy(rendered, tmp_path / "odd")
    Image.new("RGB", (200, 300), (30, 90, 200)).save(folder / "flat.png")
    noise = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    report = diagnose(folder)
    by_code = {w.code: w for w in report.warnings}
    assert by_code["constant-images"].files == ["flat.png"]
    assert by_code["noise-images"].files == ["noise.png"]


def test_domain_shift(rendered: Path, tmp_path: Path) -> None:
    dark = tmp_path / "dark"
    dark.mkdir()
    for path in sorted(rendered.glob("*.png"))[:8]:
        pixels = np.asarray(Image.open(path).convert("RGB")) // 4
        Image.fromarray(pixels.astype(np.uint8)).save(dark / path.name)
    assert "domain-shift" in _codes(rendered, dark)


def test_activation_shift() -> None:
    assert check_activations({"a": 1.0, "b": 2.0}, {"a": 1.2, "b": 2.1}) == []
    warnings = check_activations({"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.1})
    assert warnings[0].code == "activation-shift" and warnings[0].files == ["a: x3.0"]


def test_cli_doctor(rendered: Path, tmp_path: Path) -> None:
    result = quantlens("doctor", "--calib", str(_copy(rendered, tmp_path / "four", 0, 4)))
    assert result.returncode == 0, result.stderr
    assert "too-few-samples" in result.stdout
    assert result.stdout.strip().splitlines()[-1].endswith("1 warning(s)")
