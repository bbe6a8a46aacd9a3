"""TPU-MLIR quantize and calibration tables: grammar, exact thresholds, round trips, errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from quantlens.errors import UserError
from quantlens.export.vendors import get_format
from quantlens.schemes.assignment import Assignment, PatternRule
from quantlens.schemes.qparams import QuantPlan
from quantlens.vendor_io import export_vendor, import_vendor
from tests.test_vendor_helpers import context, effective, make_run, model_index, small_model

TPU = get_format("tpu-mlir")
# The reader (TopToTpuPass::init_qtable): comments, blank lines, or exactly `name mode`.
QTABLE_LINE = re.compile(r"^\S+\s+(INT8|F16|BF16|F32)$")
# The calibration writer: "{} {:.7f} {:.7f} {:.7f}".
CALI_LINE = re.compile(r"^\S+ \d+\.\d{7} -?\d+\.\d{7} -?\d+\.\d{7}$")


def test_tables_follow_the_documented_grammar(tmp_path: Path) -> None:
    assignment = Assignment(layers={"conv2": "fp16", "matmul": "bf16", "relu1": "fp32"})
    run_dir, _ = make_run(tmp_path, "bm1684x", assignment)
    result = export_vendor(run_dir, "tpu-mlir", tmp_path / "out" / "m.qtable")
    qtable, cali = (Path(f) for f in result.files)
    assert qtable.name == "m.qtable" and cali.name == "m.cali_table"
    rows = [ln for ln in qtable.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(QTABLE_LINE.match(row) for row in rows)
    assert rows == ["r1_Relu F32", "c2_Conv F16", "mm_MatMul BF16"]
    cali_rows = [ln for ln in cali.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(CALI_LINE.match(row) for row in cali_rows)
    assert cali_rows[0].startswith("x ")  # graph inputs keep their tensor name
    assert "# op_name    threshold    min    max" in cali.read_text()


def test_thresholds_reproduce_the_plan_scales(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, "bm1684x", Assignment())
    result = export_vendor(run_dir, "tpu-mlir")
    plan = QuantPlan.load(run_dir / "plan.json")
    rows = [ln.split() for ln in Path(result.files[1]).read_text().splitlines() if ln[:1] != "#"]
    by_tensor = {row[0].rsplit("_", 1)[0] if "_" in row[0] else row[0]: row for row in rows}
    checked = 0
    for name, quant in plan.activations.items():
        if name in by_tensor and quant.scale:
            threshold = float(by_tensor[name][1])
            # int8 symmetric: scale = threshold / 127, up to 7 decimals and float32 rounding.
            assert np.isclose(threshold / 127, quant.scale[0], rtol=1e-6, atol=1e-7 / 127)
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize(
    "assignment",
    [
        Assignment(layers={"conv2": "fp16", "matmul": "bf16", "relu1": "fp32"}),
        Assignment(default="fp16", layers={"conv1": "a8_w8"}),
        Assignment(patterns=[PatternRule(pattern="conv*", mode="fp32")]),
    ],
)
def test_round_trip(tmp_path: Path, assignment: Assignment) -> None:
    model = small_model(tmp_path)
    rendered = TPU.export(context(assignment, model, "bm1684x"))
    assert rendered.dropped == []
    index = model_index(model)
    back = TPU.parse(rendered.texts[".qtable"], "m.qtable", index, None)
    assert effective(back, index) == effective(assignment, index)


def test_sixteen_bit_modes_are_dropped(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    assignment = Assignment(layers={"conv1": "a8_w8_a16", "conv2": "a16_w16", "matmul": "fp16"})
    rendered = TPU.export(context(assignment, model, "hailo8"))
    assert {d.layer for d in rendered.dropped} == {"conv1", "conv2"}
    assert all("no 16-bit integer mode" in d.reason for d in rendered.dropped)
    back = TPU.parse(rendered.texts[".qtable"], "m.qtable", model_index(model), None)
    assert back.layers == {"matmul": "fp16"}


def test_export_from_another_target_warns(tmp_path: Path) -> None:
    run_dir, _ = make_run(tmp_path, "hailo8", Assignment(layers={"conv2": "a16_w16"}))
    result = export_vendor(run_dir, "tpu-mlir")
    assert any("quantized for hailo8" in w for w in result.warnings)
    assert [d.layer for d in result.dropped] == ["conv2"]


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ("# head\nc3_Conv F16\n", "m.qtable:2: op 'c3_Conv' is not in the model; did you mean"),
        ("c2_Conv INT7\n", "m.qtable:1: unknown quantize mode 'INT7'"),
        ("c2_Conv W8F16\n", "no quantlens equivalent"),
        ("\nc2_Conv F16 extra\n", "m.qtable:2: malformed"),
    ],
)
def test_bad_tables_are_one_user_error(tmp_path: Path, table: str, needle: str) -> None:
    file = tmp_path / "m.qtable"
    file.write_text(table)
    with pytest.raises(UserError) as err:
        import_vendor(file, "tpu-mlir", small_model(tmp_path))
    assert needle in str(err.value)


def test_lowercase_modes_and_single_tokens_read_like_tpu_mlir(tmp_path: Path) -> None:
    file = tmp_path / "m.qtable"
    file.write_text("c2_Conv f16\nlonely\nmm_MatMul uint8\n")
    back = import_vendor(file, "tpu-mlir", small_model(tmp_path))
    assert back.layers == {"conv2": "fp16"}
