"""Ops a vendor computes on integer codes, emulated as it computes them.

TPU-MLIR's INT8 Add (bm1684x) rescales each input's code to the output's grid by an 8-bit
multiplier and a right shift, rounds half up, and sums (the `multipliers` / `rshifts` of
`tpu.Add` in the `_tpu.mlir`; the multiplier is the one of magnitude below 127 nearest the
scale ratio, the first shift reaching it, as TPU-MLIR's `get_scale_and_shift`). Computing the
Add in float and quantizing once differs from that by up to 0.6% in scale and by a rounding
per input: 13-25% of codes on ppocr-v6-rec-small's residual Adds, none with this kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from quantlens.emulate.registry import KernelFn, NodeContext
from quantlens.schemes.qparams import Requant, TensorQuant

Tensor = torch.Tensor
# TPU-MLIR's 8-bit multipliers stay below CHAR_MAX; shifts are searched over this range.
MULTIPLIER_LIMIT = 127
SHIFTS = range(-32, 31)


def multiplier_and_shift(ratio: float, limit: int = MULTIPLIER_LIMIT) -> tuple[int, int]:
    """(m, n) with |m| < limit and m / 2^n nearest `ratio` (the first n on ties)."""
    best = (math.inf, 0, 0)
    for shift in SHIFTS:
        multiplier = round(ratio * 2.0**shift)
        error = abs(multiplier / 2.0**shift - ratio)
        if error < best[0] and abs(multiplier) < limit:
            best = (error, multiplier, shift)
    return best[1], best[2]


def requant_add(node: str, inputs: Sequence[TensorQuant], output: TensorQuant) -> Requant:
    """The integer Add of `node` for inputs and output on these grids."""
    pairs = [multiplier_and_shift(q.scale[0] / output.scale[0]) for q in inputs]
    return Requant(
        inputs=[q.name for q in inputs],
        output=output.name,
        multipliers=[m for m, _ in pairs],
        rshifts=[n for _, n in pairs],
    )


def add_kernel(spec: Requant, in_scales: Sequence[float], out_scale: float) -> KernelFn:
    """A kernel for the Add that `spec` describes; its output lies on the output's grid (the
    output quantizer that follows only saturates it)."""
    scales = [torch.tensor(s, dtype=torch.float32) for s in in_scales]
    factors = [m / 2.0**n for m, n in zip(spec.multipliers, spec.rshifts, strict=True)]
    step = torch.tensor(out_scale, dtype=torch.float32)

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        total: Tensor | None = None
        for x, scale, factor in zip(args, scales, factors, strict=True):
            assert x is not None
            codes = torch.round(x.float() / scale.to(x.device))
            # Half up: floor(v + 0.5), as TPU-MLIR's RightShiftRound does for Add.
            term = torch.floor(codes * factor + 0.5)
            total = term if total is None else total + term
        assert total is not None
        return total * step.to(total.device)

    return kernel
