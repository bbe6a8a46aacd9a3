"""The search artifact: every evaluated assignment, the Pareto front and the chosen point."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quantlens import __version__
from quantlens.artifacts import Artifact


class SearchPoint(BaseModel):
    """One candidate assignment and what is known about it."""

    key: str = Field(description="hash of the resolved per-node modes (the oracle's cache key)")
    label: str = Field(description='e.g. "all-int8", "all-16-bit", "greedy 3", "milp <=1.05x"')
    strategy: str = Field(description="baseline | greedy | milp | tpu-mlir")
    promoted: list[str] = Field(default_factory=list, description="candidate units promoted")
    lowered: list[str] = Field(
        default_factory=list, description="units moved below int8 (4-bit weights)"
    )
    modes: dict[str, str] = Field(
        default_factory=dict, description="node -> mode for every node not in the default mode"
    )
    cost: float = Field(
        description="cost relative to all-int8 (1.0 = all-int8): modeled, or with the measured "
        "cost model the ONNX Runtime latency of its export over the all-int8 export's"
    )
    modeled_cost: float | None = Field(
        default=None, description="the cost the planning table predicted, where it was measured"
    )
    latency_ms: float | None = Field(
        default=None, description="ONNX Runtime CPU latency of its QDQ export (measured cost)"
    )
    snr_db: float | None = Field(default=None, description="balanced output SNR vs float")
    metric: float | None = Field(default=None, description="task metric (full evaluation)")
    predicted_snr_db: float | None = Field(
        default=None, description="output SNR the additive noise model predicted"
    )
    verified: bool = Field(default=False, description="measured for real, not only predicted")
    seconds: float = 0.0


class GroupInfo(BaseModel):
    """A candidate unit and the closure its promotion drags along under the profile's rules."""

    unit: str
    op_type: str
    modes: dict[str, str] = Field(description="node -> mode after promoting the unit")
    cost_delta: float = Field(description="added modeled cost, relative to the all-int8 cost")
    snr_db: float | None = Field(default=None, description="isolated output SNR of the unit")
    weight_snr_db: float | None = None
    activation_snr_db: float | None = None


class SearchGoal(BaseModel):
    max_drop: float | None = Field(default=None, description="allowed task-metric drop vs float")
    min_snr: float | None = Field(default=None, description="required balanced output SNR (dB)")
    max_cost: float | None = Field(default=None, description="cost budget relative to int8")


class FixRecord(BaseModel):
    """One fix tried on the all-int8 point (the quantize stage's guard: undone when it lowered
    the output SNR on the guard's samples)."""

    name: str
    kept: bool
    changes: int = Field(description="tensors or layers the fix changed")
    output_snr_db: tuple[float | None, float | None] = Field(
        default=(None, None), description="guard's output SNR before and after the fix"
    )
    seconds: float = 0.0


class FixVariant(BaseModel):
    """One set of fixes tried on all-int8 and how the fixed point scored."""

    fixes: list[FixRecord] = Field(default_factory=list, description="each fix, kept or undone")
    key: str | None = Field(default=None, description="its point's key (None: nothing kept)")
    metric: float | None = None
    snr_db: float | None = None


class FixTrial(BaseModel):
    """The free fixes tried on all-int8 before any layer is promoted, and what they gave."""

    fixes: list[FixRecord] = Field(
        default_factory=list, description="the fixes of the point the search went on from"
    )
    tried: list[FixVariant] = Field(default_factory=list, description="every set tried, in order")
    kept: bool = Field(description="the search went on from a fixed all-int8 point")
    reason: str = Field(description="why the fixed point was kept or dropped")
    without: str = Field(description="key of the all-int8 point without fixes")
    fixed: str = Field(description="key of the fixed all-int8 point the search went on from")


class RuntimeCheck(BaseModel):
    """A point (the chosen one, or the cheapest gain) scored again on its export in the target
    runtime (or why not)."""

    runtime: str | None = Field(
        default=None,
        description='"onnxruntime": the export was scored there (the goal judged there only on '
        "an ONNX Runtime target)",
    )
    search_metric: float | None = Field(
        default=None, description="the point's metric as the search scored it (`engine`)"
    )
    runtime_metric: float | None = Field(
        default=None, description="the metric of the point's export in the runtime"
    )
    judged_metric: float | None = Field(
        default=None,
        description="the metric the goal is judged on (the runtime's on an ORT target)",
    )
    goal_met: bool | None = None
    note: str = ""


class MetricNoise(BaseModel):
    """How far the evaluation set can tell all-int8 from float: the paired per-sample scores'
    spread (the evaluator's `sample_scores`, e.g. top-1 per sample, character accuracy per
    line, F1 per page)."""

    samples: int
    gap: float = Field(description="float's primary metric minus all-int8's")
    half_width: float = Field(
        description="about 95% of the paired mean difference's sampling spread: 2 standard "
        "errors of int8 - float per-sample scores"
    )
    within_noise: bool = Field(description="0 < gap <= half_width: the set cannot show a gap")


class SearchReport(Artifact):
    kind = "search"
    model: str
    target: str
    cost_model: str
    strategy: str
    engine: str = Field(
        default="emulator",
        description="where full evaluations ran: emulator, or onnxruntime (each candidate's "
        "QDQ export, on an ONNX Runtime target)",
    )
    metric_name: str | None = None
    float_metric: float | None = None
    goal: SearchGoal
    baseline: str = Field(description="key of the all-int8 point")
    all16: str | None = Field(default=None, description="key of the all-16-bit point")
    chosen: str | None = Field(default=None, description="key of the chosen point")
    points: list[SearchPoint] = Field(default_factory=list)
    pareto: list[str] = Field(default_factory=list, description="keys on the front, cheap first")
    groups: list[GroupInfo] = Field(default_factory=list)
    full_evaluations: int = 0
    fix_trial: FixTrial | None = Field(default=None, description="fixes tried before promoting")
    metric_noise: MetricNoise | None = Field(
        default=None, description="all-int8's gap against the evaluation set's noise"
    )
    runtime_check: RuntimeCheck | None = Field(
        default=None, description="the chosen point's export scored in the target runtime"
    )
    cheapest_gain: str | None = Field(
        default=None,
        description="key of the cheapest scored point whose metric beats every all-int8 point "
        "(plain and each fixed one), when it is cheaper than the chosen point: exported to "
        "`cheapest-gain/` beside the chosen one",
    )
    cheapest_gain_check: RuntimeCheck | None = Field(
        default=None, description="the cheapest gain's export scored in the target runtime"
    )
    finished: bool = False
    seconds: float = Field(
        default=0.0, description="wall time of the whole command: set-up, search and export"
    )
    search_seconds: float = Field(default=0.0, description="wall time of the search alone")
    notes: list[str] = Field(default_factory=list)
    quantlens_version: str = __version__

    def point(self, key: str | None) -> SearchPoint | None:
        return next((p for p in self.points if p.key == key), None)
