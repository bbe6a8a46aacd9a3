"""Ops a vendor computes on integer codes, emulated as it computes them.

TPU-MLIR (bm1684x) lowers an INT8 op to integer arithmetic on its inputs' codes followed by a
requantization `RightShiftRound(v x m, n)`: an integer multiplier m and a right shift n that
approximate the ratio of the scales. Computing the op in float and quantizing once differs
from that by the multiplier's approximation (0.6% for the 8-bit ones) and by the rounding of
each step; one flipped code grows through a deep network. The kinds (`Requant.kind`), each
as TPU-MLIR 1.30.2 writes it in the `_tpu.mlir` (lib/Conversion/TopToTpu/BM1684X/*.cpp for
the multipliers, lib/Dialect/Tpu/Interfaces/Common/*.cpp for the arithmetic):

- add: each input's code times its 8-bit m / 2^n, rounded half up, summed (`tpu.Add`);
- linear: Conv/MatMul/Gemm accumulate input x weight codes plus the int32 bias
  round(bias / (s_in s_w)), then one 32-bit multiplier per output channel (Conv) or per
  tensor (MatMul, Gemm); Conv rounds half up, MatMul half away from zero (`round_mode`);
- product: a Mul of two tensors multiplies their codes, then an 8-bit multiplier;
- pool: an AveragePool sums its window's codes, then an 8-bit multiplier for s_in / (s_out k);
- concat: an input whose grid differs from the Concat's is rescaled by an 8-bit positive
  multiplier (`tpu.MulShift`, `do_transfer`); (1, 0) when the scales are within 0.4%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from quantlens.emulate.registry import KernelFn, NodeContext, find_kernel
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.qparams import QuantPlan, Requant, TensorQuant

Tensor = torch.Tensor
# TPU-MLIR's get_scale_and_shift: |m| < CHAR_MAX for 8-bit multipliers, < INT_MAX for 32-bit
# ones, shifts tried from -32 to 30 (get_scale_and_shift_positive: from 0).
MULTIPLIER_LIMIT = 127
WIDE_LIMIT = 2**31 - 1
SHIFTS = range(-32, 31)
POSITIVE_SHIFTS = range(0, 31)
# The decimals of the thresholds in the calibration table quantlens exports for TPU-MLIR
# (quantlens.export.vendors.tpu_mlir), from which TPU-MLIR takes its scales.
CALI_TABLE_DECIMALS = 7


def _round_away(value: float) -> int:
    """std::round: half away from zero."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def multiplier_and_shift(
    ratio: float, limit: int = MULTIPLIER_LIMIT, shifts: range = SHIFTS
) -> tuple[int, int]:
    """(m, n) with |m| < limit and m / 2^n nearest `ratio`, the first n on ties, as TPU-MLIR's
    get_scale_and_shift computes it: the ratio and each error in float32."""
    scale = float(np.float32(ratio))
    best_error, best_shift = np.float32(np.finfo(np.float32).max), None
    for shift in shifts:
        multiplier = _round_away(scale * 2.0**shift)
        error = np.float32(abs(multiplier / 2.0**shift - scale))
        if error < best_error and abs(multiplier) < limit:
            best_error, best_shift = error, shift
    if best_shift is None:
        return 0, 0
    return _round_away(scale * 2.0**best_shift), best_shift


def _pairs(ratios: Sequence[float], limit: int, shifts: range = SHIFTS) -> Requant:
    pairs = [multiplier_and_shift(r, limit, shifts) for r in ratios]
    return Requant(
        inputs=[], output="", multipliers=[m for m, _ in pairs], rshifts=[n for _, n in pairs]
    )


