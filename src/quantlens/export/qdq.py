"""Export a QuantPlan as a QDQ ONNX model that ONNX Runtime runs.

Each quantized activation gets QuantizeLinear -> DequantizeLinear right after it is produced, and
each quantized weight is stored as its integer codes followed by DequantizeLinear. The codes come
from the emulator's own `quantize_to_int` with the plan's float32 scales, so the exported model
computes what the emulator computed, bit for bit up to float kernel differences.

Where the target asks for it, ops ONNX Runtime cannot fuse through the Q/DQ are then spelled as
ops it can (`quantlens.export.qdq_lower`): HardSigmoid as the Add it fuses into QLinearAdd, a
spatial ReduceMean as GlobalAveragePool, the erf GELU as its Gelu kernel.

Q/DQ domain: 8-bit grids and int32 biases use the standard ops (opset >= 13 has `axis`).
16-bit and 4-bit grids need opset 21 in the standard domain; below 21 they use ONNX Runtime's
`com.microsoft` Q/DQ (as ORT's own quantizer does), so the rest of the graph is exported exactly
as the emulator ran it instead of going through the opset converter. `opset=21` asks for the
conversion and an all-standard model instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx_ir as ir
import torch
from onnx_ir.passes.common import TopologicalSortPass

from quantlens import __version__
from quantlens.emulate.fakequant import quantize_to_int
from quantlens.errors import UserError
from quantlens.export.qdq_lower import Fresh, lower, lowerings
from quantlens.export.verify import agreement
from quantlens.ir.load import save_model
from quantlens.ir.passes.opset import opset_of, upgrade_opset
from quantlens.schemes.formats import FloatFormat, IntFormat
from quantlens.schemes.qparams import QuantPlan, TensorQuant

__all__ = ["agreement", "code_dtype", "export_qdq", "integer_codes"]

CONTRIB_DOMAIN = "com.microsoft"
# First opset whose standard Q/DQ take int16/uint16/int4/uint4.
STANDARD_WIDE_OPSET = 21
# int4/uint4 tensors need IR version 10 to be stored.
INT4_IR_VERSION = 10
TARGET_KEY = "quantlens.target"
VERSION_KEY = "quantlens.version"

_CODE_DTYPES: dict[str, np.dtype] = {
    "int4": np.dtype(ml_dtypes.int4),
    "uint4": np.dtype(ml_dtypes.uint4),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "uint16": np.dtype(np.uint16),
    "int32": np.dtype(np.int32),
}
_FLOAT_DTYPES = {
    "fp16": (torch.float16, ir.DataType.FLOAT16),
    "bf16": (torch.bfloat16, ir.DataType.BFLOAT16),
}


def export_qdq(
    model: ir.Model, plan: QuantPlan, path: str | Path, *, opset: int | None = None
) -> Path:
    """Write `model` quantized as `plan` to `path` (atomically); `model` is left untouched.

    `opset` upgrades the copy first (21 makes every Q/DQ standard-domain); by default the
    model keeps its opset.
    """
    clone = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    if opset is not None:
        clone, _ = upgrade_opset(clone, opset)
    _Rewriter(clone).apply(plan)
    rewrites = lowerings(plan.target)
    if rewrites:
        lower(clone.graph, rewrites, Fresh.of(clone.graph))
        TopologicalSortPass()(clone)
    clone.metadata_props[TARGET_KEY] = plan.target
    clone.metadata_props[VERSION_KEY] = __version__
    return save_model(clone, path)


def code_dtype(fmt: IntFormat) -> np.dtype:
    """The numpy dtype that holds `fmt`'s codes in the exported model."""
    return _CODE_DTYPES[fmt.onnx_type]


def integer_codes(tensor: torch.Tensor, spec: TensorQuant) -> np.ndarray:
    """The codes the emulator's fake quantization rounds `tensor` to, in the format's dtype."""
    assert isinstance(spec.format, IntFormat)
    fmt = spec.format
    # An int32 grid (a bias) divides in float64, as the emulator and ONNX Runtime's
    # quantize_static do; the scale stays the float32 one the model stores.
    wide = torch.float64 if fmt.bits == 32 else torch.float32
    scale = torch.tensor(spec.scale, dtype=torch.float32).to(wide)
    zero = torch.tensor(spec.zero_point, dtype=torch.float32).to(wide)
    data = tensor.cpu().to(wide)
    codes = quantize_to_int(data, scale, zero, fmt.qmin, fmt.qmax, _axis(spec))
    # The float clamp can land one past an int32 grid's edge (2^31 - 1 is not a float32);
    # clipping here keeps the stored value, and its dequantized float, identical.
    return codes.clamp(fmt.qmin, fmt.qmax).numpy().astype(code_dtype(fmt))


