"""Per-tensor encodings shared by the Qualcomm overrides, AIMET and ONNX Runtime formats.

Exporters turn the plan into one `Encoding` per tensor; importers read a file back into the
same shape and `infer_modes` recovers a precision mode per node from the bit widths of its
output, weight and input tensors. The offset convention is Qualcomm's: `float = (q + offset)
* scale` on an unsigned grid, so offset = -zero_point for unsigned formats and
-zero_point - 2^(bits-1) for signed ones (their codes shifted onto the unsigned grid).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx_ir as ir

from quantlens.export.vendors.base import Dropped, ExportContext, ModelIndex, NodeInfo, Rendered
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.modes import get_mode
from quantlens.schemes.qparams import TensorQuant

FLOAT_BITS = {"fp16": 16, "bf16": 16, "fp32": 32}


@dataclass(frozen=True)
class Encoding:
    bits: int
    is_float: bool = False
    symmetric: bool = False
    scale: tuple[float, ...] = ()
    offset: tuple[int, ...] = ()
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    def bounds(self, channel: int) -> tuple[float, float]:
        """[min, max] of the grid; scale = (max - min) / (2^bits - 1) and offset =
        round(min / scale) give back exactly this scale and offset (float64 arithmetic on
        a float32 scale is exact for up to 16-bit grids)."""
        scale, offset = self.scale[channel], self.offset[channel]
        return offset * scale, ((1 << self.bits) - 1 + offset) * scale


def encode(quant: TensorQuant) -> Encoding:
    fmt = quant.format
    if not isinstance(fmt, IntFormat):
        return Encoding(bits=FLOAT_BITS[fmt.name], is_float=True)
    shift = 1 << (fmt.bits - 1) if fmt.signed else 0
    return Encoding(
        bits=fmt.bits,
        symmetric=fmt.symmetric,
        scale=tuple(float(s) for s in quant.scale),
        offset=tuple(-int(z) - shift for z in quant.zero_point),
        axis=quant.axis,
    )


def plan_encodings(
    ctx: ExportContext, out: Rendered
) -> tuple[dict[str, Encoding], dict[str, Encoding]]:
    """(activations, params) for every quantized tensor, plus float tensors of float layers."""
    acts = {name: encode(q) for name, q in ctx.plan.activations.items()}
    params = {name: encode(q) for name, q in ctx.plan.weights.items()}
    for node in ctx.model.nodes:
        mode = get_mode(ctx.assignment.mode_name(node.name))
        if mode.float_type is None:
            _check_input_bits(node, mode.name, acts, out)
            continue
        floating = Encoding(bits=FLOAT_BITS[mode.float_type], is_float=True)
        if mode.float_type == "bf16":
            out.dropped.append(Dropped(layer=node.name, mode=mode.name, reason=BF16_REASON))
        # An op is float or integer as a whole, so its output and params are float.
        acts.update(dict.fromkeys(node.outputs, floating))
        params.update(dict.fromkeys(node.params, floating))
    return acts, params


BF16_REASON = "Qualcomm float encodings have no bfloat16; written as float16"


def attach_float_model(ctx: ExportContext, out: Rendered) -> None:
    """Tensor-keyed files only match the canonical graph (BatchNorm folded, stable names), so
    the float model the vendor tool must convert is written beside them."""
    if ctx.canonical is None:
        out.warnings.append("no canonical model: convert the model quantlens analysed")
        return
    out.binaries[".float.onnx"] = ir.serde.serialize_model(ctx.canonical).SerializeToString()


def _check_input_bits(
    node: NodeInfo, mode: str, acts: Mapping[str, Encoding], out: Rendered
) -> None:
    wanted = get_mode(mode).act_in_bits
    source = _activation_input(node)
    got = acts.get(source) if source else None
    if wanted and got is not None and not got.is_float and got.bits < wanted:
        out.dropped.append(
            Dropped(
                layer=node.name,
                mode=mode,
                reason=f"reads {source!r} at {got.bits} bits: encodings are per tensor, so its "
                "producer's output precision decides (make the producer a8_w8_a16)",
            )
        )


def _activation_input(node: NodeInfo) -> str | None:
    return next((i for i in node.inputs if i and i not in node.params), None)


def infer_modes(
    model: ModelIndex,
    encodings: Mapping[str, Encoding],
    act_default: int = 8,
    aliases: tuple[Mapping[str, str], Mapping[str, str]] = ({}, {}),
) -> dict[str, str]:
    """A precision mode per node from the bit widths of its tensors (missing = default).
    `aliases` (outputs, inputs) name, for a tensor the file leaves out because the vendor fuses
    it away, the tensor that carries its range; an input also looks through data movement."""
    out_alias, in_alias = aliases
    modes = {}
    for node in model.nodes:
        name = node.outputs[0] if node.outputs else ""
        out = encodings.get(name) or encodings.get(out_alias.get(name, ""))
        weight = encodings.get(node.params[0]) if node.params else None
        source = _activation_input(node) or ""
        inp = encodings.get(source) or encodings.get(in_alias.get(source, ""))
        float_enc = next((e for e in (out, weight) if e is not None and e.is_float), None)
        if float_enc is not None:
            modes[node.name] = "fp16" if float_enc.bits == 16 else "fp32"
            continue
        in_bits = inp.bits if inp is not None and not inp.is_float else act_default
        out_bits = out.bits if out is not None else act_default
        modes[node.name] = _int_mode(weight.bits if weight else None, in_bits, out_bits)
    return modes


def _int_mode(weight_bits: int | None, in_bits: int, out_bits: int) -> str:
    if weight_bits == 4:
        return "a8_w4"
    if weight_bits == 16 or (weight_bits is None and out_bits == 16 and in_bits == 16):
        return "a16_w16"
    if out_bits == 16:
        return "a16_w8" if in_bits == 16 else "a8_w8_a16"
    return "a8_w8"


def tensor_names(model: ModelIndex) -> list[str]:
    names = list(model.graph_inputs)
    for node in model.nodes:
        names += [*node.outputs, *(i for i in node.inputs if i)]
    return list(dict.fromkeys(names))