def requant_spec(
    kind: str,
    inputs: Sequence[TensorQuant],
    output: TensorQuant,
    *,
    weight: TensorQuant | None = None,
    window: int = 1,
    rounding: str = "half-up",
    bias_add: str | None = None,
    axis: int = -1,
) -> Requant:
    """The multipliers and shifts of an op of `kind` on these grids (see the module doc), from
    the scales as TPU-MLIR holds them (`vendor_scale`, `_vendor_weight_scales`)."""
    out = vendor_scale(output)
    scales = [vendor_scale(q) for q in inputs]
    if kind == "add":  # a constant operand (`weight`) on its grid for a Mul's constant
        added = [
            constant_scale(q) if weight is not None and q.name == weight.name else s
            for q, s in zip(inputs, scales, strict=True)
        ]
        spec = _pairs([s / out for s in added], MULTIPLIER_LIMIT)
    elif kind == "linear" and weight is not None:
        ratios = [w * scales[0] / out for w in _vendor_weight_scales(weight)]
        spec = _pairs(ratios, WIDE_LIMIT)
    elif kind == "linear":
        spec = _pairs([scales[0] * scales[1] / out], WIDE_LIMIT)
    elif kind == "product" and weight is not None:  # a tensor times a quantized constant
        spec = _pairs([scales[0] * constant_scale(weight) / out], MULTIPLIER_LIMIT)
    elif kind == "product":
        spec = _pairs([scales[0] * scales[1] / out], MULTIPLIER_LIMIT)
    elif kind == "pool":
        spec = _pairs([scales[0] / (out * max(window, 1))], MULTIPLIER_LIMIT)
        spec.ratio = scales[0] / out
    elif kind == "concat":
        spec = _pairs([s / out for s in scales], MULTIPLIER_LIMIT, POSITIVE_SHIFTS)
    else:
        raise ValueError(f"unknown requantization kind {kind!r}")
    return spec.model_copy(
        update={
            "kind": kind,
            "inputs": [q.name for q in inputs],
            "output": output.name,
            "weight": weight.name if weight is not None else None,
            "window": window,
            "rounding": rounding,
            "bias_add": bias_add,
            "axis": axis,
        }
    )


def vendor_scale(quant: TensorQuant) -> float:
    """An activation's scale as TPU-MLIR reads it: the threshold our calibration table writes
    (the float32 scale x qmax, printed with `CALI_TABLE_DECIMALS` decimals) over qmax, in
    float64. It differs from the float32 scale in the last bits, and the 32-bit multipliers
    see that (pplcnet: 1 channel in 20 got another multiplier from the float32 scales)."""
    qmax = quant.format.qmax if isinstance(quant.format, IntFormat) else 1
    return float(f"{table_threshold(quant):.{CALI_TABLE_DECIMALS}f}") / qmax


def table_threshold(quant: TensorQuant) -> float:
    """The threshold a calibration table gives a tensor: its scale times qmax."""
    qmax = quant.format.qmax if isinstance(quant.format, IntFormat) else 1
    return float(quant.scale[0]) * qmax


def constant_scale(quant: TensorQuant) -> float:
    """A Mul's constant operand's scale as TPU-MLIR computes it: its largest value (not the
    largest magnitude) over 255, or 127 when it has a negative value, in float32
    (lib/Conversion/TopToTpu/BM1684X/Mul.cpp LoweringINT8: `scale_i = fmax / fqmax`)."""
    top = np.float32(max(quant.range_max, default=0.0))
    qmax = np.float32(quant.format.qmax if isinstance(quant.format, IntFormat) else 1)
    return float(top / qmax)


def _vendor_weight_scales(weight: TensorQuant) -> list[float]:
    """TPU-MLIR's weight scales: a Conv's per channel in float32 (max|W| / 127 in float, as
    ours), a MatMul's one for the tensor in float64 (MatMul.cpp: `double w_max ... / 127.0`),
    or one per block of columns of a split MatMul (axis 1), each as one MatMul's."""
    if weight.axis == 1 and isinstance(weight.format, IntFormat):
        peaks = [max(abs(lo), abs(hi)) for lo, hi in zip(weight.range_min, weight.range_max)]
        if all(p > 0 for p in peaks):
            return [p / weight.format.qmax for p in peaks]
    if len(weight.scale) > 1 or weight.axis is not None or not isinstance(weight.format, IntFormat):
        return [float(w) for w in weight.scale]  # per channel: a Conv's, one channel or more
    peak = max([abs(v) for v in (*weight.range_min, *weight.range_max)], default=0.0)
    return [peak / weight.format.qmax] if peak > 0 else [float(weight.scale[0])]


def vendor_constant_scales(spec: Requant, plan: QuantPlan) -> dict[str, list[float]]:
    """The scales TPU-MLIR divides a linear op's float constants by, by quantizer name: the
    weight's (`_vendor_weight_scales`), and its int32 bias's, s_in x s_w from the vendor's
    scales (Conv.cpp / MatMul.cpp: round(bias / (scale_w * in_scale))). The bias of a fused
    bias Add has no quantizer: it is under the key "bias"."""
    if spec.kind in ("product", "add") and spec.weight is not None and spec.weight in plan.weights:
        return {spec.weight: [constant_scale(plan.weights[spec.weight])]}
    if spec.kind != "linear" or spec.weight is None or spec.weight not in plan.weights:
        return {}
    weight = plan.weights[spec.weight]
    s_in = vendor_scale(plan.activations[spec.inputs[0]])
    weights = _vendor_weight_scales(weight)
    found = {spec.weight: weights, "bias": [s_in * w for w in weights]}
    for name, quant in plan.weights.items():
        if quant.bias_of == (spec.inputs[0], spec.weight):
            found[name] = found["bias"]
    return found


