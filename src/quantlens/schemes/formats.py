"""Numeric formats: integer grids (int4/8/16, uint8/16) and float pass-through (fp16/bf16/fp32).

An `IntFormat` is the grid a tensor is quantized onto; its scale and zero point come from
calibration. Symmetric formats have zero point 0; an unsigned symmetric grid covers [0, max]
(TPU-MLIR's UINT8 for non-negative tensors, chosen by the emulation's plan, not by a profile).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

FloatName = Literal["fp16", "bf16", "fp32"]


class IntFormat(BaseModel):
    """An integer grid: `bits` wide, signed or not, symmetric or affine, per tensor or channel."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["int"] = "int"
    bits: Literal[4, 8, 16, 32]
    signed: bool
    symmetric: bool
    per_channel: bool = False
    # Narrow grids drop the most negative code (-127..127), as TPU-MLIR and QNN weights do.
    narrow: bool = False
    # ONNX Runtime's reduce_range: one bit less of range in the same container, a signed grid
    # -64..64 (quant_utils.get_qmin_qmax_for_qType). On x86 without VNNI, MLAS multiplies
    # uint8 x int8 with VPMADDUBSW, which adds two products into an int16 that saturates:
    # 255 x 127 x 2 overflows it, 255 x 64 x 2 does not.
    reduced: bool = False

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        if self.reduced:
            return -(1 << (self.bits - 2))
        low = -(1 << (self.bits - 1))
        return low + 1 if self.narrow else low

    @property
    def qmax(self) -> int:
        if not self.signed:
            return (1 << (self.bits - 1 if self.reduced else self.bits)) - 1
        return 1 << (self.bits - 2) if self.reduced else (1 << (self.bits - 1)) - 1

    @property
    def onnx_type(self) -> str:
        """The ONNX element type of the quantized tensor (for QuantizeLinear's zero point)."""
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    def describe(self) -> str:
        sym = "sym" if self.symmetric else "asym"
        granularity = "per-channel" if self.per_channel else "per-tensor"
        reduced = f" reduced to {self.qmin}..{self.qmax}" if self.reduced else ""
        return f"{self.onnx_type} {sym} {granularity}{reduced}"


class FloatFormat(BaseModel):
    """A float pass-through: the tensor is rounded to this float type (fp32: left alone)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["float"] = "float"
    name: FloatName

    def describe(self) -> str:
        return self.name


Format = IntFormat | FloatFormat


def int_format(
    spec: str, per_channel: bool = False, narrow: bool = False, reduced: bool = False
) -> IntFormat:
    """Parse `uint8-asym`, `int8-sym`, `int16-sym`, ... into an IntFormat."""
    kind, _, mode = spec.partition("-")
    signed = not kind.startswith("u")
    bits = int(kind.lstrip("uint"))
    return IntFormat(
        bits=bits,  # type: ignore[arg-type]
        signed=signed,
        symmetric=mode == "sym",
        per_channel=per_channel,
        narrow=narrow,
        reduced=reduced,
    )
