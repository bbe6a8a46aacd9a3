"""Per-op replay: one node of our emulation run from the dump's own values of its inputs.

Where a dump and our emulation part, the op either computes otherwise (local) or reads inputs
that already differ (inherited: earlier layers' small differences, grown). Feeding the node the
runtime's dumped inputs — walking back through tensors the dump lacks, which the runtime fused
into this op — separates the two. For a local difference on an integer grid, where the
differing codes sat before our requantization tells a rounding tie (exactly half a step) from
float arithmetic (a hair from the boundary: the order of float32 summation) from an op that
computes other values (a bias, a multiplier, an approximation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from quantlens.analysis.compare import Sums, TensorSums, codes_on, grid_cause
from quantlens.artifacts.compare import ComparedTensor, Divergence, OpReplay, ReplayCause
from quantlens.emulate import Executor
from quantlens.emulate.executor import Step
from quantlens.emulate.fakequant import QuantHooks
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import TensorQuant

Tensor = torch.Tensor

# Given the runtime's inputs, an op whose output is this close (and codes this equal) is
# taken to reproduce it: what is left at the tensor came in with its inputs.
REPRODUCED_CODES = 0.99
# A code one step off whose value sat within this many steps of a rounding boundary flipped on
# float rounding of the sum (float32 over ~10^3 terms: ~1e-3 steps), not on other arithmetic
# (AIMET's float bias against an int32 one: up to 0.04 steps).
SUMMATION_STEPS = 0.01
# Within this, the op's arithmetic is close to the runtime's but less precise than float32:
# F16 (TPU-MLIR's LayerNorm: ~0.03 steps), or a rounded bias or multiplier.
PRECISION_STEPS = 0.1
# Tensors after the first divergence replayed too, and upstream ops replayed to find where the
# differences of an inherited divergence enter.
NEXT_REPLAYS = 3
MAX_UPSTREAM = 400


@dataclass
class ReplayStats:
    """One replay, pooled over its samples."""

    agreement: Sums
    samples: int = 0
    codes_total: int = 0
    codes_equal: int = 0
    off_by_one: int = 0
    max_code_diff: int = 0
    ties: int = 0
    boundary: float = 0.0  # the farthest a differing code's value sat from a boundary
    permuted: int = 0  # samples whose values differ only in order (a layout)

    @property
    def differing(self) -> int:
        return self.codes_total - self.codes_equal


class _Capture:
    """Hooks that leave `tensor` unquantized and keep it, and run every op in float (no
    integer kernels): our op's value before requantization."""

    def __init__(self, inner: QuantHooks, tensor: str) -> None:
        self.inner, self.tensor = inner, tensor
        self.raw: Tensor | None = None

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        return self.inner.weight(name, tensor)

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        if name == self.tensor:
            self.raw = tensor.clone()
            return tensor
        return self.inner.activation(name, tensor)