# --- kernels -----------------------------------------------------------------------------------


def _codes(x: Tensor, scale: Tensor) -> Tensor:
    """The integer codes of a tensor on a grid, in float64. It lies on the grid already, so
    the float32 quotient is exact after rounding (code x (1 + 2^-23) for codes below 2^16)."""
    return torch.round(x.float() / scale.to(x.device, torch.float32)).double()


def _shift_round(value: Tensor, factor: Tensor, rounding: str) -> Tensor:
    """RightShiftRound(value x m, n) with factor = m / 2^n, on float64 integers (exact while
    |value x m| < 2^53, i.e. for every result that does not saturate)."""
    scaled = value * factor.to(value.device)
    if rounding == "half-away-from-zero":
        return torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)
    return torch.floor(scaled + 0.5)


def _factors(spec: Requant) -> Tensor:
    return torch.tensor(
        [m * 2.0**-n for m, n in zip(spec.multipliers, spec.rshifts, strict=True)],
        dtype=torch.float64,
    )


def _along(values: Tensor, rank: int, axis: int) -> Tensor:
    """A per-channel vector shaped to broadcast along `axis` of a tensor of `rank`."""
    if values.numel() == 1:
        return values.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return values.reshape(shape)


def requant_kernel(spec: Requant, scales: Sequence[Tensor], out_scale: float) -> KernelFn:
    """A kernel for the node `spec` describes. `scales`: the input grids' scales, then for a
    linear op with a weight the weight's (per channel or one). Its output lies on the output's
    grid (the quantizer that follows only saturates it), except a linear op whose bias Add is
    a node of its own (`bias_add`): it returns the accumulator at scale s_in x s_w, and
    `bias_add_kernel` finishes it."""
    builders = {
        "add": _add_kernel,
        "linear": _linear_kernel,
        "product": _product_kernel,
        "pool": _pool_kernel,
        "concat": _concat_kernel,
    }
    return builders[spec.kind](spec, [s.double() for s in scales], out_scale)


def _add_kernel(spec: Requant, scales: Sequence[Tensor], out_scale: float) -> KernelFn:
    factors = [_factors(spec)[i] for i in range(len(spec.inputs))]

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        total: Tensor | None = None
        for x, scale, factor in zip(args, scales, factors, strict=True):
            assert x is not None
            term = _shift_round(_codes(x, scale), factor, spec.rounding)
            total = term if total is None else total + term
        assert total is not None
        return (total * out_scale).float()

    return kernel


def _linear_kernel(spec: Requant, scales: Sequence[Tensor], out_scale: float) -> KernelFn:
    factors = _factors(spec)
    with_weight = spec.weight is not None
    # The accumulator's scale: input x weight (per output channel for a Conv's weight).
    acc_scale = scales[0] * scales[1]

    # A constant weight's codes, computed once per weight tensor (the hooks hand the same
    # quantized tensor to every run; it is held here, so its identity cannot be reused).
    cached: list[tuple[Tensor, Tensor]] = []

    def weight_codes(ctx: NodeContext, w: Tensor) -> Tensor:
        if with_weight and cached and cached[0][0] is w:
            return cached[0][1]
        w_scale = _along(scales[1], w.dim(), 0 if ctx.op_type == "Conv" else -1)
        if ctx.op_type == "Gemm" and ctx.attr("transB", 0) and with_weight:
            w_scale = _along(scales[1], w.dim(), 0)
        codes = _codes(w, w_scale).float()
        if with_weight:
            cached[:] = [(w, codes)]
        return codes

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        x, w = args[0], args[1]
        assert x is not None and w is not None
        fn = _node_kernel(ctx)
        axis = spec.axis
        inputs: list[Tensor | None] = [_codes(x, scales[0]).float(), weight_codes(ctx, w)]
        # Integer-valued float32: exact while partial sums stay below 2^24, as TPU-MLIR's own
        # interpreter computes it (oneDNN in float32).
        produced = fn(ctx, [*inputs, *([None] * (len(args) - 2))])
        assert isinstance(produced, Tensor)
        acc = produced.double()
        per_channel = _along(acc_scale, acc.dim(), axis)
        bias = args[2] if len(args) > 2 else None
        if bias is not None:
            acc = acc + _bias_codes(bias, per_channel.reshape(-1), acc.dim(), axis)
        if spec.bias_add is not None:
            return (acc * per_channel).float()
        codes = _shift_round(acc, _along(factors, acc.dim(), axis), spec.rounding)
        return (codes * out_scale).float()

    return kernel


