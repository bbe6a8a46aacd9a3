"""The quantize artifact: what `quantize` did, how close the quantized outputs are, its files."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quantlens import __version__
from quantlens.artifacts import Artifact
from quantlens.artifacts.measures import AgreementStats, Distance


class OutputQuality(BaseModel):
    name: str
    float_vs_quantized: Distance
    # The exported QDQ model in ONNX Runtime against the emulator, same inputs.
    emulator_vs_onnxruntime: AgreementStats | None = None


class PassesGuard(BaseModel):
    """What the graph passes' guard measured: the quantized model's output SNR (dB, against
    the float model) without and with the passes, on `samples` calibration samples."""

    passes: list[str]
    snr_without_db: float
    snr_with_db: float
    kept: bool
    samples: int


class OptimizeRecord(BaseModel):
    """What `--optimize` did: graph passes before calibration, fixes after the plan."""

    level: int = 0
    enabled: list[str] = Field(default_factory=list)
    passes: dict[str, list[str]] = Field(default_factory=dict)
    # The graph passes' guard (pipeline.graph_guard): output SNR without and with them; None
    # where no guarded pass changed the graph. Undone passes are absent from `passes`.
    passes_guard: PassesGuard | None = None
    fixes: list[dict[str, object]] = Field(default_factory=list)


class LatencyRecord(BaseModel):
    """ONNX Runtime CPU latency of the float model and of the QDQ export, timed interleaved."""

    threads: int
    rounds: int
    float_ms: float
    quantized_ms: float
    # The graph ORT runs after its QDQ fusions: integer kernels and weighted ops left in float.
    integer_kernels: dict[str, int] = Field(default_factory=dict)
    float_weighted_ops: dict[str, int] = Field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.quantized_ms / self.float_ms if self.float_ms > 0 else float("inf")


class ModeChange(BaseModel):
    """A mode the target's precision rules changed in the assignment `quantize` was given."""

    node: str
    requested: str
    mode: str
    reason: str

    def line(self) -> str:
        return f"changed {self.node}: {self.requested} -> {self.mode} ({self.reason})"


class QuantizeReport(Artifact):
    kind = "quantize"
    model: str
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    target: str
    method: str
    samples: int
    calibration_reused: bool
    modes: dict[str, int]
    quantized_activations: int
    quantized_weights: int
    outputs: list[OutputQuality]
    files: dict[str, str]
    seconds: dict[str, float]
    notes: list[str] = Field(default_factory=list)
    optimize: OptimizeRecord = Field(default_factory=OptimizeRecord)
    # Measured for ONNX Runtime targets (a vendor chip's QDQ model is not what it runs).
    latency: LatencyRecord | None = None
    # Every mode the assignment's closure under the target's rules changed, and why.
    mode_changes: list[ModeChange] = Field(default_factory=list)
    quantlens_version: str = __version__

    def worst_snr(self) -> float:
        return min((o.float_vs_quantized.snr_db for o in self.outputs), default=float("inf"))

    def pooled_agreement(self) -> float | None:
        known = [o.emulator_vs_onnxruntime for o in self.outputs if o.emulator_vs_onnxruntime]
        return min(a.pooled_snr_db for a in known) if known else None
