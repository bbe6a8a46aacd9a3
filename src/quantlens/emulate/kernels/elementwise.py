"""Elementwise math, logic and activation kernels (numpy-style broadcasting, as ONNX specifies).

Opsets before 7 broadcast binary ops only when asked (`broadcast=1`), aligning B at `axis`; that
legacy form is honoured by `_legacy_broadcast`. Without `broadcast`, those opsets require equal
shapes, which numpy-style broadcasting accepts as well.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from quantlens.emulate.registry import NodeContext, normal_axis, register

Tensor = torch.Tensor
Inputs = Sequence["Tensor | None"]


def _one(inputs: Inputs) -> Tensor:
    x = inputs[0]
    assert x is not None
    return x


def _two(inputs: Inputs) -> tuple[Tensor, Tensor]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    return a, b


def _present(inputs: Inputs) -> list[Tensor]:
    return [x for x in inputs if x is not None]


def _legacy_broadcast(ctx: NodeContext, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Opset < 7 `broadcast=1, axis=k`: B's dims line up with A's starting at dim k."""
    axis = ctx.attr("axis")
    if ctx.opset >= 7 or not ctx.attr("broadcast", 0) or axis is None or b.dim() == 0:
        return a, b
    trailing = a.dim() - normal_axis(int(axis), a.dim()) - b.dim()
    if trailing > 0:
        b = b.reshape(*b.shape, *([1] * trailing))
    return a, b


def _binary_inputs(ctx: NodeContext, inputs: Inputs) -> tuple[Tensor, Tensor]:
    a, b = _two(inputs)
    return _legacy_broadcast(ctx, a, b)


# --- arithmetic ---------------------------------------------------------------------------------


