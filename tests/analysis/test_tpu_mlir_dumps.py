"""TPU-MLIR dumps aligned to our tensors: a float op's output that only a reshape reads is
compared as the int8 cast TPU-MLIR puts after the reshape (ppocr-v6-rec-small's last F16
LayerNorm, `Add.205_LayerNormalization` -> Reshape in f16 -> `..._si8`)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from quantlens.analysis.dumps import _tpu_mlir
from quantlens.ir import CanonicalizeOptions, canonicalize
from quantlens.ir.index import ModelIndex
from quantlens.ir.vendors.tpu_mlir_ops import graph_facts, tpu_ops

RNG = np.random.default_rng(3)


def _model() -> ir.Model:
    """x -> Sigmoid -> Reshape -> MatMul -> y."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="sigmoid"),
        helper.make_node("Reshape", ["s", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="proj"),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 4, 6], np.int64), "shape"),
        numpy_helper.from_array(RNG.standard_normal((6, 3)).astype(np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model, _ = canonicalize(ir.serde.deserialize_model(proto), CanonicalizeOptions())
    return model


def test_float_op_read_through_a_reshape_is_compared_as_the_cast_after_it() -> None:
    model = _model()
    ops = tpu_ops(ModelIndex.from_model(model), graph_facts(model))
    name = {op.output: op.name for op in ops}
    step = 1 / 255
    codes = RNG.integers(0, 256, (1, 4, 6)).astype(np.float32)
    cast = f"{name['r']}{name['y']}_ui8"
    floats = (codes + RNG.uniform(-0.3, 0.3, codes.shape)) * step
    arrays = {
        name["s"]: floats.reshape(1, 4, 2, 3).astype(np.float32),  # float, no cast of its own
        name["r"]: floats.astype(np.float32),  # the reshape in float
        cast: (codes * step).astype(np.float32),  # what the MatMul reads
        name["y"]: RNG.standard_normal((1, 4, 3)).astype(np.float32),
    }
    dump = _tpu_mlir(arrays, model, {})
    assert dump.names["r"] == cast
    assert dump.names["s"] == f"{cast} (as {name['s']})"
    np.testing.assert_array_equal(dump.arrays["s"], arrays[cast])
    assert "before TPU-MLIR's cast" in dump.skipped[name["s"]]
