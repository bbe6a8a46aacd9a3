"""Shared fixtures: the small models and calibration folders most pipeline tests start from.

Model builders live in `tests/models.py` (ONNX graphs built in code); fixtures here write them
and a calibration set to disk once per test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.models import conv_bn_model


def npz_folder(folder: Path, count: int, shape: tuple[int, ...] = (1, 3, 8, 8)) -> Path:
    """`count` random inputs named after the models' input `x`, seeded so runs repeat."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        np.savez(folder / f"{i:03d}.npz", x=rng.standard_normal(shape).astype(np.float32))
    return folder


@pytest.fixture
def conv_bn(tmp_path: Path) -> tuple[Path, Path]:
    """(model path, calibration folder) of the small named conv-BN classifier."""
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    return model, npz_folder(tmp_path / "calib", 6)
