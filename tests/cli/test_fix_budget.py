"""`--fix-budget` reaches the learned fixes from the command line: with no time at all,
AdaRound leaves every layer on nearest rounding and says so in quantize.json."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from tests.helpers import npz_folder, quantlens
from tests.models import conv_bn_model


def _adaround_record(run: Path) -> dict[str, object]:
    report = json.loads((run / "quantize.json").read_text())
    return next(f for f in report["optimize"]["fixes"] if f["name"] == "adaround")


def test_quantize_fix_budget_caps_adaround(tmp_path: Path) -> None:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    calib = npz_folder(tmp_path / "calib", 4)
    capped, free = tmp_path / "capped", tmp_path / "free"
    args = ("quantize", str(model), "--calib", str(calib), "--adaround")
    result = quantlens(*args, "--fix-budget", "0", "-o", str(capped))
    assert result.returncode == 0, result.stderr
    record = _adaround_record(capped)
    assert record["weights_changed"] == []
    assert any("time budget of 0 s spent" in line for line in record["changes"]), record
    result = quantlens(*args, "-o", str(free))  # no flag: no limit, the layers are rounded
    assert result.returncode == 0, result.stderr
    assert not any("time budget" in line for line in _adaround_record(free)["changes"])
