"""Precision modes per layer, named as on Hailo (`a<act in>_w<weights>[_a<act out>]`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantlens.errors import UserError
from quantlens.schemes.formats import FloatName

ModeName = Literal["a8_w8", "a8_w4", "a16_w16", "a16_w8", "a8_w8_a16", "fp16", "bf16", "fp32"]


class PrecisionMode(BaseModel):
    """Bit widths a layer reads, weighs and writes with; `float_type` for float modes."""

    model_config = ConfigDict(frozen=True)
    name: ModeName
    act_in_bits: int | None
    weight_bits: int | None
    act_out_bits: int | None
    float_type: FloatName | None = None
    description: str

    @property
    def is_float(self) -> bool:
        return self.float_type is not None


MODES: dict[str, PrecisionMode] = {
    m.name: m
    for m in (
        PrecisionMode(
            name="a8_w8",
            act_in_bits=8,
            weight_bits=8,
            act_out_bits=8,
            description="8-bit activations in and out, 8-bit weights (the int8 default)",
        ),
        PrecisionMode(
            name="a8_w4",
            act_in_bits=8,
            weight_bits=4,
            act_out_bits=8,
            description="8-bit activations, 4-bit weights (compression)",
        ),
        PrecisionMode(
            name="a16_w16",
            act_in_bits=16,
            weight_bits=16,
            act_out_bits=16,
            description="16-bit activations in and out, 16-bit weights",
        ),
        PrecisionMode(
            name="a16_w8",
            act_in_bits=16,
            weight_bits=8,
            act_out_bits=16,
            description="16-bit activations in and out, 8-bit weights",
        ),
        PrecisionMode(
            name="a8_w8_a16",
            act_in_bits=8,
            weight_bits=8,
            act_out_bits=16,
            description="8-bit in, 8-bit weights, 16-bit out: the producer of a 16-bit layer",
        ),
        PrecisionMode(
            name="fp16",
            act_in_bits=None,
            weight_bits=None,
            act_out_bits=None,
            float_type="fp16",
            description="float16 layer (no integer quantization)",
        ),
        PrecisionMode(
            name="bf16",
            act_in_bits=None,
            weight_bits=None,
            act_out_bits=None,
            float_type="bf16",
            description="bfloat16 layer (no integer quantization)",
        ),
        PrecisionMode(
            name="fp32",
            act_in_bits=None,
            weight_bits=None,
            act_out_bits=None,
            float_type="fp32",
            description="float32 layer (left unquantized)",
        ),
    )
}


def get_mode(name: str) -> PrecisionMode:
    mode = MODES.get(name)
    if mode is None:
        raise UserError(f"unknown precision mode {name!r}", f"use one of: {', '.join(MODES)}")
    return mode
