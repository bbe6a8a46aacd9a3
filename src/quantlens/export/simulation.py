"""A plan as an ONNX model that ONNX Runtime runs with float kernels: the emulation on ORT.

The emulator computes a plan in torch; a vendor simulator that itself runs in ONNX Runtime
(AIMET-ONNX's QuantizationSimModel, Qualcomm's HTP sim: float ops with custom quantize-
dequantize nodes between them) computes the same grids with MLAS's float kernels, whose
summation order differs from torch's. On a model whose int8 noise is large (ppocr's recognizer:
11 dB) those last-bit differences flip codes that grow through the network, so no torch
emulation gets within ~20 dB of the sim (issue #17). Written as fake quantization in plain ONNX
ops (each quantizer a Div, rounding, Clip, and back; weights stored already on their grid;
biases the vendor adds in float kept float) and run with every graph optimization off (the
sim's custom nodes block every ORT fusion, so its Convs and MatMuls stay the plain kernels),
the same plan is computed by the same kernels: on the three zoo models (qnn-htp, 16 samples)
its output equals AIMET's sim bit for bit (BENCHMARKS.md, issue #17), at about the emulator's
speed (5-18% slower on the zoo models).

Only plans that are fake quantization throughout can be written so: no integer requantization
(`QuantPlan.requant`), no lower-precision float nodes, no raw reads (TPU-MLIR's bm1684x has all
three), and per-tensor activation grids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
from onnx import TensorProto, helper, numpy_helper

from quantlens.emulate.fakequant import QuantHooks
from quantlens.emulate.finite import finite_tensors
from quantlens.errors import UserError
from quantlens.schemes.formats import FloatFormat, IntFormat
from quantlens.schemes.profiles import TargetProfile
from quantlens.schemes.qparams import QuantPlan, TensorQuant

# Float formats the simulation rounds through with a Cast, as the emulator's `round_to_float`.
_CASTS = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
# Round, Equal on floats and Clip with min/max inputs: opset 11 on.
MIN_OPSET = 11
FIX = "use --engine emulator"


def simulation_refusal(profile: TargetProfile) -> str | None:
    """Why `profile`'s plans cannot run as an ONNX simulation (None: they can)."""
    arithmetic = profile.arithmetic
    if arithmetic.requantized_ops:
        return f"{profile.name} computes some ops on integer codes (requantization)"
    if arithmetic.float_precision or arithmetic.float_when_input_exceeds_output:
        return f"{profile.name} runs some ops in a lower float precision"
    if arithmetic.cast_float_boundaries:
        return f"{profile.name} casts float outputs to its integer readers' grids"
    return None


def export_simulation(model: ir.Model, plan: QuantPlan, path: str | Path) -> Path:
    """Write `model` with `plan`'s fake quantization in plain ONNX ops to `path` (atomically)."""
    from quantlens.artifacts import write_bytes_atomic

    _check_plan(plan)
    proto = ir.serde.serialize_model(model)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UserError(f"the model's opset {opset} is below {MIN_OPSET}", FIX)
    _Simulation(proto, plan).apply()
    return write_bytes_atomic(path, proto.SerializeToString())


def _check_plan(plan: QuantPlan) -> None:
    if plan.requant or plan.float_nodes or plan.raw_reads:
        raise UserError(
            f"the {plan.target} plan computes ops the way its chip does (integer "
            "requantization or float islands), which plain ONNX ops do not",
            FIX,
        )
    for spec in plan.activations.values():
        if spec.is_int and (spec.axis is not None or len(spec.scale) != 1):
            raise UserError(f"activation {spec.name!r} has a per-channel grid", FIX)
        if isinstance(spec.format, IntFormat) and spec.format.bits > 16:
            raise UserError(f"activation {spec.name!r} has a {spec.format.bits}-bit grid", FIX)


