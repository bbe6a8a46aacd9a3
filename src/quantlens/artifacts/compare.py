"""The compare artifact: another runtime's per-layer tensors against float and our emulation."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact


class Agreement(BaseModel):
    """One tensor of the dump against one of ours, pooled over every element of every sample."""

    snr_db: float = Field(description="ours as the signal, the dump's difference as the noise")
    cosine: float
    max_abs_error: float


class ComparedTensor(BaseModel):
    tensor: str = Field(description="our tensor name (canonical model)")
    dump_name: str = Field(description="the name in the dump")
    op_type: str
    vs_float: Agreement
    vs_emulation: Agreement
    # Where our plan quantizes the tensor: the fraction of integer codes that are equal (the
    # dump's values put on our grid), and the step of the dump's own grid (None: no grid seen).
    codes_equal: float | None = None
    quantized_here: bool = False
    dump_step: float | None = None
    our_step: float | None = None


class Divergence(BaseModel):
    """The first tensor, in graph order, where the dump and our emulation part."""

    tensor: str
    snr_db: float
    cause: str


class CompareReport(Artifact):
    kind = "compare"
    dumps: str
    format: str
    target: str
    samples: int
    threshold_db: float = Field(description="a tensor below this SNR vs emulation has parted")
    tensors: list[ComparedTensor] = Field(default_factory=list)
    first_divergence: Divergence | None = None
    # Dump entries not aligned to a tensor of ours, with why (internal ops of the vendor...).
    skipped: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