def _axis(spec: TensorQuant) -> int | None:
    return spec.axis if len(spec.scale) > 1 else None


class _Rewriter:
    """Inserts Q/DQ and Cast nodes into one (cloned) model."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = opset_of(model)
        self.fresh = Fresh.of(model.graph)  # a new, unused name from a base name
        self.values = {v.name: v for v in _graph_values(model.graph) if v.name}
        self.raw_reads: set[tuple[str | None, int]] = set()

    def apply(self, plan: QuantPlan) -> None:
        # Float readers of a tensor the vendor casts for its integer readers read it before
        # the cast (`QuantPlan.raw_reads`), as the emulator does.
        self.raw_reads = {
            (node, index) for node, reads in plan.raw_reads.items() for index in reads
        }
        for name, spec in plan.weights.items():
            self._weight(self._initializer(name), spec)
        for name, spec in plan.activations.items():
            self._activation(self._value(name), spec)
        TopologicalSortPass()(self.model)

    # --- lookups --------------------------------------------------------------------------------

    def _initializer(self, name: str) -> ir.Value:
        value = self.graph.initializers.get(name)
        if value is None or value.const_value is None:
            raise UserError(
                f"the plan quantizes weight {name!r}, which the model has no initializer for",
                "build the plan from the same (canonicalized) model you export",
            )
        return value

    def _value(self, name: str) -> ir.Value:
        value = self.values.get(name)
        if value is None:
            raise UserError(
                f"the plan quantizes tensor {name!r}, which the model does not compute",
                "build the plan from the same (canonicalized) model you export",
            )
        return value

    # --- weights --------------------------------------------------------------------------------

    def _weight(self, value: ir.Value, spec: TensorQuant) -> None:
        fmt = spec.format
        if isinstance(fmt, FloatFormat) and fmt.name == "fp32":
            return
        assert value.const_value is not None and value.name is not None
        name = value.name
        weight = torch.from_numpy(np.array(value.const_value.numpy()))
        if isinstance(fmt, IntFormat):
            stored = self._constant(f"{name}_quantized", integer_codes(weight, spec))
            restored = self._dequantize(stored, spec, name)
        else:
            stored = self._constant(f"{name}_{fmt.name}", _rounded(weight, fmt))
            restored = self._cast(stored, ir.DataType.FLOAT, name)
        # The float initializer goes; its readers, and its name, move to the restored value.
        self.graph.initializers.pop(name)
        value.replace_all_uses_with(restored, replace_graph_outputs=True)
        value.name = None
        restored.name = name

    # --- activations ----------------------------------------------------------------------------

    def _activation(self, value: ir.Value, spec: TensorQuant) -> None:
        fmt = spec.format
        if isinstance(fmt, FloatFormat) and fmt.name == "fp32":
            return
        public = value.name or ""
        uses = list(value.uses())
        outputs = [i for i, out in enumerate(self.graph.outputs) if out is value]
        # A node output hands its name to the rounded tensor (so graph outputs keep their public
        # names); a graph input cannot be renamed, so its rounded copy gets a new name.
        if value.producer() is not None:
            value.name, target = self.fresh(f"{public}_float"), public
        else:
            target = self.fresh(f"{public}_dequantized")
        if isinstance(fmt, IntFormat):
            rounded = self._quantize_dequantize(value, spec, public)
        else:
            low = self._cast(value, _FLOAT_DTYPES[fmt.name][1], f"{public}_{fmt.name}")
            rounded = self._cast(low, ir.DataType.FLOAT, public)
        rounded.name, rounded.shape, rounded.type = target, value.shape, value.type
        for node, index in uses:
            if (node.name, index) not in self.raw_reads:
                node.replace_input_with(index, rounded)
        for index in outputs:
            self.graph.outputs[index] = rounded

    def _quantize_dequantize(self, value: ir.Value, spec: TensorQuant, name: str) -> ir.Value:
        assert isinstance(spec.format, IntFormat)
        source = self._narrow_floor(value, spec) if spec.format.narrow else value
        scale, zero = self._qparams(name, spec)
        codes = self._node(
            "QuantizeLinear", [source, scale, zero], f"{name}_quantized", spec, value.shape
        )
        codes.type = ir.TensorType(_onnx_dtype(spec.format))
        return self._node("DequantizeLinear", [codes, scale, zero], name, spec, value.shape)

    def _narrow_floor(self, value: ir.Value, spec: TensorQuant) -> ir.Value:
        """QuantizeLinear saturates at the full grid; a narrow grid's floor comes from a Max.

        Raising x to (qmin - zp) * scale is exact: that value divided by the scale rounds back
        to qmin - zp, and anything above it quantizes as before.
        """
        assert isinstance(spec.format, IntFormat) and value.shape is not None
        scale = np.asarray(spec.scale, np.float32)
        floor = ((spec.format.qmin - np.asarray(spec.zero_point)) * scale).astype(np.float32)
        axis = _axis(spec)
        if axis is not None:
            shape = [1] * len(value.shape)
            shape[axis] = -1
            floor = floor.reshape(shape)
        else:
            floor = floor.reshape(())
        bound = self._constant(f"{value.name}_narrow_floor", floor)
        out = self._emit("Max", [value, bound], {}, "", f"{value.name}_narrow")
        out.shape, out.type = value.shape, value.type
        return out

    # --- node and constant builders -------------------------------------------------------------

    def _dequantize(self, codes: ir.Value, spec: TensorQuant, name: str) -> ir.Value:
        scale, zero = self._qparams(name, spec)
        out = self._node("DequantizeLinear", [codes, scale, zero], name, spec, codes.shape)
        out.type = ir.TensorType(ir.DataType.FLOAT)
        return out

    def _qparams(self, name: str, spec: TensorQuant) -> tuple[ir.Value, ir.Value]:
        assert isinstance(spec.format, IntFormat)
        per_channel = _axis(spec) is not None
        scale = np.asarray(spec.scale, np.float32)
        zero = np.asarray(spec.zero_point).astype(code_dtype(spec.format))
        if not per_channel:
            scale, zero = scale.reshape(()), zero.reshape(())
        return (
            self._constant(f"{name}_scale", scale),
            self._constant(f"{name}_zero_point", zero),
        )

    def _node(
        self,
        op_type: str,
        inputs: list[ir.Value],
        name: str,
        spec: TensorQuant,
        shape: ir.Shape | None,
    ) -> ir.Value:
        assert isinstance(spec.format, IntFormat)
        axis = _axis(spec)
        attrs = {"axis": axis} if axis is not None else {}
        domain = self._domain(spec.format)
        out = self._emit(op_type, inputs, attrs, domain, name)
        out.shape = shape
        return out

    def _cast(self, value: ir.Value, to: ir.DataType, name: str) -> ir.Value:
        out = self._emit("Cast", [value], {"to": to}, "", name)
        out.shape, out.type = value.shape, ir.TensorType(to)
        return out

    def _emit(
        self, op_type: str, inputs: list[ir.Value], attrs: dict, domain: str, name: str
    ) -> ir.Value:
        node = ir.node(op_type, inputs, attrs, domain=domain, name=self.fresh(f"{name}/{op_type}"))
        self.graph.append(node)
        out = node.outputs[0]
        out.name = self.fresh(name)
        return out

    def _constant(self, name: str, array: np.ndarray) -> ir.Value:
        unique = self.fresh(name)
        tensor = ir.Tensor(array.copy(order="C"), name=unique)  # keeps 0-d arrays 0-d
        value = ir.Value(
            name=unique,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(tensor.dtype),
            const_value=tensor,
        )
        self.graph.register_initializer(value)
        if tensor.dtype in (ir.DataType.INT4, ir.DataType.UINT4):
            self.model.ir_version = max(self.model.ir_version, INT4_IR_VERSION)
        return value

    def _domain(self, fmt: IntFormat) -> str:
        if fmt.bits in (8, 32) or self.opset >= STANDARD_WIDE_OPSET:
            return ""
        self.model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
        return CONTRIB_DOMAIN


def _rounded(weight: torch.Tensor, fmt: FloatFormat) -> np.ndarray:
    """The weight in fp16/bf16, rounded by torch exactly as the emulator rounds it."""
    torch_dtype, _ = _FLOAT_DTYPES[fmt.name]
    low = weight.float().to(torch_dtype)
    if torch_dtype is torch.bfloat16:
        return low.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return low.numpy()


def _onnx_dtype(fmt: IntFormat) -> ir.DataType:
    return ir.DataType[fmt.onnx_type.upper()]


def _graph_values(graph: ir.Graph) -> Iterable[ir.Value]:
    yield from graph.inputs
    for node in graph:
        yield from node.outputs
