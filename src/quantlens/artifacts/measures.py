"""Measures that several artifacts carry: output distances and emulator/ONNX Runtime agreement."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Distance(BaseModel):
    max_abs_error: float
    relative_error: float
    cosine: float
    snr_db: float

    def worst(self, other: Distance) -> Distance:
        return Distance(
            max_abs_error=max(self.max_abs_error, other.max_abs_error),
            relative_error=max(self.relative_error, other.relative_error),
            cosine=min(self.cosine, other.cosine),
            snr_db=min(self.snr_db, other.snr_db),
        )


class AgreementStats(BaseModel):
    """Emulator vs ONNX Runtime on one output over a set of feeds."""

    worst_snr_db: float
    pooled_snr_db: float = Field(description="10*log10(sum of signal / sum of noise) over feeds")
    argmax_match: float = Field(description="fraction of last-axis argmax positions that agree")
    onnxruntime_self_db: float | None = Field(
        default=None,
        description="pooled SNR of ONNX Runtime with its graph optimizations against ONNX Runtime "
        "without them on the same file: how far float32 summation order alone moves this "
        "quantized model (a deep int8 net turns rounding-tie flips into whole-step errors), "
        "so roughly the closest any other float32 engine can agree",
    )
