"""Fake quantization, bit-exact with ONNX QuantizeLinear -> DequantizeLinear.

q = saturate(round_half_even(x / scale) + zero_point); x' = (q - zero_point) * scale, in float32
with the same float32 scale the QDQ model stores, so emulation and ONNX Runtime agree exactly.
When the input needs a gradient, rounding passes it straight through (STE).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from quantlens.emulate.float_islands import float_node_kernel, to_f16
from quantlens.emulate.registry import KernelFn
from quantlens.emulate.requant import (
    bias_add_kernel,
    requant_kernel,
    vendor_constant_scales,
    vendor_scale,
)
from quantlens.schemes.formats import FloatFormat, IntFormat
from quantlens.schemes.qparams import FloatNode, QuantPlan, Requant, TensorQuant

Tensor = torch.Tensor

_FLOAT_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _along(param: Tensor, rank: int, axis: int | None) -> Tensor:
    """Per-channel parameters shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if axis is None or param.numel() <= 1:
        return param
    shape = [1] * rank
    shape[axis] = -1
    return param.reshape(shape)


def fake_quantize(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Quantize then dequantize `x`; `scale`/`zero_point` are per tensor or along `axis`."""
    scale, zero_point = _along(scale, x.dim(), axis), _along(zero_point, x.dim(), axis)
    if x.requires_grad:
        scaled = x / scale
        rounded = scaled + (torch.round(scaled) - scaled).detach()
        q = torch.clamp(rounded + zero_point, qmin, qmax)
        return (q - zero_point) * scale
    lower, upper = qmin - zero_point, qmax - zero_point
    return _fake_quantize_inplace(x, scale, lower, upper)


def _fake_quantize_inplace(
    x: Tensor,
    scale: Tensor,
    lower: Tensor | float,
    upper: Tensor | float,
    overwrite: bool = False,
    finite: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """clamp(round(x/s), qmin - zp, qmax - zp) * s in four passes over one tensor: a new one,
    `x` itself when `overwrite`, or `out` (no allocation: a fresh 50 MB tensor costs as much in
    page faults as the division that fills it).

    It equals (clamp(round(x/s) + zp, qmin, qmax) - zp) * s exactly: every term is an integer
    held exactly in float32. `finite`: `x` holds no NaN, so the pass that maps NaN is skipped.
    """
    if overwrite:
        out = x
    y = x / scale if out is None else torch.div(x, scale, out=out)
    y.round_()
    # ONNX Runtime's vectorised QuantizeLinear clamps with max/min instructions that turn NaN
    # (e.g. 0/0 after a quantized variance rounds to zero) into the lowest code; so do we
    # (fmax ignores NaN).
    if isinstance(lower, Tensor) and isinstance(upper, Tensor):
        y = torch.fmin(torch.fmax(y, lower), upper)
    else:
        if not finite:
            y.nan_to_num_(nan=float(lower))
        y.clamp_(float(lower), float(upper))
    return y.mul_(scale)


def quantize_to_int(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """The integer codes (as int64) that QuantizeLinear would store, for exporters."""
    scale, zero_point = _along(scale, x.dim(), axis), _along(zero_point, x.dim(), axis)
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(torch.int64)


def round_to_float(x: Tensor, fmt: FloatFormat) -> Tensor:
    """Round through a lower float type and back (fp32: unchanged)."""
    dtype = _FLOAT_TYPES.get(fmt.name)
    if dtype is None or not x.is_floating_point():
        return x
    return x.to(dtype).to(x.dtype)


class TensorQuantizer:
    """One tensor's quantizer with its parameters already on the device."""

    def __init__(self, spec: TensorQuant, device: torch.device) -> None:
        self.spec = spec
        self.format = spec.format
        self.axis = spec.axis
        self.is_int = spec.is_int
        # An int32 grid (a bias) is rounded from a float64 quotient, as ONNX Runtime's
        # quantize_static stores one (base_quantizer.quantize_bias_static_impl): in float32,
        # a quotient near a tie rounds the other way (4 of pplcnet's 27 biases, one step).
        self.wide = isinstance(spec.format, IntFormat) and spec.format.bits == 32
        if isinstance(spec.format, IntFormat):
            self.qmin, self.qmax = spec.format.qmin, spec.format.qmax
            self.scale = torch.tensor(spec.scale, dtype=torch.float32, device=device)
            # Zero points are exact in float32 for every grid up to 16 bits (int32 bias: zp = 0).
            self.zero = torch.tensor(spec.zero_point, dtype=torch.float32, device=device)
            # Clamp bounds in the shifted domain; plain floats per tensor (no device sync).
            self.lower: Tensor | float = self.qmin - self.zero
            self.upper: Tensor | float = self.qmax - self.zero
            if len(spec.zero_point) == 1:
                self.lower = float(self.qmin - spec.zero_point[0])
                self.upper = float(self.qmax - spec.zero_point[0])
            self._shape_cache: dict[int, tuple[Tensor, Tensor | float, Tensor | float]] = {}

    def __call__(
        self, x: Tensor, overwrite: bool = False, finite: bool = False, out: Tensor | None = None
    ) -> Tensor:
        """The fake-quantized `x`; with `overwrite`, written into `x` when it is float32 and
        needs no gradient (the caller owns it and nothing else refers to it), or else into `out`
        (a float32 tensor of `x`'s shape and strides) when given; `finite`: the caller knows `x`
        holds no NaN."""
        if self.wide and x.is_floating_point() and not x.requires_grad:
            return self._int32(x, out)
        if self.is_int and x.dtype == torch.float32 and not x.requires_grad:
            # The common case first, in as few torch calls as possible: on a small model the
            # calls, not the arithmetic, are what a quantizer costs.
            bounds = self._broadcast(x.dim())
            return _fake_quantize_inplace(x, *bounds, overwrite=overwrite, finite=finite, out=out)
        if not x.is_floating_point():
            return x
        if isinstance(self.format, FloatFormat):
            return round_to_float(x, self.format)
        data = x.float()
        if data.requires_grad:
            y = fake_quantize(data, self.scale, self.zero, self.qmin, self.qmax, self.axis)
        else:  # another float type: `data` is a float32 copy, ours to overwrite
            bounds = self._broadcast(data.dim())
            y = _fake_quantize_inplace(data, *bounds, overwrite=data is not x, finite=finite)
        return y.to(x.dtype)

    def _int32(self, x: Tensor, out: Tensor | None) -> Tensor:
        """Codes from the float64 quotient, dequantized in float32 as DequantizeLinear does."""
        codes = quantize_to_int(
            x.double(), self.scale.double(), self.zero.double(), self.qmin, self.qmax, self.axis
        )
        scale, _, _ = self._broadcast(x.dim())
        zero = _along(self.zero, x.dim(), self.axis)
        y = ((codes.float() - zero) * scale).to(x.dtype)
        return y if out is None else out.copy_(y)

    def _broadcast(self, rank: int) -> tuple[Tensor, Tensor | float, Tensor | float]:
        """Scale and bounds shaped to broadcast along `axis` for a tensor of `rank`."""
        cached = self._shape_cache.get(rank)
        if cached is None:
            lower, upper = self.lower, self.upper
            scale = _along(self.scale, rank, self.axis)
            lower = _along(lower, rank, self.axis) if isinstance(lower, Tensor) else lower
            upper = _along(upper, rank, self.axis) if isinstance(upper, Tensor) else upper
            cached = self._shape_cache[rank] = (scale, lower, upper)
        return cached


class VendorCodesQuantizer(TensorQuantizer):
    """A constant's quantizer whose codes are the vendor's: the float64 quotient by the
    vendor's own scale, rounded half away from zero (TPU-MLIR's to_int8 and std::round of a
    weight or bias over a double scale), dequantized on the plan's grid. ONNX Runtime's
    float32 quotient rounded half to even gave 1 of pplcnet's 18432 weight codes of one Conv
    another value. Under autograd it is the plan's quantizer."""

    def __init__(self, spec: TensorQuant, device: torch.device, vendor: list[float]) -> None:
        super().__init__(spec, device)
        self.vendor = torch.tensor(vendor, dtype=torch.float64, device=device)

    def __call__(
        self, x: Tensor, overwrite: bool = False, finite: bool = False, out: Tensor | None = None
    ) -> Tensor:
        if x.requires_grad or not x.is_floating_point() or not self.is_int:
            return super().__call__(x, overwrite, finite, out)
        quotient = x.double() / _along(self.vendor, x.dim(), self.axis)
        codes = torch.sign(quotient) * torch.floor(quotient.abs() + 0.5)
        codes = codes.clamp(self.qmin, self.qmax)
        y = (codes.float() * _along(self.scale, x.dim(), self.axis)).to(x.dtype)
        return y if out is None else out.copy_(y)


class F16CastQuantizer(VendorCodesQuantizer):
    """The cast of an F16 op's output to its integer grid: round(F16(v x F16(1 / s))), half
    away from zero, s the vendor's scale (TPU-MLIR's Cast.cpp `requant` for a grid expressed
    in f16; `quantlens.emulate.float_islands`), dequantized on the plan's grid. Under
    autograd it is the plan's quantizer."""

    def __init__(self, spec: TensorQuant, device: torch.device, vendor: float) -> None:
        super().__init__(spec, device, [vendor])
        self.inverse16 = float(torch.tensor(1.0 / vendor, dtype=torch.float64).half())

    def __call__(
        self, x: Tensor, overwrite: bool = False, finite: bool = False, out: Tensor | None = None
    ) -> Tensor:
        if x.requires_grad or not x.is_floating_point() or not self.is_int:
            return super().__call__(x, overwrite, finite, out)
        quotient = to_f16(x.float() * self.inverse16)
        codes = torch.sign(quotient) * torch.floor(quotient.abs() + 0.5)
        codes = codes.clamp(self.qmin, self.qmax)
        y = (codes * _along(self.scale, x.dim(), self.axis)).to(x.dtype)
        return y if out is None else out.copy_(y)


class OffsetHalfAwayQuantizer(TensorQuantizer):
    """A quantizer that rounds as AIMET's simulator does (plan `quantizer_rounding`
    "offset-half-away"): the zero point of the unsigned grid is added to x / scale in float32,
    then rounded half away from zero. Against ours (x / scale rounded half to even, the zero
    point added after) this changes codes at exact ties, frequent in averages of codes (an
    AveragePool over 6 inputs: one output in 6), and where the float32 sum with the zero point
    rounds onto a tie. Dequantized as ours: (code - zero point) x scale."""

    def __init__(self, spec: TensorQuant, device: torch.device) -> None:
        super().__init__(spec, device)
        if isinstance(spec.format, IntFormat) and not self.wide:
            fmt = spec.format
            # The unsigned grid's zero point: a signed code c is c + 2^(bits-1) there.
            shift = 2 ** (fmt.bits - 1) if fmt.signed else 0
            self.offset = self.zero + shift
            self.top = float(2**fmt.bits - 1)

    def __call__(
        self, x: Tensor, overwrite: bool = False, finite: bool = False, out: Tensor | None = None
    ) -> Tensor:
        if self.wide or not self.is_int or not x.is_floating_point():
            return super().__call__(x, overwrite, finite, out)
        data = x.float()
        scale, _, _ = self._broadcast(data.dim())
        offset = _along(self.offset, data.dim(), self.axis)
        if data.requires_grad:  # straight-through: the rounding passes the gradient
            y = data / scale + offset
            codes = self._codes(y.detach().clone())  # _codes works in place
            return ((y + (codes - y).detach() - offset) * scale).to(x.dtype)
        codes = self._codes(torch.div(data, scale).add_(offset), finite)
        result = codes.sub_(offset).mul_(scale).to(x.dtype)
        return result if out is None else out.copy_(result)

    def _codes(self, y: Tensor, finite: bool = False) -> Tensor:
        """`y` rounded half away from zero and clamped to the grid, in place of `y` where it
        can: round half to even, then one up where that rounded a tie down (y - round(y) is
        exact in float32, and 0.5 only there); a negative tie clamps to 0 either way. Half
        the passes of trunc/sign/abs, and two tensors instead of thirteen (qnn-htp's
        emulation ran 3-5x hailo8's time, now 1.4-1.7x: BENCHMARKS.md, emulator speed)."""
        codes = torch.round(y)
        codes.add_(y.sub_(codes).eq_(0.5))
        if not finite:  # AIMET clamps to the float range first: NaN lands on the top code
            codes.nan_to_num_(nan=self.top)
        return codes.clamp_(0.0, self.top)


QUANTIZERS: dict[str, type[TensorQuantizer]] = {
    "half-to-even": TensorQuantizer,
    "offset-half-away": OffsetHalfAwayQuantizer,
}


class QuantHooks:
    """Executor hooks that apply a QuantPlan.

    `only` restricts quantization to the given tensor names (activations or weights), which is
    how isolated per-layer analysis quantizes one layer at a time without touching the plan.
    Quantized weights are cached: they are constants, unless a gradient is asked for.
    """

    def __init__(
        self,
        plan: QuantPlan,
        device: torch.device | str = "cpu",
        only: Collection[str] | None = None,
        values: Mapping[str, Tensor] | None = None,
    ) -> None:
        dev = self._device = torch.device(device)
        # Initializers this run reads in place of the executor's (a unit measured alone on its
        # fixed values while the float run around it keeps the original ones).
        self._values = dict(values or {})
        keep = set(only) if only is not None else None
        self._quantizer = QUANTIZERS[plan.quantizer_rounding]
        self.activations = self._build(plan.activations, dev, keep)
        # A vendor that adds biases in float (`plan.float_bias`) leaves them unquantized here.
        weights = {
            name: quant
            for name, quant in plan.weights.items()
            if not (plan.float_bias and quant.bias_of is not None)
        }
        self.weights = self._build(weights, dev, keep)
        # Ops the vendor computes on integer codes (`QuantPlan.requant`), by node name: only
        # where every grid they read and write is quantized in this run.
        self.kernels: dict[str, KernelFn] = {}
        # Node -> {input index: tensor} it reads before that tensor's quantizer (`FloatNode.raw`,
        # `QuantPlan.raw_reads`).
        self.raw_reads: dict[str, dict[int, str]] = {
            node: dict(reads) for node, reads in plan.raw_reads.items()
        }
        for node, spec in plan.requant.items():
            self._add_kernels(node, spec, plan)
        for node, fspec in plan.float_nodes.items():
            self._add_float_node(node, fspec, plan)
        self._weight_cache: dict[str, Tensor] = {}
        # Integer grids map NaN and Inf onto the grid: what follows them is finite again.
        self.cleans = frozenset(n for n, q in self.activations.items() if q.is_int)
        # fp16 rounding turns values past 65504 into Inf, which a later op can turn into NaN.
        quantizers = [*self.activations.values(), *self.weights.values()]
        self._overflows = any(
            isinstance(q.format, FloatFormat) and q.format.name == "fp16" for q in quantizers
        )

    def _add_kernels(self, node: str, spec: Requant, plan: QuantPlan) -> None:
        """The integer kernel of `node` (and of the bias Add fused into it), where every grid
        it reads and writes is quantized in this run."""
        grids = [n for n in (*spec.inputs, spec.output) if n != spec.weight]
        if not all(name in self.activations for name in grids):
            return
        if spec.kind == "cast":  # the vendor's float -> integer cast of this tensor
            quant = plan.activations[spec.output]
            step = vendor_scale(quant)
            self.activations[spec.output] = (
                F16CastQuantizer(quant, self._device, step)
                if spec.precision == "f16"
                else VendorCodesQuantizer(quant, self._device, [step])
            )
            return
        if spec.weight is not None and spec.weight not in self.weights:
            return
        grid = {
            **plan.activations,
            **({spec.weight: plan.weights[spec.weight]} if spec.weight else {}),
        }
        scales = [torch.tensor(grid[n].scale[:1], dtype=torch.float64) for n in spec.inputs]
        if spec.weight is not None and spec.weight not in spec.inputs:  # a linear op's weight
            scales.append(torch.tensor(plan.weights[spec.weight].scale, dtype=torch.float64))
        out = float(plan.activations[spec.output].scale[0])
        self.kernels[node] = requant_kernel(spec, scales, out)
        vendor = vendor_constant_scales(spec, plan)
        if spec.bias_add is not None:
            acc = torch.tensor(vendor.get("bias", [1.0]), dtype=torch.float64)
            self.kernels[spec.bias_add] = bias_add_kernel(spec, scales, out, acc)
        # The weight and bias codes the vendor computes from the float constants.
        for name, values in vendor.items():
            constant = plan.weights.get(name)
            if constant is not None and name in self.weights:
                self.weights[name] = VendorCodesQuantizer(constant, self._device, values)

    def _add_float_node(self, node: str, spec: FloatNode, plan: QuantPlan) -> None:
        """`node` at the vendor's float precision, where every integer grid its op reads and
        writes is quantized in this run (else it stays float32, as the plan's own arithmetic)."""
        output_quantized = spec.output not in plan.activations or spec.output in self.activations
        read = [*spec.reads.values(), *(n for n in spec.raw.values() if n in plan.activations)]
        if not output_quantized or not all(n in self.activations for n in read):
            return
        scales: dict[int, tuple[float, float]] = {}
        for index, name in spec.reads.items():
            quant = plan.activations[name]
            if not quant.is_int or len(quant.scale) != 1:
                return
            scales[index] = (float(quant.scale[0]), vendor_scale(quant))
        self.kernels[node] = float_node_kernel(spec, scales, self.kernels.get(node))
        if spec.raw:
            self.raw_reads.setdefault(node, {}).update(spec.raw)
        out = plan.activations.get(spec.output)
        if out is not None and out.is_int and len(out.scale) == 1:  # its cast, through f16
            self.activations[spec.output] = F16CastQuantizer(out, self._device, vendor_scale(out))

    def _build(
        self, specs: dict[str, TensorQuant], device: torch.device, keep: set[str] | None
    ) -> dict[str, TensorQuantizer]:
        return {
            name: self._quantizer(spec, device)
            for name, spec in specs.items()
            if keep is None or name in keep
        }

    def activation(self, name: str, tensor: Tensor) -> Tensor:
        quantizer = self.activations.get(name)
        return quantizer(tensor) if quantizer is not None else tensor

    def activation_owned(self, name: str, tensor: Tensor, finite: bool) -> Tensor:
        """`activation` for a tensor the executor just computed and nobody else refers to: it is
        quantized in place (and NaN is not looked for when `finite`)."""
        quantizer = self.activations.get(name)
        if quantizer is None:
            return tensor
        return quantizer(tensor, overwrite=True, finite=finite and not self._overflows)

    def weight(self, name: str, tensor: Tensor) -> Tensor:
        tensor = self._values.get(name, tensor)
        quantizer = self.weights.get(name)
        if quantizer is None:
            return tensor
        if tensor.requires_grad:
            return quantizer(tensor)
        cached = self._weight_cache.get(name)
        if cached is None:
            cached = self._weight_cache[name] = quantizer(tensor)
        return cached

    def forget(self, name: str) -> None:
        """Drop the cached quantized value of a weight whose float value was changed."""
        self._weight_cache.pop(name, None)
