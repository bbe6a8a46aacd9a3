"""Another runtime's per-layer tensors against float and against our emulation, and why the
first tensor where the runtime and the emulation part does so.

Sums are pooled over every element of every sample (as the analysis pools noise), so one
sample with a large error weighs as much as its elements. The likely cause is read off the
dump itself: whether its values lie on an integer grid, and that grid's step against ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from quantlens.artifacts.compare import Agreement, ComparedTensor, Divergence
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import TensorQuant

# Unique values a dump may hold and still count as one integer grid (16-bit at most).
MAX_GRID_VALUES = 1 << 16
# How far (in steps) a value may sit from the grid it is read on: float32 values of a 16-bit
# grid carry relative errors of 1e-7, so up to 0.007 steps at the grid's far end.
GRID_TOLERANCE = 0.02


@dataclass
class Sums:
    """Running sums of one reference against one candidate."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    candidate: float = 0.0
    max_error: float = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref = reference.astype(np.float64).ravel()
        cand = candidate.astype(np.float64).ravel()
        diff = cand - ref
        self.signal += float(ref @ ref)
        self.noise += float(diff @ diff)
        self.dot += float(ref @ cand)
        self.candidate += float(cand @ cand)
        self.max_error = max(self.max_error, float(np.abs(diff).max(initial=0.0)))

    def agreement(self) -> Agreement:
        if self.noise == 0:
            snr = math.inf
        elif self.signal == 0:
            snr = -math.inf
        else:
            snr = 10 * math.log10(self.signal / self.noise)
        norm = math.sqrt(self.signal * self.candidate)
        cosine = self.dot / norm if norm > 0 else (1.0 if self.noise == 0 else 0.0)
        return Agreement(snr_db=snr, cosine=cosine, max_abs_error=self.max_error)


@dataclass
class TensorSums:
    """Everything accumulated for one tensor over the samples."""

    vs_float: Sums
    vs_emulation: Sums
    codes_total: int = 0
    codes_equal: int = 0
    codes_off_by_one: int = 0
    dump_min: float = math.inf
    sample: np.ndarray | None = None  # the first sample's dump values, to find its grid

    @classmethod
    def empty(cls) -> TensorSums:
        return cls(Sums(), Sums())


def accumulate(
    sums: TensorSums,
    dump: np.ndarray,
    floats: torch.Tensor,
    emulated: torch.Tensor,
    quant: TensorQuant | None,
) -> None:
    """Add one sample of one tensor; `dump` must have as many elements as ours."""
    ours_float = floats.detach().float().cpu().numpy().ravel()
    ours_emulated = emulated.detach().float().cpu().numpy().ravel()
    theirs = np.asarray(dump, dtype=np.float64).ravel()
    sums.vs_float.add(ours_float, theirs)
    sums.vs_emulation.add(ours_emulated, theirs)
    sums.dump_min = min(sums.dump_min, float(theirs.min(initial=math.inf)))
    if sums.sample is None:
        sums.sample = theirs
    if quant is not None and isinstance(quant.format, IntFormat) and len(quant.scale) == 1:
        scale, zero, fmt = quant.scale[0], quant.zero_point[0], quant.format
        ours_codes = codes_on(ours_emulated, scale, zero, fmt)
        their_codes = codes_on(theirs, scale, zero, fmt)
        sums.codes_total += theirs.size
        sums.codes_equal += int(np.count_nonzero(ours_codes == their_codes))
        sums.codes_off_by_one += int(np.count_nonzero(np.abs(ours_codes - their_codes) == 1))


def codes_on(values: np.ndarray, scale: float, zero: int, fmt: IntFormat) -> np.ndarray:
    step = np.float32(scale)
    codes = np.round(values.astype(np.float32) / step) + zero
    return np.clip(codes, fmt.qmin, fmt.qmax).astype(np.int64)


def grid_step(values: np.ndarray | None) -> float | None:
    """The step of the integer grid `values` lie on, or None when they lie on none."""
    if values is None or values.size == 0:
        return None
    unique = np.unique(values.astype(np.float64))
    if unique.size < 2 or unique.size > MAX_GRID_VALUES:
        return None
    step = float(np.diff(unique).min())
    if step <= 0 or (unique[-1] - unique[0]) / step > MAX_GRID_VALUES:
        return None
    codes = unique / step
    return step if np.abs(codes - np.round(codes)).max() <= GRID_TOLERANCE else None


