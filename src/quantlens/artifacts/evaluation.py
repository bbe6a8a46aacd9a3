"""The three-way evaluation artifact (`eval.json`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quantlens.artifacts import Artifact


class SampleResult(BaseModel):
    name: str
    float_score: float | None = None
    quantized_score: float | None = None
    quantized_onnxruntime_score: float | None = None
    snr_db: float | None = Field(None, description="float vs quantized, worst output")


class FloatCheck(BaseModel):
    passed: bool
    tolerance: float
    max_metric_difference: float
    emulator_vs_onnxruntime: dict[str, float]


class EvalReport(Artifact):
    kind = "eval"
    model: str
    data: str
    task: str
    primary: str
    samples: int
    target: str | None = None
    run_dir: str | None = None
    float_vs_gt: dict[str, float] | None = None
    float_onnxruntime_vs_gt: dict[str, float] | None = None
    quantized_vs_gt: dict[str, float] | None = None
    quantized_onnxruntime_vs_gt: dict[str, float] | None = None
    float_vs_quantized: dict[str, float] | None = None
    float_vs_quantized_onnxruntime: dict[str, float] | None = None
    # The plan as an ONNX simulation in ONNX Runtime, where the target's simulator runs there
    # (qnn-htp: AIMET's sim): the engine `search` scores that target's candidates on.
    quantized_simulation_vs_gt: dict[str, float] | None = None
    float_vs_quantized_simulation: dict[str, float] | None = None
    float_check: FloatCheck
    per_sample: list[SampleResult] = Field(description="worst first")
    notes: list[str] = Field(default_factory=list)
    seconds: dict[str, float] = Field(default_factory=dict)

    def primary_metric(self, arm: str = "quantized_vs_gt") -> float | None:
        metrics = getattr(self, arm)
        return None if metrics is None else metrics.get(self.primary)