class Replayer:
    """Replays single ops of `executor` under `hooks` from the dump's `arrays` (per sample,
    stacked on axis 0; graph inputs from `feeds`), `shapes` being our tensors' own. The fed
    values pass through our quantizers of those tensors, as our consumers read them."""

    def __init__(
        self,
        executor: Executor,
        hooks: QuantHooks,
        grids: Mapping[str, TensorQuant],
        arrays: Mapping[str, np.ndarray],
        feeds: Sequence[Mapping[str, np.ndarray]],
        shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    ) -> None:
        self.executor, self.hooks, self.grids = executor, hooks, grids
        self.arrays, self.feeds, self.shapes = arrays, feeds, shapes
        self.order = {name: i for i, name in enumerate(executor.activation_names())}
        # Ops whose replay failed (a kernel refusing the dump's values), with why: compare
        # still reports, and says so.
        self.failures: dict[str, str] = {}

    def sources(self, tensor: str) -> list[str] | None:
        """The dumped tensors and graph inputs `tensor`'s node reads, walking back through
        tensors the dump lacks; None when `tensor` is a graph input or not computed."""
        walked = self._walk(tensor)
        return None if walked is None else walked[0]

    def fused(self, tensor: str) -> list[str]:
        """The op types, in graph order, of the nodes the dump lacks that the replay of
        `tensor` runs besides its own (what the runtime fused into it, or names otherwise)."""
        walked = self._walk(tensor)
        return [] if walked is None else walked[1]

    def _walk(self, tensor: str) -> tuple[list[str], list[str]] | None:
        step = self.executor.producer.get(tensor)
        if step is None:
            return None
        found: set[str] = set()
        expanded: list[Step] = []
        stack = [n for n in step.inputs if n is not None]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name in self.executor.weights:
                continue
            seen.add(name)
            producer = self.executor.producer.get(name)
            if name in self.arrays or producer is None:
                found.add(name)
            else:
                expanded.append(producer)
                stack.extend(n for n in producer.inputs if n is not None)
        steps = sorted({s.index: s for s in expanded}.values(), key=lambda s: s.index)
        ordered = sorted(found, key=lambda n: self.order.get(n, -1))
        return ordered, [s.ctx.op_type for s in steps]

    def upstream(self, tensor: str) -> list[str]:
        """Every dumped tensor `tensor` depends on, in graph order."""
        found: set[str] = set()
        stack = list(self.sources(tensor) or [])
        while stack:
            name = stack.pop()
            if name in found or name not in self.executor.producer:
                continue
            found.add(name)
            stack.extend(self.sources(name) or [])
        return sorted((n for n in found if n in self.arrays), key=lambda n: self.order[n])

    def stats(self, tensor: str) -> tuple[list[str], ReplayStats] | None:
        """Our op from the dump's inputs against the dump's output; None when not replayable
        (a graph input, an input neither dumped nor fed, a size our tensor does not have)."""
        sources = self.sources(tensor)
        if sources is None or tensor not in self.arrays:
            return None
        dumped = [n for n in sources if n not in self.feeds[0]]
        if any(n not in self.arrays or n not in self.shapes for n in [*dumped, tensor]):
            return None
        counts = [self._samples(n) for n in [*dumped, tensor]]
        if min(counts) == 0:
            return None
        try:
            return sources, self._replayed(tensor, sources, dumped, min(counts))
        except (RuntimeError, ValueError) as exc:
            self.failures[tensor] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return None

    def _replayed(
        self, tensor: str, sources: list[str], dumped: list[str], count: int
    ) -> ReplayStats:
        stats = ReplayStats(Sums())
        quant = self.grids.get(tensor)
        for index in range(min(count, len(self.feeds))):
            # Each input as our emulation's consumer reads it: through its quantizer (no-op
            # on a value already on our grid; a float dump where we quantize, e.g. before the
            # runtime's own cast, is put on our grid as we would).
            start = {}
            for name in sources:
                if name in self.feeds[index]:
                    value = torch.as_tensor(self.feeds[index][name], device=self.executor.device)
                else:
                    value = self._value(name, index)
                start[name] = self.hooks.activation(name, value)
            self._add(stats, tensor, start, self._value(tensor, index), quant)
        return stats

    def _samples(self, name: str) -> int:
        shape, _ = self.shapes[name]
        size = math.prod(shape)
        array = self.arrays[name]
        if size == 0 or array.size % size:
            return 0
        return array.size // size

    def _value(self, name: str, index: int) -> Tensor:
        shape, dtype = self.shapes[name]
        array = self.arrays[name].reshape(-1, math.prod(shape))[index].reshape(shape)
        return torch.as_tensor(np.ascontiguousarray(array), device=self.executor.device).to(dtype)

    def _add(
        self,
        stats: ReplayStats,
        tensor: str,
        start: dict[str, Tensor],
        theirs: Tensor,
        quant: TensorQuant | None,
    ) -> None:
        with torch.inference_mode():
            ours = self.executor.run(None, outputs=[tensor], start=dict(start), hooks=self.hooks)
        mine = ours[tensor].detach().float().cpu().numpy().ravel()
        their = theirs.detach().float().cpu().numpy().ravel()
        stats.samples += 1
        stats.agreement.add(their, mine)
        if _same_values_elsewhere(mine, their):
            stats.permuted += 1
        if quant is None or not isinstance(quant.format, IntFormat) or len(quant.scale) != 1:
            return
        scale, zero, fmt = quant.scale[0], quant.zero_point[0], quant.format
        diff = codes_on(mine, scale, zero, fmt) - codes_on(their, scale, zero, fmt)
        stats.codes_total += diff.size
        stats.codes_equal += int(np.count_nonzero(diff == 0))
        stats.off_by_one += int(np.count_nonzero(np.abs(diff) == 1))
        stats.max_code_diff = max(stats.max_code_diff, int(np.abs(diff).max(initial=0)))
        if np.any(diff):
            self._boundaries(stats, tensor, start, diff != 0, scale)

    def _boundaries(
        self,
        stats: ReplayStats,
        tensor: str,
        start: dict[str, Tensor],
        differ: np.ndarray,
        scale: float,
    ) -> None:
        """Where the differing codes' values sat before requantization: our op in float."""
        capture = _Capture(self.hooks, tensor)
        with torch.inference_mode():
            self.executor.run(None, outputs=[tensor], start=dict(start), hooks=capture)
        if capture.raw is None:
            return
        raw = capture.raw.detach().float().cpu().numpy().ravel()[differ]
        # The quotient the quantizer rounds, in float32 as it computes it.
        quotient = (raw / np.float32(scale)).astype(np.float64)
        fraction = quotient - np.floor(quotient)
        stats.ties += int(np.count_nonzero(fraction == 0.5))
        distance = np.abs(fraction - 0.5)
        stats.boundary = max(stats.boundary, float(distance.max(initial=0.0)))