def bias_add_kernel(
    spec: Requant, scales: Sequence[Tensor], out_scale: float, vendor_acc: Tensor
) -> KernelFn:
    """The Add that carries a MatMul's bias (TPU-MLIR fuses it into the MatMul): the
    accumulator from `requant_kernel` plus the int32 bias (the float constant over the
    vendor's s_in x s_w, `vendor_acc`), requantized."""
    factors = _factors(spec)
    acc_scale = scales[0].double() * scales[1].double()

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        first, second = args[0], args[1]
        assert first is not None and second is not None
        # The bias is the constant: the one that does not have the accumulator's shape.
        acc_value, bias = (first, second) if first.numel() >= second.numel() else (second, first)
        per_channel = _along(acc_scale, acc_value.dim(), spec.axis)
        acc = torch.round(acc_value.double() / per_channel.to(acc_value.device))
        acc = acc + _bias_codes(bias, vendor_acc, acc.dim(), spec.axis)
        codes = _shift_round(acc, _along(factors, acc.dim(), spec.axis), spec.rounding)
        return (codes * out_scale).float()

    return kernel


def _bias_codes(bias: Tensor, acc_scale: Tensor, rank: int, axis: int) -> Tensor:
    """round(bias / (s_in x s_w)), half away from zero (std::round), shaped to add along
    `axis` of the accumulator."""
    quotient = bias.double().reshape(-1) / acc_scale.to(bias.device)
    codes = torch.sign(quotient) * torch.floor(quotient.abs() + 0.5)
    return _along(codes, rank, axis)


def _product_kernel(spec: Requant, scales: Sequence[Tensor], out_scale: float) -> KernelFn:
    factor = _factors(spec)[0]

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        a, b = args[0], args[1]
        assert a is not None and b is not None
        product = _codes(a, scales[0]) * _codes(b, scales[1])
        return (_shift_round(product, factor, spec.rounding) * out_scale).float()

    return kernel


def _pool_kernel(spec: Requant, scales: Sequence[Tensor], out_scale: float) -> KernelFn:
    factors = {spec.window: _factors(spec)[0]}

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        x = args[0]
        assert x is not None
        window = spec.window or math.prod(x.shape[2:])
        factor = factors.get(window)
        if factor is None:  # a global pool: its multiplier follows from the input's size
            m, n = multiplier_and_shift(spec.ratio / window)
            factor = factors[window] = torch.tensor(m * 2.0**-n, dtype=torch.float64)
        mean = _node_kernel(ctx)(ctx, [_codes(x, scales[0]).float(), *args[1:]])
        assert isinstance(mean, Tensor)
        # The window sum, as TPU-MLIR recovers it from its float average (to_int, half away).
        total = mean.double() * window
        total = torch.sign(total) * torch.floor(total.abs() + 0.5)
        return (_shift_round(total, factor, spec.rounding) * out_scale).float()

    return kernel


def _concat_kernel(spec: Requant, scales: Sequence[Tensor], out_scale: float) -> KernelFn:
    factors = _factors(spec)
    identity = [m == 1 and n == 0 for m, n in zip(spec.multipliers, spec.rshifts, strict=True)]

    def kernel(ctx: NodeContext, args: Sequence[Tensor | None]) -> Tensor:
        parts = []
        for index, x in enumerate(args):
            assert x is not None
            codes = _codes(x, scales[index])
            if not identity[index]:
                codes = _shift_round(codes, factors[index], spec.rounding)
            parts.append(codes)
        axis = int(ctx.attr("axis", 1))
        return (torch.cat(parts, dim=axis) * out_scale).float()

    return kernel


def _node_kernel(ctx: NodeContext) -> KernelFn:
    found = find_kernel(ctx.op_type, ctx.opset)
    if found is None:
        raise ctx.reject("no kernel for its integer arithmetic")
    return found.fn
