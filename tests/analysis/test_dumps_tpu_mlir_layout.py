"""TPU-MLIR dumps in TPU-MLIR's own layout, put back in ours before they are compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from quantlens.analysis.dumps import read_dump


def _dfl_model() -> ir.Model:
    """yolov8's DFL head: Transpose (0, 3, 1, 2) -> Softmax(-1) -> Transpose (0, 3, 2, 1)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["a"], name="t1", perm=[0, 3, 1, 2]),
        helper.make_node("Softmax", ["a"], ["b"], name="sm", axis=-1),
        helper.make_node("Transpose", ["b"], ["out"], name="t2", perm=[0, 3, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "dfl",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 4, 6])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ir.serde.deserialize_model(proto)


def test_a_reordered_transpose_is_read_back_in_our_layout(tmp_path: Path) -> None:
    """TPU-MLIR runs Transpose -> Softmax -> Transpose as one Permute (both perms) and a
    Softmax; the Permute's dump (`<a>_Transpose_r_reordered`) holds `a` permuted by the
    second Transpose (doclayout-yolov8n: (1, 16, 4, 21504) for our (1, 21504, 4, 16))."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 16, 6)).astype(np.float32)  # two samples, stacked
    ours = x.transpose(0, 3, 1, 2)
    vendor = np.ascontiguousarray(ours.transpose(0, 3, 2, 1))  # the one Permute's output
    assert vendor.shape == (2, 16, 4, 6)
    np.savez(tmp_path / "tpu.npz", **{"x": x, "a_Transpose_r_reordered": vendor})
    dump = read_dump(tmp_path / "tpu.npz", "tpu-mlir", _dfl_model())
    assert dump.names["a"] == "a_Transpose_r_reordered"
    np.testing.assert_array_equal(dump.arrays["a"], ours)