class _Simulation:
    def __init__(self, model: onnx.ModelProto, plan: QuantPlan) -> None:
        self.graph, self.plan = model.graph, plan
        self.integers = _non_float_tensors(model)
        self.hooks = QuantHooks(plan)
        graph = self.graph
        self.taken = {v for node in graph.node for v in (*node.input, *node.output)}
        self.taken |= {i.name for i in graph.initializer} | {i.name for i in graph.input}
        self.count = 0
        # Every initializer as a tensor once: the finite analysis and the weights' grids read them.
        self.values = {
            i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer
        }
        self.may_be_nan = self._may_be_nan()

    def _may_be_nan(self) -> set[str]:
        """Tensors that can hold NaN before their quantizer (0/0 where a quantized variance
        rounds to zero), where the quantizer must map it as the emulator does: ONNX's Clip
        leaves NaN to the kernel. Every tensor when the plan has a float format (fp16 overflows
        to Inf, and Inf - Inf is NaN), as `QuantHooks` assumes."""
        graph, specs = self.graph, self.plan.activations.values()
        names = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
        if any(isinstance(spec.format, FloatFormat) for spec in specs):
            return names
        steps = [(node.op_type, list(node.input), list(node.output)) for node in graph.node]
        cleaned = frozenset(spec.name for spec in specs if spec.is_int)
        inputs = [i.name for i in graph.input]
        return names - finite_tensors(steps, self.values, inputs, cleaned)

    def apply(self) -> None:
        self._quantize_weights()
        active = {
            name: spec
            for name, spec in self.plan.activations.items()
            if _acts(spec) and name not in self.integers  # the emulator leaves those alone
        }
        nodes: list[onnx.NodeProto] = []
        for name in (i.name for i in self.graph.input):
            if name in active:  # consumers read the quantized copy
                quantized = self._fresh(name)
                nodes.extend(self._quantizer(name, quantized, active[name]))
                self._rename_reads(name, quantized)
        for node in list(self.graph.node):
            nodes.append(node)
            for index, name in enumerate(node.output):
                if name in active:  # the producer writes a float copy; the name is quantized
                    raw = self._fresh(name)
                    node.output[index] = raw
                    nodes.extend(self._quantizer(raw, name, active[name]))
        del self.graph.node[:]
        self.graph.node.extend(nodes)

    def _quantize_weights(self) -> None:
        """Each weight replaced by its values on the grid, computed by the emulator's own
        quantizer (the plan's float biases are not among `hooks.weights`)."""
        initializers = {i.name: i for i in self.graph.initializer}
        for name, quantizer in self.hooks.weights.items():
            found, values = initializers.get(name), self.values.get(name)
            if found is None or values is None:
                raise UserError(f"weight {name!r} is not an initializer of the model", FIX)
            if values.is_floating_point():
                found.CopyFrom(numpy_helper.from_array(quantizer(values).numpy(), name))

    def _rename_reads(self, old: str, new: str) -> None:
        for node in self.graph.node:
            for index, name in enumerate(node.input):
                if name == old:
                    node.input[index] = new

    def _fresh(self, base: str) -> str:
        while True:
            self.count += 1
            name = f"{base}/sim{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def _constant(self, base: str, value: float) -> str:
        name = self._fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    def _quantizer(self, source: str, target: str, spec: TensorQuant) -> list[onnx.NodeProto]:
        if isinstance(spec.format, FloatFormat):
            return self._cast(source, target, spec.format)
        nan = spec.name in self.may_be_nan
        if self.plan.quantizer_rounding == "offset-half-away":
            return list(self._offset_half_away(source, target, spec, nan))
        return list(self._half_to_even(source, target, spec, nan))

    def _codes(
        self, op: str, inputs: list[str], target: str, nan_to: str | None
    ) -> Iterator[onnx.NodeProto]:
        """`op` on `inputs` into `target`, with NaN replaced by the constant `nan_to` (None: the
        tensor cannot hold NaN, nothing to replace)."""
        if nan_to is None:
            yield helper.make_node(op, inputs, [target])
            return
        raw, found = self._fresh(target), self._fresh(target)
        yield helper.make_node(op, inputs, [raw])
        yield helper.make_node("IsNaN", [raw], [found])
        yield helper.make_node("Where", [found, nan_to, raw], [target])

    def _cast(self, source: str, target: str, fmt: FloatFormat) -> list[onnx.NodeProto]:
        low = self._fresh(target)
        return [
            helper.make_node("Cast", [source], [low], to=_CASTS[fmt.name]),
            helper.make_node("Cast", [low], [target], to=TensorProto.FLOAT),
        ]

    def _half_to_even(
        self, source: str, target: str, spec: TensorQuant, nan: bool
    ) -> Iterator[onnx.NodeProto]:
        """clamp(round(x / s), qmin - zp, qmax - zp) x s, NaN on the lowest code, as
        `_fake_quantize_inplace`."""
        assert isinstance(spec.format, IntFormat)
        zero = spec.zero_point[0]
        scale = self._constant(target, spec.scale[0])
        lower = self._constant(target, spec.format.qmin - zero)
        upper = self._constant(target, spec.format.qmax - zero)
        divided, rounded, clipped = (self._fresh(target) for _ in range(3))
        yield helper.make_node("Div", [source, scale], [divided])
        yield from self._codes("Round", [divided], rounded, lower if nan else None)
        yield helper.make_node("Clip", [rounded, lower, upper], [clipped])
        yield helper.make_node("Mul", [clipped, scale], [target])

    def _offset_half_away(
        self, source: str, target: str, spec: TensorQuant, nan: bool
    ) -> Iterator[onnx.NodeProto]:
        """x / s plus the unsigned grid's zero point, rounded half away from zero, clamped to
        the grid, back as (code - offset) x s: `OffsetHalfAwayQuantizer`. Round is half to
        even; a tie it rounded down (y - round(y) = 0.5, exact in float32) goes one up, and a
        negative y clamps to code 0 whichever way its tie went; NaN lands on the top code."""
        assert isinstance(spec.format, IntFormat)
        fmt = spec.format
        shift = 2 ** (fmt.bits - 1) if fmt.signed else 0
        scale = self._constant(target, spec.scale[0])
        offset = self._constant(target, spec.zero_point[0] + shift)
        half = self._constant(target, 0.5)
        low, top = self._constant(target, 0.0), self._constant(target, 2.0**fmt.bits - 1)
        names = [self._fresh(target) for _ in range(9)]
        divided, shifted, rounded, rest, tie, step, codes, clipped, centred = names
        yield helper.make_node("Div", [source, scale], [divided])
        yield helper.make_node("Add", [divided, offset], [shifted])
        yield helper.make_node("Round", [shifted], [rounded])
        yield helper.make_node("Sub", [shifted, rounded], [rest])
        yield helper.make_node("Equal", [rest, half], [tie])
        yield helper.make_node("Cast", [tie], [step], to=TensorProto.FLOAT)
        yield from self._codes("Add", [rounded, step], codes, top if nan else None)
        yield helper.make_node("Clip", [codes, low, top], [clipped])
        yield helper.make_node("Sub", [clipped, offset], [centred])
        yield helper.make_node("Mul", [centred, scale], [target])


def _non_float_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors of `model` known to hold something other than float32 (types inferred where
    the file does not write them)."""
    typed = onnx.shape_inference.infer_shapes(model).graph
    values = (*typed.input, *typed.value_info, *typed.output)
    kinds = {v.name: v.type.tensor_type.elem_type for v in values}
    return {name for name, kind in kinds.items() if kind not in (TensorProto.FLOAT, 0)}


def _acts(spec: TensorQuant) -> bool:
    """Quantizers that change values (an fp32 "rounding" does not)."""
    return not (isinstance(spec.format, FloatFormat) and spec.format.name == "fp32")
