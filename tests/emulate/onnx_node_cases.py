"""ONNX's own backend node tests, run through the quantlens executor.

The `onnx` package ships the generators of its backend node tests (`onnx.backend.test.case`);
each case is a small model with inputs and expected outputs. We run every case whose ops all have
a kernel in our registry, minus the exclusions below, each with its reason.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import numpy_helper

from quantlens.emulate import Executor, find_kernel
from tests.emulate import (
    node_exclusions_elementwise,
    node_exclusions_nn,
    node_exclusions_reduce,
    node_exclusions_tensor,
)

# Element types torch cannot represent; a case that feeds or expects them is out of scope.
UNSUPPORTED_ELEM_TYPES = {
    onnx.TensorProto.STRING: "strings have no torch tensor type",
    onnx.TensorProto.COMPLEX64: "complex tensors are out of scope for CNN/OCR emulation",
    onnx.TensorProto.COMPLEX128: "complex tensors are out of scope for CNN/OCR emulation",
}
for _name in (
    "FLOAT8E4M3FN",
    "FLOAT8E4M3FNUZ",
    "FLOAT8E5M2",
    "FLOAT8E5M2FNUZ",
    "FLOAT8E8M0",
    "UINT4",
    "INT4",
    "FLOAT4E2M1",
    "UINT2",
    "INT2",
):
    if hasattr(onnx.TensorProto, _name):
        UNSUPPORTED_ELEM_TYPES[getattr(onnx.TensorProto, _name)] = (
            "sub-byte and float8 tensors have no general torch kernels (quantlens emulates them "
            "by fake quantization instead)"
        )

# Cases whose ops we claim but whose exact behaviour we do not emulate, with the reason.
EXCLUSIONS: dict[str, str] = {
    **node_exclusions_elementwise.EXCLUSIONS,
    **node_exclusions_nn.EXCLUSIONS,
    **node_exclusions_reduce.EXCLUSIONS,
    **node_exclusions_tensor.EXCLUSIONS,
}


@functools.cache
def all_cases() -> list[Any]:
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return list(node.collect_testcases(None))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _elem_types(model: onnx.ModelProto) -> set[int]:
    values = [*model.graph.input, *model.graph.output]
    return {v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}


def skip_reason(case: Any) -> str | None:
    """Why a case is not run, or None when it should run and pass."""
    if case.name in EXCLUSIONS:
        return EXCLUSIONS[case.name]
    model = case.model
    if model.functions:
        return "model-local functions are not supported"
    for elem_type in _elem_types(model):
        if elem_type in UNSUPPORTED_ELEM_TYPES:
            return UNSUPPORTED_ELEM_TYPES[elem_type]
    if any(v.type.WhichOneof("value") != "tensor_type" for v in model.graph.input):
        return "sequence/optional inputs are not supported"
    opset = _opset(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or find_kernel(node.op_type, opset) is None:
            return f"no kernel for {node.op_type} at opset {opset}"
    return None


def claimed_ops(case: Any) -> set[str]:
    return {node.op_type for node in case.model.graph.node}


def _array(value: Any) -> np.ndarray:
    # Some generators store TensorProtos (to keep float16/bfloat16 bit patterns exact).
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def run_case(case: Any) -> None:
    """Run one case through the executor and assert every output matches."""
    model = ir.serde.deserialize_model(case.model)
    executor = Executor(model)
    names = [v.name for v in case.model.graph.input]
    out_names = [v.name for v in case.model.graph.output]
    for inputs, expected in case.data_sets:
        feeds = dict(zip(names, (_array(i) for i in inputs)))
        got = executor.run(feeds)
        for name, want in zip(out_names, (_array(e) for e in expected)):
            tensor = got[name].detach().cpu()
            if tensor.dtype == torch.bfloat16:
                tensor, want = tensor.float(), want.astype(np.float32)
            actual = tensor.numpy()
            assert actual.shape == want.shape, f"{name}: shape {actual.shape} != {want.shape}"
            if want.dtype.kind in "fc":
                half = want.dtype == np.float16 or got[name].dtype == torch.bfloat16
                rtol = max(1e-4, case.rtol) if half else 1e-4
                np.testing.assert_allclose(
                    actual.astype(np.float64),
                    want.astype(np.float64),
                    rtol=rtol,
                    atol=1e-6,
                    err_msg=name,
                )
            else:
                np.testing.assert_array_equal(actual.astype(want.dtype), want, err_msg=name)
