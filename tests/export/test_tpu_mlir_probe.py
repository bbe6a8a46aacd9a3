"""benchmarks/tpu_mlir_probe.py without TPU-MLIR: its calibration tables and its reading of a
`_tpu.mlir` (which Subs are f16)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tpu_mlir_probe as probe  # noqa: E402


def test_table_replaces_only_the_thresholds_asked() -> None:
    rng = np.random.default_rng(0)
    model = probe.sub_model(rng)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    plain = probe.calibration_table(model, x, {}).splitlines()
    moved = probe.calibration_table(model, x, {"s1": 2.3}).splitlines()
    changed = [(a, b) for a, b in zip(plain, moved, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith("s1_Sub 2.3000000 ")
    names = {line.split()[0] for line in plain[3:]}
    assert {"x", "a_Conv", "s2_Sub", "s4_Add", "y_s3_Conv"} <= names


def test_f16_subs_are_read_from_the_tpu_mlir() -> None:
    mlir = "\n".join(
        [
            '    %9 = "tpu.Sub"(%5, %8) {x} : (tensor<4xf16>, tensor<4xf16>) -> '
            "tensor<4x!quant.calibrated<f16<-1.6:1.6>>> loc(#loc9)",
            '    %12 = "tpu.Sub"(%11, %4) {x} : (tensor<4xui8>, tensor<4x!quant.uniform<i8:f32, '
            "0.01>>) -> tensor<4x!quant.uniform<i8:f32, 0.06>> loc(#loc12)",
            '#loc9 = loc("s1_Sub")',
            '#loc12 = loc("s2_Sub")',
        ]
    )
    assert probe.f16_subs(mlir) == ["s1_Sub"]
