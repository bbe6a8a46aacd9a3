"""Profiles name their export formats; the vendor formats' own target lists agree with them."""

from __future__ import annotations

from quantlens.export.vendors import list_formats
from quantlens.pipeline.demo import vendor_format
from quantlens.schemes.profiles import list_profiles


def test_every_profile_names_formats_that_exist() -> None:
    known = {f.name for f in list_formats()}
    for profile in list_profiles():
        # Every profile has a vendor file now (ort-cpu-fast: quantize_static overrides too);
        # one placed for ORT's integer kernels would need none, since ORT runs the QDQ export.
        assert profile.export_formats or profile.integer_ops is not None, profile.name
        assert set(profile.export_formats) <= known, profile.name


def test_vendor_target_lists_agree_with_the_profiles() -> None:
    """The formats' `targets` attributes stay for their own users; the profiles are the source."""
    for fmt in list_formats():
        readers = {p.name for p in list_profiles() if fmt.name in p.export_formats}
        assert readers == set(fmt.targets), fmt.name


def test_the_demo_exports_in_the_targets_own_format() -> None:
    assert vendor_format("hailo8") == "hailo"
    assert vendor_format("qnn-htp") == "qnn"
    assert vendor_format("bm1684x") == "tpu-mlir"