@register("Add")
def add(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _binary_inputs(ctx, inputs)
    return a + b


@register("Sub")
def sub(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _binary_inputs(ctx, inputs)
    return a - b


@register("Mul")
def mul(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _binary_inputs(ctx, inputs)
    return a * b


@register("Div")
def div(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _binary_inputs(ctx, inputs)
    if a.is_floating_point():
        return a / b
    # Integer Div truncates toward zero (C semantics), unlike torch's true division.
    return torch.div(a, b, rounding_mode="trunc")


@register("Pow")
def pow_(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, y = _binary_inputs(ctx, inputs)
    # From opset 12 the exponent may have another type; the result always has the base's type.
    if x.is_floating_point():
        if y.numel() == 1 and float(y) in (2.0, 3.0):
            # ONNX Runtime squares and cubes by multiplying (x*x, x*x*x); so does torch's pow with
            # a Python number, bit for bit and ~20x faster than with a tensor exponent (a
            # vectorised pow, 1-ulp off on ~2% of values). LayerNorm's variance uses Pow(x, 2).
            return torch.pow(x, float(y))
        return torch.pow(x, y if y.dtype == x.dtype or not y.is_floating_point() else y.to(x.dtype))
    if y.is_floating_point():
        return torch.pow(x.double(), y.double()).to(x.dtype)
    return torch.pow(x, y.to(x.dtype))


@register("Mod", since=10)
def mod(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _two(inputs)
    if ctx.attr("fmod", 0):
        return torch.fmod(a, b)
    result = torch.remainder(a, b)
    if result.is_floating_point():
        # A zero result carries the sign of B (torch returns +0 where numpy/C++ return -0).
        result = torch.where(result == 0, torch.copysign(result, b), result)
    return result


def _variadic(op: Callable[[Tensor, Tensor], Tensor], inputs: Inputs) -> Tensor:
    return functools.reduce(op, _present(inputs))


@register("Sum")
def sum_(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return _variadic(operator.add, inputs)


@register("Mean")
def mean(ctx: NodeContext, inputs: Inputs) -> Tensor:
    present = _present(inputs)
    return functools.reduce(operator.add, present) / len(present)


@register("Min")
def min_(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return _variadic(torch.minimum, inputs)


@register("Max")
def max_(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return _variadic(torch.maximum, inputs)


@register("Clip")
def clip(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _one(inputs)
    if ctx.opset < 11:
        # min/max were float attributes; absent means unbounded.
        low, high = ctx.attr("min"), ctx.attr("max")
        if low is None and high is None:
            return x
        return torch.clamp(x, low, high)
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    if lo is None and hi is None:
        return x
    # torch.clamp with min > max yields max everywhere, as ONNX specifies.
    if _scalar_ok(lo) and _scalar_ok(hi):
        # Scalar bounds take torch's faster scalar kernel (~25% on CPU, e.g. Relu6).
        return torch.clamp(x, _item(lo), _item(hi))
    return torch.clamp(x, lo, hi)


def _scalar_ok(bound: Tensor | None) -> bool:
    """A bound that can become a Python number: CPU (no device sync), one element, no grad."""
    return bound is None or (
        bound.device.type == "cpu" and bound.numel() == 1 and not bound.requires_grad
    )


def _item(bound: Tensor | None) -> float | int | None:
    return None if bound is None else bound.item()


# --- unary math ---------------------------------------------------------------------------------


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[[NodeContext, Inputs], Tensor]:
    def kernel(ctx: NodeContext, inputs: Inputs) -> Tensor:
        return fn(_one(inputs))

    kernel.__name__ = kernel.__qualname__ = fn.__name__
    return kernel


_UNARY: dict[str, tuple[Callable[[Tensor], Tensor], int]] = {
    # op type: (torch function, first opset)
    "Sqrt": (torch.sqrt, 1),
    "Exp": (torch.exp, 1),
    "Log": (torch.log, 1),
    "Abs": (torch.abs, 1),
    "Neg": (torch.neg, 1),
    "Reciprocal": (torch.reciprocal, 1),
    "Floor": (torch.floor, 1),
    "Ceil": (torch.ceil, 1),
    "Round": (torch.round, 11),  # torch.round rounds half to even, as ONNX does
    "Sign": (torch.sign, 9),
    "Relu": (torch.relu, 1),
    "Sigmoid": (torch.sigmoid, 1),
    "Tanh": (torch.tanh, 1),
    "Erf": (torch.erf, 9),
    "Softplus": (F.softplus, 1),
    "Softsign": (F.softsign, 1),
    "Mish": (F.mish, 18),
    "HardSwish": (F.hardswish, 14),
    "Sin": (torch.sin, 7),
    "Cos": (torch.cos, 7),
    "Tan": (torch.tan, 7),
    "Asin": (torch.asin, 7),
    "Acos": (torch.acos, 7),
    "Atan": (torch.atan, 7),
    "Sinh": (torch.sinh, 9),
    "Cosh": (torch.cosh, 9),
    "Asinh": (torch.asinh, 9),
    "Acosh": (torch.acosh, 9),
    "Atanh": (torch.atanh, 9),
    "Not": (torch.logical_not, 1),
    "IsNaN": (torch.isnan, 9),
    "BitwiseNot": (torch.bitwise_not, 18),
}

for _op, (_fn, _since) in _UNARY.items():
    register(_op, since=_since)(_unary(_fn))


# --- parameterised activations ------------------------------------------------------------------


@register("LeakyRelu")
def leaky_relu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return F.leaky_relu(_one(inputs), float(ctx.attr("alpha", 0.01)))


@register("PRelu")
def prelu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, slope = _two(inputs)
    # where() rather than F.prelu: ONNX broadcasts the slope numpy-style, not per channel.
    return torch.where(x < 0, x * slope, x)


@register("Elu")
def elu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return F.elu(_one(inputs), float(ctx.attr("alpha", 1.0)))


@register("Selu")
def selu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    return gamma * F.elu(_one(inputs), alpha)


@register("Celu", since=12)
def celu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return F.celu(_one(inputs), float(ctx.attr("alpha", 1.0)))


@register("ThresholdedRelu", since=10)
def thresholded_relu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _one(inputs)
    return torch.where(x > float(ctx.attr("alpha", 1.0)), x, 0.0)


@register("HardSigmoid")
def hard_sigmoid(ctx: NodeContext, inputs: Inputs) -> Tensor:
    alpha = float(ctx.attr("alpha", 0.2))
    beta = float(ctx.attr("beta", 0.5))
    return torch.clamp(_one(inputs) * alpha + beta, 0.0, 1.0)


@register("Gelu", since=20)
def gelu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.reject(f"unknown approximate={approximate!r}")
    return F.gelu(_one(inputs), approximate=approximate)


@register("Swish", since=24)
def swish(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _one(inputs)
    alpha = float(ctx.attr("alpha", 1.0))
    return F.silu(x) if alpha == 1.0 else x * torch.sigmoid(alpha * x)


# --- logic and comparison -----------------------------------------------------------------------

_BINARY: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], int]] = {
    # op type: (torch function, first opset); opsets < 7 use the legacy broadcast attributes
    "And": (torch.logical_and, 1),
    "Or": (torch.logical_or, 1),
    "Xor": (torch.logical_xor, 1),
    "Equal": (torch.eq, 1),
    "Less": (torch.lt, 1),
    "Greater": (torch.gt, 1),
    "LessOrEqual": (torch.le, 12),
    "GreaterOrEqual": (torch.ge, 12),
    "BitwiseAnd": (torch.bitwise_and, 18),
    "BitwiseOr": (torch.bitwise_or, 18),
    "BitwiseXor": (torch.bitwise_xor, 18),
}


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[NodeContext, Inputs], Tensor]:
    def kernel(ctx: NodeContext, inputs: Inputs) -> Tensor:
        return fn(*_binary_inputs(ctx, inputs))

    kernel.__name__ = kernel.__qualname__ = fn.__name__
    return kernel


for _op, (_fn2, _since) in _BINARY.items():
    register(_op, since=_since)(_binary(_fn2))


@register("Where", since=9)
def where(ctx: NodeContext, inputs: Inputs) -> Tensor:
    cond, x, y = inputs[0], inputs[1], inputs[2]
    assert cond is not None and x is not None and y is not None
    return torch.where(cond.bool(), x, y)


@register("IsInf", since=10)
def is_inf(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _one(inputs)
    positive, negative = ctx.attr("detect_positive", 1), ctx.attr("detect_negative", 1)
    if positive and negative:
        return torch.isinf(x)
    if positive:
        return torch.isposinf(x)
    if negative:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@register("BitShift", since=11)
def bit_shift(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, y = _two(inputs)
    direction = ctx.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        raise ctx.reject(f"direction must be LEFT or RIGHT, not {direction!r}")
    bits = torch.iinfo(x.dtype).bits
    # Shifts outside [0, bits) are undefined in C++/torch; ONNX gives what sign extension
    # alone produces: -1 for a right shift of a negative X, else 0.
    in_range = (y >= 0) & (y < bits)
    shift = torch.clamp(y, 0, bits - 1).to(x.dtype)
    if direction == "LEFT":
        return torch.where(in_range, torch.bitwise_left_shift(x, shift), 0)
    shifted = torch.bitwise_right_shift(x, shift)
    return torch.where(in_range, shifted, torch.where(x < 0, -1, 0).to(x.dtype))


# --- identity-like ------------------------------------------------------------------------------


@register("Identity")
def identity(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return _one(inputs)


@register("Dropout")
def dropout(ctx: NodeContext, inputs: Inputs) -> Tensor | Sequence[Tensor]:
    """Inference dropout: Y = X, and a mask of all ones when the node asks for it."""
    x = _one(inputs)
    if ctx.opset >= 12:
        ratio = inputs[1] if len(inputs) > 1 else None
        training = inputs[2] if len(inputs) > 2 else None
        # Training with ratio 0 keeps everything, so only a nonzero ratio is random.
        if training is not None and bool(training) and (ratio is None or float(ratio) != 0.0):
            raise ctx.reject("training_mode=true makes Dropout random; emulation is inference")
    # Opsets < 7 carry an `is_test` flag; runtimes treat those nodes as inference too.
    if ctx.num_outputs < 2:
        return x
    # The mask is bool from opset 10; before that it had the input's type.
    mask_dtype = torch.bool if ctx.opset >= 10 else x.dtype
    return x, torch.ones_like(x, dtype=mask_dtype)
