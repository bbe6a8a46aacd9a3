"""Canonicalization keeps outputs (checked with ONNX Runtime) and reports what it changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from quantlens.errors import UserError
from quantlens.ir import CanonicalizeOptions, canonicalize, discover_layers, load_model
from tests.models import conv_bn_model


def _ort(model: onnx.ModelProto | ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _canonical(proto: onnx.ModelProto, **opts: object) -> tuple[ir.Model, dict[str, list[str]]]:
    model, reports = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions(**opts))
    return model, {r.name: r.details for r in reports}


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_canonicalize_preserves_outputs(opset: int) -> None:
    proto = conv_bn_model(opset=opset)
    model, details = _canonical(proto, input_shapes={"x": [2, 3, 8, 8]})
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_ort(model, x), _ort(proto, x), rtol=1e-5, atol=1e-5)
    ops = [node.op_type for node in model.graph]
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Dropout" not in ops
    assert "Constant" not in ops and "Shape" not in ops and "Transpose" not in ops
    assert ops == ["Conv", "Relu", "Conv", "Reshape", "MatMul", "Add"]
    assert details["fold-batchnorm"] and details["lift-constants"]
    assert details["fix-input-shapes"] == ["x: [N,3,8,8] -> [2,3,8,8]"]
    if opset < 13:
        assert details["opset-upgrade"] == [f"opset {opset} -> 13"]
    else:
        assert details["opset-upgrade"] == []


def test_stable_generated_names_are_deterministic() -> None:
    first, _ = _canonical(conv_bn_model(unnamed=True))
    second, _ = _canonical(conv_bn_model(unnamed=True))
    names = [n.name for n in first.graph]
    assert names == [n.name for n in second.graph]
    assert all(names) and len(set(names)) == len(names)
    assert names[0] == "Conv_0"


def test_layer_discovery_finds_weights_and_folded_bn() -> None:
    model, _ = _canonical(conv_bn_model(unnamed=False), input_shapes={"x": [1, 3, 8, 8]})
    layers = {layer.id: layer for layer in discover_layers(model).layers}
    assert set(layers) == {"conv1", "conv2", "matmul"}
    assert layers["conv1"].folded_bn == "bn1" and layers["conv2"].folded_bn is None
    assert layers["conv1"].bias is not None  # created by the fold
    assert layers["matmul"].weight_shape == [256, 10]
    assert layers["conv1"].macs == 8 * 8 * 8 * 27


def test_activation_matmul_is_rejected_with_reason() -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="attn")],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph))
    result = discover_layers(model)
    assert not result.layers
    assert result.rejected[0].reason == (
        "attn not quantized: weight is not a constant (both operands are activations)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"this is not a model at all", "corrupt or not an ONNX file"),
        (b'{"json": true}\n', "corrupt or not an ONNX file"),
        (b"\x08\x07\x12\x03abc", "is not an ONNX model"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_model(path)


def test_truncated_model(tmp_path: Path) -> None:
    data = conv_bn_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or not an ONNX file"):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "nope.onnx")


def test_input_shape_errors() -> None:
    proto = conv_bn_model()
    with pytest.raises(UserError, match="does not have"):
        _canonical(proto, input_shapes={"images": [1, 3, 8, 8]})
    with pytest.raises(UserError, match="rank"):
        _canonical(proto, input_shapes={"x": [1, 3, 8]})
    with pytest.raises(UserError, match="fixes it at 3"):
        _canonical(proto, input_shapes={"x": [1, 4, 8, 8]})
