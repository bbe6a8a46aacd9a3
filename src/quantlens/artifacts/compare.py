"""The compare artifact: another runtime's per-layer tensors against float and our emulation."""

from __future__ import annotations

from typing import Literal

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


# What a per-op replay found (`quantlens.analysis.replay`): `inherited`, the op reproduces the
# dump from the dump's own inputs; else local, by how: `grid` (its grid is not ours),
# `rounding-ties` (codes one step off at exact ties), `arithmetic` (one step off within a
# tenth of a step of a rounding boundary: float summation order below 0.01, else lower
# precision such as F16), `layout` (the same values in another
# order), `op-differs` (other values).
ReplayCause = Literal["inherited", "grid", "rounding-ties", "arithmetic", "layout", "op-differs"]


class OpReplay(BaseModel):
    """One node of our emulation run from the dump's own values of its inputs, against the
    dump's value of its output: separates an op that computes otherwise from inherited noise."""

    tensor: str
    op_type: str
    inputs: list[str] = Field(description="the dumped tensors fed (graph inputs: ours)")
    fused: list[str] = Field(
        default_factory=list,
        description="op types of the nodes the dump lacks, replayed with this one",
    )
    samples: int
    agreement: Agreement = Field(description="our op's output against the dump's")
    codes_equal: float | None = None
    codes_off_by_one: float | None = Field(
        default=None, description="share of all codes exactly one step apart"
    )
    max_code_diff: int | None = None
    ties: float | None = Field(
        default=None, description="share of the differing codes at an exact tie before rounding"
    )
    boundary_steps: float | None = Field(
        default=None,
        description="how far (grid steps) the differing codes' values sat, at most, from a "
        "rounding boundary before our requantization",
    )
    worst_input: str | None = Field(
        default=None, description="the fed tensor furthest from our emulation (full run)"
    )
    worst_input_snr_db: float | None = None
    cause: ReplayCause
    detail: str


class Divergence(BaseModel):
    """The first tensor, in graph order, where the dump and our emulation part."""

    tensor: str
    snr_db: float
    cause: str
    # From the per-op replay (None: not replayable, `cause` is read off the grids alone).
    kind: Literal["inherited", "local"] | None = None
    replay: OpReplay | None = None
    # Inherited: the first upstream op that does not reproduce the dump from its own inputs,
    # and how many of the replayed upstream ops do not.
    origin: OpReplay | None = None
    upstream_replayed: int = 0
    upstream_local: int = 0
    upstream_causes: dict[str, int] = Field(
        default_factory=dict, description="the upstream ops not exact, counted by cause"
    )


class CompareReport(Artifact):
    kind = "compare"
    dumps: str
    format: str
    target: str
    samples: int
    threshold_db: float = Field(description="a tensor below this SNR vs emulation has parted")
    tensors: list[ComparedTensor] = Field(default_factory=list)
    first_divergence: Divergence | None = None
    # Replays of the first divergence and the next tensors below the threshold.
    replays: list[OpReplay] = Field(default_factory=list)
    # Dump entries not aligned to a tensor of ours, with why (internal ops of the vendor...).
    skipped: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
