"""Shared fixtures: the small models and calibration folders most pipeline tests start from.

Model builders live in `tests/models.py` (ONNX graphs built in code); fixtures here write them
and a calibration set to disk once per test.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.helpers import npz_folder
from tests.models import conv_bn_model


@pytest.fixture
def conv_bn(tmp_path: Path) -> tuple[Path, Path]:
    """(model path, calibration folder) of the small named conv-BN classifier."""
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    return model, npz_folder(tmp_path / "calib", 6)
