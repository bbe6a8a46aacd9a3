"""`.npy`/`.npz` inputs for a model whose input has dynamic dims: no pre-processing spec, the
arrays taken as they are and checked against the graph's dims; images need a spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from PIL import Image

from quantlens.data.preprocess import load_inputs, load_spec_file
from quantlens.errors import UserError
from quantlens.pipeline.session import generic_spec, spec_for
from tests.models import conv_bn_model, dynamic_width_model


def _dynamic(tmp_path: Path) -> tuple[Path, ir.Model]:
    path = tmp_path / "dw.onnx"
    proto = dynamic_width_model()
    path.write_bytes(proto.SerializeToString())
    return path, ir.from_proto(proto)


def test_dynamic_width_spec_has_no_image_size(tmp_path: Path) -> None:
    path, model = _dynamic(tmp_path)
    spec = spec_for(path, model)
    assert spec.size is None
    assert spec.input_name == "x" and spec.shape == [-1, 3, 8, -1]
    assert spec.graph_inputs == {"x": [-1, 3, 8, -1]}


def test_fixed_image_input_keeps_the_stretch_spec() -> None:
    spec = generic_spec(ir.from_proto(conv_bn_model(unnamed=False)))
    assert spec.size == (8, 8) and spec.resize == "stretch"


def test_arrays_of_any_width_are_taken_as_they_are(tmp_path: Path) -> None:
    path, model = _dynamic(tmp_path)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((3, 8, w)).astype(np.float32) for w in (5, 17, 40)]
    for i, array in enumerate(arrays):
        np.save(tmp_path / f"{i}.npy", array)
    np.savez(tmp_path / "3.npz", x=arrays[0][None], label=np.arange(4))
    feeds = load_inputs(tmp_path, spec_for(path, model))
    assert [f["x"].shape[-1] for f in feeds] == [5, 17, 40, 5]
    np.testing.assert_array_equal(feeds[1]["x"][0], arrays[1])
    assert list(feeds[3]) == ["x"], "arrays the model has no input for are not fed"


@pytest.mark.parametrize("shape", [(1, 4, 8, 20), (1, 3, 9, 20), (3, 20)])
def test_arrays_are_checked_against_the_graph_dims(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path, model = _dynamic(tmp_path)
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    with pytest.raises(UserError) as info:
        load_inputs(tmp_path / "bad.npy", spec_for(path, model))
    assert f"{list(shape)}" in info.value.problem and "[?,3,8,?]" in info.value.problem


def test_images_need_a_spec_and_the_error_says_how(tmp_path: Path) -> None:
    path, model = _dynamic(tmp_path)
    Image.new("RGB", (64, 16), "white").save(tmp_path / "line.png")
    with pytest.raises(UserError) as info:
        load_inputs(tmp_path / "line.png", spec_for(path, model))
    assert "line.png" in info.value.problem and "[?,3,8,?]" in info.value.problem
    assert "--spec" in info.value.fix and "size:" in info.value.fix and ".npy" in info.value.fix
    written = tmp_path / "spec.yaml"
    written.write_text("size: [8, 32]\nresize: height-keep-ratio\n")
    spec = load_spec_file(written, spec_for(path, model))
    (feed,) = load_inputs(tmp_path / "line.png", spec)
    assert feed["x"].shape == (1, 3, 8, 32)
