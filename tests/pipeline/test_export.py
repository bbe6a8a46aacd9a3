"""Vendor export reads the canonical model the quantize run saved, not the original's path."""

from __future__ import annotations

from pathlib import Path

from quantlens.artifacts.folder import RunFolder
from quantlens.quantize import QuantizeOptions, quantize_model
from quantlens.vendor_io import export_vendor


def test_export_reads_the_saved_canonical_model(conv_bn: tuple[Path, Path], tmp_path: Path) -> None:
    model, calib = conv_bn
    run = tmp_path / "run"
    quantize_model(model, QuantizeOptions(calib=calib, target="hailo8", run_dir=run))
    assert RunFolder(run).canonical_model.is_file()
    before = export_vendor(run, "hailo", output=tmp_path / "before.alls")
    model.unlink()  # the original is gone: export must not need it
    after = export_vendor(run, "hailo", output=tmp_path / "after.alls")
    assert Path(after.files[0]).read_text() == Path(before.files[0]).read_text()
    assert after.entries == before.entries