def _same_values_elsewhere(mine: np.ndarray, theirs: np.ndarray) -> bool:
    """The same values in another order: the op moved data another way (a layout)."""
    if np.allclose(mine, theirs, rtol=1e-5, atol=0.0):
        return False
    return bool(np.allclose(np.sort(mine), np.sort(theirs), rtol=1e-5, atol=0.0))


def describe(
    tensor: str,
    op_type: str,
    sources: list[str],
    stats: ReplayStats,
    threshold_db: float,
    grid: str | None,
    snrs: Mapping[str, float],
    local_only: bool = False,
) -> OpReplay:
    """The replay's verdict: inherited when our op reproduces the dump from its inputs (unless
    `local_only`, for naming how an op that is not exact differs), else local and how."""
    agreement = stats.agreement.agreement()
    total = stats.codes_total
    codes = stats.codes_equal / total if total else None
    fed = [n for n in sources if n in snrs]
    worst = min(fed, key=lambda n: snrs[n]) if fed else None
    cause, detail = _local(stats, agreement.snr_db, grid)
    reproduced = agreement.snr_db >= threshold_db and (codes is None or codes >= REPRODUCED_CODES)
    if reproduced and not local_only:
        cause, detail = "inherited", _inherited(op_type, agreement.snr_db, codes, worst, snrs)
    return OpReplay(
        tensor=tensor,
        op_type=op_type,
        inputs=sources,
        samples=stats.samples,
        agreement=agreement,
        codes_equal=codes,
        codes_off_by_one=stats.off_by_one / total if total else None,
        max_code_diff=stats.max_code_diff if total else None,
        ties=stats.ties / stats.differing if stats.differing else None,
        boundary_steps=stats.boundary if stats.differing else None,
        worst_input=worst,
        worst_input_snr_db=snrs[worst] if worst is not None else None,
        cause=cause,
        detail=detail,
    )


def _db(value: float) -> str:
    return "inf" if math.isinf(value) and value > 0 else f"{value:.1f}"


def _inherited(
    op_type: str, snr: float, codes: float | None, worst: str | None, snrs: Mapping[str, float]
) -> str:
    equal = "" if codes is None else f", {100 * codes:.4g}% of codes equal"
    text = (
        f"inherited: given the runtime's own inputs our {op_type} reproduces its output "
        f"({_db(snr)} dB{equal}), so the difference comes from earlier layers"
    )
    if worst is not None:
        text += f"; its input {worst} is already {_db(snrs[worst])} dB from our emulation"
    return text


def _local(stats: ReplayStats, snr: float, grid: str | None) -> tuple[ReplayCause, str]:
    if grid is not None:
        return "grid", grid
    if stats.samples and stats.permuted == stats.samples:
        return "layout", (
            f"given the runtime's own inputs our op's output holds the same values in another "
            f"order ({_db(snr)} dB): the runtime moves the data another way, or dumps this "
            "tensor in another layout"
        )
    total, differing = stats.codes_total, stats.differing
    if not total:
        return "op-differs", (
            f"given the runtime's own inputs our float op is {_db(snr)} dB from its output: "
            "the op's arithmetic differs"
        )
    if not differing:
        return "arithmetic", (
            f"every code equal given the runtime's own inputs, {_db(snr)} dB: the values "
            "differ off the grid"
        )
    share = f"{100 * differing / total:.3g}% of codes"
    if stats.max_code_diff > 1:
        return "op-differs", (
            f"given the runtime's own inputs, {share} differ, by up to {stats.max_code_diff} "
            "steps: the op computes other values"
        )
    if stats.ties > differing / 2:
        return "rounding-ties", (
            f"given the runtime's own inputs, {share} are one step off, "
            f"{100 * stats.ties / differing:.0f}% of them exact ties before rounding: the "
            "runtime rounds ties another way"
        )
    if stats.boundary <= SUMMATION_STEPS:
        return "arithmetic", (
            f"given the runtime's own inputs, {share} are one step off, each within "
            f"{stats.boundary:.2g} steps of a rounding boundary before requantization: float "
            "rounding of the sums (summation order), not other arithmetic"
        )
    if stats.boundary <= PRECISION_STEPS:
        return "arithmetic", (
            f"given the runtime's own inputs, {share} are one step off, each within "
            f"{stats.boundary:.2g} steps of a rounding boundary before requantization: close "
            "arithmetic of lower precision than float32 summation gives (F16, or a rounded "
            "bias or multiplier)"
        )
    return "op-differs", (
        f"given the runtime's own inputs, {share} are one step off, up to "
        f"{stats.boundary:.2f} steps from a rounding boundary: the op computes other values "
        "(a bias, a multiplier, an approximation)"
    )


