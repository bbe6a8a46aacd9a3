"""Target profiles: what a chip (or runtime) can do, as data.

Each profile is a JSON file beside this module: its number formats per bit width, the precision
modes it accepts, where quantizers sit, its precision-propagation rules and its cost factors
(with where each number comes from). Code reads profiles; it never subclasses them.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from quantlens.errors import UserError
from quantlens.schemes.formats import IntFormat, int_format
from quantlens.schemes.modes import ModeName
from quantlens.schemes.qparams import QuantizerRounding

# The vendor of the profiles whose target runs the QDQ export itself.
ORT_VENDOR = "ONNX Runtime"

Placement = Literal["all-outputs", "weighted-inputs"]


class CostFactor(BaseModel):
    factor: float
    source: str


class SearchRules(BaseModel):
    """How promoting one layer changes its neighbours on this chip (the search's closure)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The mode a promoted layer runs in.
    promote: ModeName = "a16_w16"
    # The mode of a producer whose output must carry the higher precision (Hailo: a8_w8_a16);
    # None where the chip converts between precisions instead.
    output_mode: ModeName | None = None
    # Ops right after a promoted layer that follow it, and it them (TPU-MLIR: Conv + Scale).
    drag_after: list[str] = Field(default_factory=list)
    # Cost of a precision convert at a boundary, in MAC-equivalents per element (QNN).
    convert_factor: float = 0.0
    # Cost of writing one output element, in MAC-equivalents (the analytic cost model).
    element_cost: float = 1.0
    source: str = ""


FusionRules = Literal["none", "tpu-mlir", "qnn-htp", "hailo-dfc"]
Rounding = Literal["half-to-even", "half-away-from-zero"]
# RightShiftRound modes: floor(v + 1/2), or half away from zero.
RequantRounding = Literal["half-up", "half-away-from-zero"]
FloatOpRule = Literal["always", "axis-not-1"]
# How the vendor computes a float op inside an integer deploy: "f16" reads its integer inputs
# as F16(F16(scale) x code), holds its weights in f16, computes in float32 and rounds its output
# to f16; "f16-inputs" the same but leaves the output float32 (TPU-MLIR's interpreter does not
# round a LayerNorm's output); either way the cast to an integer grid is round(F16(v x
# F16(1 / scale))), half away from zero.
FloatPrecision = Literal["f16", "f16-inputs"]


class Arithmetic(BaseModel):
    """The chip's arithmetic as far as it changes what the emulation computes, each rule with
    its source in `sources` (keyed by field name).

    `fusions` names the vendor's fusion rules (`quantlens.ir.vendors`): a fused op is quantized
    once, at its output, and tensors the vendor holds in another tensor's quantizer use it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fusions: FusionRules = "none"
    # A symmetric grid whose calibrated range is non-negative is unsigned (zero point 0,
    # scale max/255): twice the resolution of the signed grid (TPU-MLIR's UINT8).
    unsigned_when_non_negative: bool = False
    # Ops whose output stays signed whatever its range.
    signed_ops: list[str] = Field(default_factory=list)
    # Ops whose integer output is fixed to [0, 1] on an unsigned grid, whatever was calibrated.
    unit_range_ops: list[str] = Field(default_factory=list)
    # Ops that multiply by a positive scalar constant and write their input's integer codes
    # with the scale multiplied by it (TPU-MLIR's MulShift), instead of requantizing.
    scale_by_constant_ops: list[str] = Field(default_factory=list)
    # Ops the vendor runs in float inside an integer deploy (op type -> "always", or
    # "axis-not-1": unless it works along axis 1 of a tensor of rank <= 4): their inputs and
    # what integer ops read of their outputs are quantized, but a graph output they write is not.
    float_ops: dict[str, FloatOpRule] = Field(default_factory=dict)
    # The precision of those float ops (op type -> `FloatPrecision`); absent: float32.
    float_precision: dict[str, FloatPrecision] = Field(default_factory=dict)
    # Op type -> the longest axis its `float_precision` applies to: beyond it the vendor runs
    # the op in float32 (TPU-MLIR's Softmax along an axis longer than half an LMEM bank).
    float32_axis_above: dict[str, int] = Field(default_factory=dict)
    # Op type -> the float precision the vendor runs it in when one of its inputs spans more
    # than its output's range (an activation's threshold, or a constant's largest magnitude,
    # above the output's threshold): TPU-MLIR's Sub, lowered F16 then, INT8 otherwise.
    float_when_input_exceeds_output: dict[str, FloatPrecision] = Field(default_factory=dict)
    # Ops the vendor computes on integer codes with its own multipliers and shifts, emulated as
    # it does (TPU-MLIR's INT8 Add: each input's code rescaled by an 8-bit multiplier and a
    # shift, then summed; its Conv: the integer accumulator times a 32-bit multiplier per
    # channel), instead of in float then quantized: op type -> the rounding of its shift.
    requantized_ops: dict[str, RequantRounding] = Field(default_factory=dict)
    # Weighted ops whose weight the vendor quantizes with one scale for the whole tensor,
    # though the profile's weights are per channel (TPU-MLIR's MatMul and Gemm).
    per_tensor_weight_ops: list[str] = Field(default_factory=list)
    # Op type -> the smallest weight scale the vendor uses (TPU-MLIR's Conv: 1e-5, so a channel
    # of tiny weights gets fewer than 127 codes).
    min_weight_scale: dict[str, float] = Field(default_factory=dict)
    # Weighted ops whose weight, when every value is a multiple of one power of two 2^-k
    # (k >= 0) with codes inside the grid, the vendor keeps exact: the largest such power of
    # two is the scale of every channel (TPU-MLIR's yolov8 DFL Conv: weights 0..15, codes
    # 0..15 at scale 1, where max / qmax per channel would round them).
    power_of_two_weight_ops: list[str] = Field(default_factory=list)
    # Biases added in float by the emulation, as the vendor's simulator adds them, though the
    # plan and the exported files keep their int32 grid (input scale x weight scale), which the
    # vendor's converter reads (AIMET-ONNX's sim does not simulate a loaded int32 bias).
    float_bias: bool = False
    # A bias that does not fit int32 on input scale x weight scale stays float, where the
    # vendor runs such an op as a float kernel on dequantized inputs (ONNX Runtime: any Conv
    # or Gemm its QDQ selectors leave unfused, which 16-bit ones always are), instead of the
    # weight grid being coarsened until it fits (what a chip's int32 accumulator forces).
    float_bias_on_overflow: bool = False
    # An fp32 op's output (an op the assignment keeps in float32) that an integer op reads is
    # cast to that reader's integer grid by the vendor, with the tensor's calibrated range,
    # while float readers read the float value (TPU-MLIR's tpu.Cast between an F32 op and an
    # INT8 user). Off: the integer reader reads the float value (ONNX QDQ's view).
    cast_float_boundaries: bool = False
    # How the vendor's quantizers round a value to its code (`QuantizerRounding`).
    quantizer_rounding: QuantizerRounding = "half-to-even"
    # The rounding of the vendor's requantization, and whether the emulation reproduces it.
    rounding: Rounding = "half-to-even"
    rounding_emulated: bool = True
    sources: dict[str, str] = Field(default_factory=dict)

    def undocumented(self) -> list[str]:
        """Fields set away from their default without a source."""
        defaults = Arithmetic()
        return [
            name
            for name in type(self).model_fields
            if name != "sources"
            and getattr(self, name) != getattr(defaults, name)
            and name not in self.sources
        ]


class TargetProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    vendor: str
    # The vendor file formats (`quantlens export --format`) this chip's toolchain reads, the
    # first being its own: the one place the profile <-> format link is written.
    export_formats: list[str] = Field(default_factory=list)
    description: str
    activation_formats: dict[int, str] = Field(description="bits -> format, e.g. 8: uint8-asym")
    weight_formats: dict[int, str]
    weight_per_channel: bool
    weight_narrow: bool = True
    # 8-bit weights on ONNX Runtime's reduced range (IntFormat.reduced), for x86 CPUs without
    # VNNI, where full-range uint8 x int8 products saturate in MLAS's kernels: only the weights
    # of layers that read 8-bit integers (`weight_format`'s `input_bits`), the only ones ORT
    # fuses into such a kernel.
    weight_reduce_range: bool = False
    bias_bits: int | None = 32
    modes: list[ModeName]
    default_mode: ModeName = "a8_w8"
    # all-outputs: every float tensor a node writes is an integer on the chip;
    # weighted-inputs: only tensors read by Conv/ConvTranspose/Gemm/MatMul are quantized.
    placement: Placement
    float_graph_outputs: bool = False
    # Ops that output the precision they receive (Hailo: concat, feature splitter, shortcut).
    passthrough_ops: list[str] = Field(default_factory=list)
    # Ops whose output reuses its input's quantization parameters (pure data movement).
    shared_scale_ops: list[str] = Field(default_factory=list)
    # With all-outputs placement: only these ops write and read integers (the rest run in
    # float between a DQ and a Q), as where a runtime fuses Q/DQ into integer kernels (ONNX
    # Runtime CPU). None: every node writes integers (an NPU).
    integer_ops: list[str] | None = None
    # Activations an integer op's output quantizer is moved behind (the runtime deletes them
    # before a Q whose grid already clips as they do).
    absorbed_activations: list[str] = Field(default_factory=list)
    # Float ops the QDQ export writes as one ONNX Runtime kernel (com.microsoft) where they sit
    # between a DQ and a Q (`quantlens.export.qdq_lower`): ORT fuses their decomposed form
    # only in a float graph, since its QDQ pass gives each reader of a DQ its own copy.
    ort_kernels: list[str] = Field(default_factory=list)
    cost: dict[str, CostFactor] = Field(default_factory=dict)
    search: SearchRules = Field(default_factory=SearchRules)
    # Where the search's full evaluations run by default (None: ONNX Runtime on an ONNX Runtime
    # target, which runs the export itself, else the emulator). "onnxruntime" on a chip: the
    # plan as an ONNX simulation (`quantlens.export.simulation`), where the vendor's own
    # simulator is ONNX Runtime with quantize nodes (qnn-htp: AIMET-ONNX's sim).
    metric_engine: Literal["emulator", "onnxruntime"] | None = None
    arithmetic: Arithmetic = Field(default_factory=Arithmetic)
    sources: list[str] = Field(default_factory=list)
    notes: str = ""

    def default_engine(self) -> Literal["emulator", "onnxruntime"]:
        """Where a search's full evaluations run unless `--engine` says: `metric_engine`, else
        ONNX Runtime on an ONNX Runtime target (the export itself), else the emulator."""
        if self.metric_engine is not None:
            return self.metric_engine
        return "onnxruntime" if self.vendor == ORT_VENDOR else "emulator"

    def simulated(self) -> bool:
        """Whether a chip's plans are scored by default as their ONNX simulation in ONNX
        Runtime (its vendor's simulator runs there: qnn-htp)."""
        return self.vendor != ORT_VENDOR and self.default_engine() == "onnxruntime"

    def activation_format(self, bits: int) -> IntFormat:
        return int_format(self._pick(self.activation_formats, bits, "activations"))

    def weight_format(self, bits: int, input_bits: int | None = 8) -> IntFormat:
        """The grid of a `bits`-bit weight whose layer reads `input_bits`-bit integers (None:
        floats). `weight_reduce_range` narrows an 8-bit weight only under 8-bit inputs: ORT's
        CPU QDQ selectors fuse a Conv/MatMul/Gemm into an integer kernel (QLinearConv,
        QLinearMatMul, QGemm, MatMulIntegerToFloat: MLAS's uint8 x int8 products) only when its
        input and weight are both 8-bit; with a 16-bit or float input the layer runs as a float
        kernel on dequantized values, which nothing saturates, and keeps the full grid."""
        spec = self._pick(self.weight_formats, bits, "weights")
        reduced = self.weight_reduce_range and bits == 8 and input_bits == 8
        return int_format(
            spec, per_channel=self.weight_per_channel, narrow=self.weight_narrow, reduced=reduced
        )

    def bias_format(self) -> IntFormat | None:
        if self.bias_bits is None:
            return None
        return int_format(f"int{self.bias_bits}-sym", per_channel=self.weight_per_channel)

    def check_mode(self, mode: str, layer: str) -> None:
        if mode not in self.modes:
            raise UserError(
                f"mode {mode} for layer {layer!r} is not allowed on {self.name}",
                f"use one of: {', '.join(self.modes)}",
            )

    def _pick(self, table: dict[int, str], bits: int, what: str) -> str:
        if bits not in table:
            raise UserError(
                f"{self.name} has no {bits}-bit format for {what}", f"available: {sorted(table)}"
            )
        return table[bits]


@cache
def list_profiles() -> tuple[TargetProfile, ...]:
    folder = resources.files("quantlens.schemes") / "profiles"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
    return tuple(TargetProfile.model_validate(json.loads(f.read_text())) for f in files)


def get_profile(name: str) -> TargetProfile:
    for profile in list_profiles():
        if profile.name == name:
            return profile
    names = ", ".join(p.name for p in list_profiles())
    raise UserError(f"unknown target profile {name!r}", f"choose one of: {names}")