def compared(
    tensor: str, dump_name: str, op_type: str, sums: TensorSums, quant: TensorQuant | None
) -> ComparedTensor:
    our_step = quant.scale[0] if quant is not None and quant.is_int and quant.scale else None
    codes = sums.codes_equal / sums.codes_total if sums.codes_total else None
    return ComparedTensor(
        tensor=tensor,
        dump_name=dump_name,
        op_type=op_type,
        vs_float=sums.vs_float.agreement(),
        vs_emulation=sums.vs_emulation.agreement(),
        codes_equal=codes,
        quantized_here=bool(quant is not None and quant.is_int),
        dump_step=grid_step(sums.sample),
        our_step=our_step,
    )


def first_divergence(
    tensors: list[ComparedTensor], sums: dict[str, TensorSums], threshold_db: float
) -> Divergence | None:
    """The first tensor (graph order) below `threshold_db` against the emulation, and why."""
    for entry in tensors:
        if entry.vs_emulation.snr_db < threshold_db:
            cause = likely_cause(entry, sums[entry.tensor])
            return Divergence(tensor=entry.tensor, snr_db=entry.vs_emulation.snr_db, cause=cause)
    return None


def likely_cause(entry: ComparedTensor, sums: TensorSums) -> str:
    """Why a dump and our emulation part at `entry`, read off the two grids (what is said
    when the op cannot be replayed from the dump's own inputs)."""
    grid = grid_cause(entry, sums)
    if grid is not None:
        return grid
    if entry.dump_step is None or entry.our_step is None:
        return "both run it in float here: the arithmetic differs, or earlier layers' noise"
    off = sums.codes_off_by_one / sums.codes_total if sums.codes_total else 0.0
    unequal = 1.0 - (entry.codes_equal or 0.0)
    if unequal > 0 and off / unequal > 0.9:
        return (
            f"rounding: on the same grid, {100 * off:.2f}% of codes differ by one step "
            "(rounding mode or the integer requantization's multiplier)"
        )
    return "same grid, other values: the op's arithmetic differs, or noise from earlier layers"


def grid_cause(entry: ComparedTensor, sums: TensorSums) -> str | None:
    """How the dump's grid at `entry` differs from ours; None when both are on the same grid
    or both in float."""
    theirs, ours = entry.dump_step, entry.our_step
    if entry.quantized_here and theirs is None:
        if _half_precision(sums.sample):
            return (
                "we quantize this tensor but the dump holds it in float16 (every value exact "
                "in fp16, on no integer grid): the runtime runs this op in F16"
            )
        return (
            "we quantize this tensor but the dump is on no integer grid here: the runtime "
            "fuses it into the next op (or runs it in float)"
        )
    if not entry.quantized_here and theirs is not None:
        return (
            f"the runtime quantizes this tensor (step {theirs:.6g}) where our plan does not "
            "(a fusion we assume and it does not make, or a float op it runs in integers)"
        )
    if theirs is None or ours is None:
        return None
    ratio = theirs / ours
    if abs(ratio - 0.5) < 0.01 and sums.dump_min >= 0:
        return (
            f"signedness: the runtime holds this non-negative tensor on an unsigned grid "
            f"(step {theirs:.6g}), we on a signed one (step {ours:.6g})"
        )
    if abs(ratio - 2.0) < 0.02:
        return f"signedness: the runtime's grid is signed (step {theirs:.6g}), ours unsigned"
    if abs(ratio - round(ratio)) > 1e-3 * max(1.0, ratio) or round(ratio) != 1:
        return (
            f"another scale: the runtime's step is {theirs:.6g}, ours {ours:.6g} (the "
            "threshold it used is not ours, or it derives this scale from another tensor)"
        )
    return None


def _half_precision(values: np.ndarray | None) -> bool:
    """Every value exact in float16 (and not all integers): a tensor the runtime holds in F16."""
    if values is None or values.size == 0 or not np.isfinite(values).all():
        return False
    if np.abs(values).max() > np.finfo(np.float16).max:
        return False
    exact = np.array_equal(values.astype(np.float16).astype(np.float64), values)
    return exact and not np.array_equal(np.round(values), values)