def explain(
    first: Divergence,
    tensors: list[ComparedTensor],
    sums: Mapping[str, TensorSums],
    replayer: Replayer,
    threshold_db: float,
) -> list[OpReplay]:
    """Replay the first divergence (and the next tensors below the threshold), fill in its
    kind and cause, and for an inherited one find where upstream the differences enter."""
    snrs = {t.tensor: t.vs_emulation.snr_db for t in tensors}
    entries = {t.tensor: t for t in tensors}
    below = [t.tensor for t in tensors if t.vs_emulation.snr_db < threshold_db]
    position = below.index(first.tensor)
    replays = []
    for tensor in below[position : position + 1 + NEXT_REPLAYS]:
        replay = _replay(replayer, entries[tensor], sums[tensor], threshold_db, snrs)
        if replay is not None:
            replays.append(replay)
    head = replays[0] if replays and replays[0].tensor == first.tensor else None
    if head is None:
        return replays
    first.replay = head
    first.kind = "inherited" if head.cause == "inherited" else "local"
    local = f"local ({head.cause}): {head.detail}"
    first.cause = head.detail if first.kind == "inherited" else local
    if first.kind == "inherited":
        _find_origin(first, replayer, entries, sums, threshold_db, snrs)
    return replays


def _replay(
    replayer: Replayer,
    entry: ComparedTensor,
    sums: TensorSums,
    threshold_db: float,
    snrs: Mapping[str, float],
    local_only: bool = False,
) -> OpReplay | None:
    found = replayer.stats(entry.tensor)
    if found is None:
        return None
    sources, stats = found
    grid = grid_cause(entry, sums)
    replay = describe(
        entry.tensor, entry.op_type, sources, stats, threshold_db, grid, snrs, local_only
    )
    replay.fused = replayer.fused(entry.tensor)
    if replay.fused and replay.cause != "inherited":
        replay.detail += (
            f" (replayed through {len(replay.fused)} ops the dump lacks: {', '.join(replay.fused)})"
        )
    return replay


def _find_origin(
    first: Divergence,
    replayer: Replayer,
    entries: Mapping[str, ComparedTensor],
    sums: Mapping[str, TensorSums],
    threshold_db: float,
    snrs: Mapping[str, float],
) -> None:
    """The first upstream op (graph order) that does not reproduce the dump exactly from its
    own inputs — not every code equal, or a float op below the threshold — and how many do
    not."""
    for tensor in replayer.upstream(first.tensor)[:MAX_UPSTREAM]:
        entry = entries.get(tensor)
        if entry is None:
            continue
        replay = _replay(replayer, entry, sums[tensor], threshold_db, snrs, local_only=True)
        if replay is None:
            continue
        first.upstream_replayed += 1
        exact = (
            replay.codes_equal == 1.0
            if replay.codes_equal is not None
            else replay.agreement.snr_db >= threshold_db
        )
        if exact:
            continue
        first.upstream_local += 1
        first.upstream_causes[replay.cause] = first.upstream_causes.get(replay.cause, 0) + 1
        if first.origin is None:
            first.origin = replay
    if first.origin is not None:
        origin = first.origin
        causes = ", ".join(f"{n} {c}" for c, n in sorted(first.upstream_causes.items()))
        first.cause += (
            f"; the differences enter at {origin.tensor} ({origin.op_type}), the first of "
            f"{first.upstream_local} upstream ops (of {first.upstream_replayed} replayed) not "
            f"exact from their own dumped inputs ({causes}): {origin.detail}"
        )
    elif first.upstream_replayed:
        first.cause += (
            f"; each of the {first.upstream_replayed} upstream ops reproduces the runtime "
            "exactly from its own inputs (the runtime's inputs differ from ours)"
        )
