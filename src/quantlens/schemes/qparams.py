"""Quantization parameters of tensors, and how they follow from a calibrated range.

A `QuantPlan` is what the emulator and every exporter consume: for each quantized tensor, its
grid (`IntFormat`), scale(s) and zero point(s), or a float type it is rounded to. Scales are
stored as float32 values, exactly what a QDQ model's initializers hold, so emulation and the
exported model use the same numbers bit for bit.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact
from quantlens.schemes.formats import FloatFormat, IntFormat

# half-to-even: round(x / scale) half to even, then the zero point (ONNX QuantizeLinear);
# offset-half-away: x / scale + the unsigned grid's zero point in float32, rounded half away
# from zero (AIMET's quantizeDequantize).
QuantizerRounding = Literal["half-to-even", "offset-half-away"]

# Ranges narrower than this are widened (QNN does the same with 0.01; we keep it tiny so that a
# genuinely constant tensor still quantizes exactly).
MIN_RANGE = 1e-8


class TensorQuant(BaseModel):
    """How one tensor is quantized: integer grid with scale/zero point, or a float rounding."""

    name: str
    format: IntFormat | FloatFormat = Field(discriminator="kind")
    scale: list[float] = Field(default_factory=list)
    zero_point: list[int] = Field(default_factory=list)
    axis: int | None = None
    # For a bias: the activation and weight whose scales multiply into its scale.
    bias_of: tuple[str, str] | None = None
    # Calibrated range the parameters came from (after clipping), per channel for weights.
    range_min: list[float] = Field(default_factory=list)
    range_max: list[float] = Field(default_factory=list)

    @property
    def is_int(self) -> bool:
        return isinstance(self.format, IntFormat)


class Requant(BaseModel):
    """An op the vendor computes on integer codes, ending on the output's grid with
    round(value x multiplier / 2^rshift) (`quantlens.emulate.requant` for each kind): "add"
    (one pair per input, TPU-MLIR's INT8 Add), "linear" (Conv/MatMul/Gemm: one pair per output
    channel, or one), "product" (Mul of two tensors), "pool" (AveragePool over `window`
    elements), "concat" (one pair per input), "cast" (a float tensor's codes taken as the
    vendor casts it: rounding the quotient by its scale, no multiplier)."""

    inputs: list[str]
    output: str
    multipliers: list[int]
    rshifts: list[int]
    rounding: str = "half-up"
    kind: str = "add"
    # A linear op's weight quantizer (None: a MatMul of two activations).
    weight: str | None = None
    # A pool's window size (0: its input's whole spatial extent, known at run time), and
    # s_in / s_out, from which the multiplier for a window known at run time follows.
    window: int = 1
    ratio: float = 0.0
    # The node that adds a linear op's bias where the vendor fused a separate bias Add.
    bias_add: str | None = None
    # The output's channel axis, along which a linear op's multipliers and bias lie.
    axis: int = -1
    # A cast's arithmetic: "f32" the quotient by the scale; "f16" round(F16(v x F16(1 / s)))
    # (TPU-MLIR's tpu.Cast from an F16 op to a grid expressed in f16).
    precision: str = "f32"


class FloatNode(BaseModel):
    """A node of an op the vendor runs in a lower float precision inside an integer deploy
    (profile `arithmetic.float_precision`), as the vendor computes it: the inputs it reads
    from integer grids outside the op (input index -> activation), read as
    F16(F16(scale) x code); its constant tensors (input indexes) held in f16; float32
    arithmetic; its output rounded to f16 when `round_output`."""

    precision: str
    reads: dict[int, str] = Field(default_factory=dict)
    # Inputs written by another such op, read as that op computed them (its f16 value, not its
    # cast to an integer grid, which its other readers get), and constants read as they are
    # (not as an integer op quantizes them): input index -> tensor.
    raw: dict[int, str] = Field(default_factory=dict)
    constants: list[int] = Field(default_factory=list)
    round_output: bool = False
    # The op's output (the tensor the vendor casts to its integer grid, if it is quantized).
    output: str = ""
    # Longer than this along its axis (known at run time only), the node runs in float32
    # (profile `float32_axis_above`); 0: no such limit.
    float32_axis_above: int = 0


class QuantPlan(Artifact):
    """Every quantized activation and weight of one model under one assignment."""

    kind = "quant-plan"
    target: str
    activations: dict[str, TensorQuant] = Field(default_factory=dict)
    weights: dict[str, TensorQuant] = Field(default_factory=dict)
    # Nodes whose outputs are rounded to a float type (fp16/bf16 layers), by output tensor.
    notes: list[str] = Field(default_factory=list)
    # Node name -> how the vendor computes it on integer codes (profile `requantized_ops`).
    requant: dict[str, Requant] = Field(default_factory=dict)
    # The emulation adds biases in float: their int32 entries are for the exporters only
    # (profile `arithmetic.float_bias`).
    float_bias: bool = False
    # How every quantizer rounds (profile `arithmetic.quantizer_rounding`).
    quantizer_rounding: QuantizerRounding = "half-to-even"
    # Node name -> how the vendor computes it in a lower float precision (`FloatNode`).
    float_nodes: dict[str, FloatNode] = Field(default_factory=dict)
    # Float-mode nodes reading a float tensor the vendor casts for its integer readers (profile
    # `cast_float_boundaries`): node -> {input index: tensor}, read before that cast.
    raw_reads: dict[str, dict[int, str]] = Field(default_factory=dict)


def int_qparams(low: np.ndarray, high: np.ndarray, fmt: IntFormat) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32) and zero point (int64) for ranges [low, high], elementwise.

    The range is first stretched to contain 0 (so zero is exact, as padding needs). Symmetric
    grids use max(|low|, |high|) and zero point 0 (unsigned ones are meant for [0, max]);
    affine grids spread [low, high] over the whole grid with a rounded zero point, as ONNX
    Runtime's `compute_scale_zp` does.
    """
    low = np.minimum(np.asarray(low, np.float64), 0.0)
    high = np.maximum(np.asarray(high, np.float64), 0.0)
    qmin, qmax = fmt.qmin, fmt.qmax
    if fmt.symmetric:
        # Unsigned symmetric (TPU-MLIR's UINT8, QNN's unsignedsymmetric) is for non-negative
        # ranges: zero point 0 and the whole grid over [0, max].
        absmax = np.maximum(np.maximum(-low, high), MIN_RANGE)
        scale = (absmax / qmax).astype(np.float32)
        return scale, np.zeros_like(scale, dtype=np.int64)
    span = np.maximum(high - low, MIN_RANGE)
    scale = (span / (qmax - qmin)).astype(np.float32)
    zero = np.round(qmin - low / scale.astype(np.float64))
    return scale, np.clip(zero, qmin, qmax).astype(np.int64)
