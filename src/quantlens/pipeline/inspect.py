"""The inspect stage: what a model holds before and after canonicalization."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir
from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact
from quantlens.emulate import unsupported_nodes
from quantlens.ir import PassReport, discover_layers
from quantlens.ir.layers import Layer, Rejection
from quantlens.ir.passes.opset import opset_of
from quantlens.pipeline.session import prepare


class TensorInfo(BaseModel):
    name: str
    shape: list[int | str]
    dtype: str


class UnsupportedNode(BaseModel):
    node: str
    op_type: str
    domain: str = ""


class InspectReport(Artifact):
    kind = "inspect"
    model: str
    producer: str
    ir_version: int
    opset: int
    opset_canonical: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_histogram: dict[str, int]
    parameters: int
    canonicalization: list[PassReport]
    layers: list[Layer]
    rejected: list[Rejection]
    activations: int
    unsupported: list[UnsupportedNode] = Field(default_factory=list)
    metadata_keys: list[str] = Field(default_factory=list)


def inspect_model(path: Path, input_shapes: dict[str, list[int]] | None = None) -> InspectReport:
    prepared = prepare(path, input_shapes)
    model = prepared.model
    layer_map = discover_layers(model)
    return InspectReport(
        model=str(path),
        producer=prepared.original.producer,
        ir_version=prepared.original.ir_version,
        opset=prepared.original.opset,
        opset_canonical=opset_of(model),
        inputs=[_tensor_info(v) for v in model.graph.inputs],
        outputs=[_tensor_info(v) for v in model.graph.outputs],
        op_histogram=prepared.original.op_histogram,
        parameters=sum(
            v.const_value.size
            for v in model.graph.initializers.values()
            if v.const_value is not None
        ),
        canonicalization=prepared.reports,
        layers=layer_map.layers,
        rejected=layer_map.rejected,
        activations=len(layer_map.activations),
        unsupported=[
            UnsupportedNode(node=n, op_type=o, domain=d) for n, o, d in unsupported_nodes(model)
        ],
        metadata_keys=prepared.original.metadata_keys,
    )


def _tensor_info(value: ir.Value) -> TensorInfo:
    dims: list[int | str] = []
    if value.shape is not None:
        dims = [d if isinstance(d, int) else str(d.value or "?") for d in value.shape]
    dtype = value.dtype.name.lower() if value.dtype is not None else "unknown"
    return TensorInfo(name=value.name or "", shape=dims, dtype=dtype)
