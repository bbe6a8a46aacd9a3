"""Reductions and normalizations over axes: Reduce*, Softmax, LayerNormalization, ArgMax."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from quantlens.emulate.registry import NodeContext, ints, normal_axis, register, torch_dtype

Tensor = torch.Tensor
Inputs = Sequence["Tensor | None"]
Reducer = Callable[[Tensor, list[int]], Tensor]  # reduces over dims, keeping them (keepdim=True)


def _first(inputs: Inputs) -> Tensor:
    x = inputs[0]
    assert x is not None
    return x


def _input(inputs: Inputs, index: int) -> Tensor | None:
    return inputs[index] if len(inputs) > index else None


# --- Reduce* -----------------------------------------------------------------------------------

# Opset from which `axes` is an input rather than an attribute (ReduceSum moved earlier).
_AXES_INPUT_SINCE = 13
_AXES_INPUT_SINCE_REST = 18


def _reduce_dims(ctx: NodeContext, inputs: Inputs, rank: int) -> list[int]:
    """The dims to reduce, sorted; empty when there are none (noop_with_empty_axes, rank 0)."""
    since = _AXES_INPUT_SINCE if ctx.op_type == "ReduceSum" else _AXES_INPUT_SINCE_REST
    if ctx.opset >= since:
        axes = ints(_input(inputs, 1))
        if not axes and ctx.attr("noop_with_empty_axes", 0):
            return []
    else:
        axes = list(ctx.attr("axes", None) or [])
    if not axes:
        return list(range(rank))
    return sorted({normal_axis(a, rank) for a in axes})


def _float_of(x: Tensor) -> Tensor:
    """`x` itself if floating, else as float64 (ops like sqrt/log need it; cast back after)."""
    return x if x.is_floating_point() else x.to(torch.float64)


def _prod(x: Tensor, dims: list[int]) -> Tensor:
    # torch.prod takes a single dim; reduce one at a time (keepdim keeps the indices valid).
    for dim in dims:
        x = torch.prod(x, dim, keepdim=True, dtype=x.dtype)
    return x


def _extreme(x: Tensor, dims: list[int], largest: bool) -> Tensor:
    if x.dtype == torch.bool:
        return x.any(dims, keepdim=True) if largest else x.all(dims, keepdim=True)
    if any(x.shape[d] == 0 for d in dims):
        # torch refuses empty reductions; ONNX defines them as the identity of max/min.
        shape = [1 if d in dims else n for d, n in enumerate(x.shape)]
        if x.is_floating_point():
            fill = -math.inf if largest else math.inf
        else:
            info = torch.iinfo(x.dtype)
            fill = info.min if largest else info.max
        return torch.full(shape, fill, dtype=x.dtype, device=x.device)
    return x.amax(dims, keepdim=True) if largest else x.amin(dims, keepdim=True)


def _mean(x: Tensor, dims: list[int]) -> Tensor:
    if x.is_floating_point():
        return x.mean(dims, keepdim=True)
    count = math.prod(x.shape[d] for d in dims)
    total = x.sum(dims, keepdim=True, dtype=x.dtype)
    return torch.div(total, count, rounding_mode="trunc")


def _norm(x: Tensor, dims: list[int], p: int) -> Tensor:
    if x.is_floating_point():
        # vector_norm has a well-defined gradient at zero, unlike sqrt(sum(x * x)).
        return torch.linalg.vector_norm(x, p, dims, keepdim=True)
    if p == 1:
        return x.abs().sum(dims, keepdim=True, dtype=x.dtype)
    return torch.sqrt((x * x).sum(dims, keepdim=True, dtype=torch.float64)).to(x.dtype)


def _log_sum(x: Tensor, dims: list[int]) -> Tensor:
    return torch.log(_float_of(x).sum(dims, keepdim=True)).to(x.dtype)


def _log_sum_exp(x: Tensor, dims: list[int]) -> Tensor:
    if x.numel() == 0:  # torch.logsumexp rejects empty input; the empty sum's log is -inf
        return _log_sum(torch.exp(_float_of(x)), dims).to(x.dtype)
    return torch.logsumexp(_float_of(x), dims, keepdim=True).to(x.dtype)


_REDUCERS: dict[str, Reducer] = {
    "ReduceSum": lambda x, d: x.sum(d, keepdim=True, dtype=x.dtype),
    "ReduceMean": _mean,
    "ReduceMax": lambda x, d: _extreme(x, d, largest=True),
    "ReduceMin": lambda x, d: _extreme(x, d, largest=False),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, d: _norm(x, d, 1),
    "ReduceL2": lambda x, d: _norm(x, d, 2),
    "ReduceSumSquare": lambda x, d: (x * x).sum(d, keepdim=True, dtype=x.dtype),
    "ReduceLogSum": _log_sum,
    "ReduceLogSumExp": _log_sum_exp,
}


# Ops whose element-wise map is the identity, so a reduction over no axes returns the input.
_PLAIN = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd"}


@register(*_REDUCERS)
def reduce(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _first(inputs)
    reducer = _REDUCERS[ctx.op_type]
    dims = _reduce_dims(ctx, inputs, x.dim())
    if not dims:
        # No axes (noop_with_empty_axes, or a rank-0 input): the spec and ORT still apply
        # the op's element map (abs, square, log...), so reduce over a new axis of size one.
        return x if ctx.op_type in _PLAIN else reducer(x.unsqueeze(-1), [x.dim()]).squeeze(-1)
    out = reducer(x, dims)
    return out if ctx.attr("keepdims", 1) else out.squeeze(dims)


# --- ArgMax / ArgMin ---------------------------------------------------------------------------


@register("ArgMax", "ArgMin")
def arg_extreme(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _first(inputs)
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    axis = normal_axis(int(ctx.attr("axis", 0)), x.dim())
    find = torch.argmax if ctx.op_type == "ArgMax" else torch.argmin
    keepdims = bool(ctx.attr("keepdims", 1))
    if ctx.attr("select_last_index", 0):
        # torch returns the first extreme index; search the flipped axis and map back.
        flipped = find(x.flip(axis), axis, keepdim=keepdims)
        return x.shape[axis] - 1 - flipped
    return find(x, axis, keepdim=keepdims)


# --- Softmax / LogSoftmax / Hardmax ------------------------------------------------------------


def _hardmax(x: Tensor, dim: int) -> Tensor:
    index = torch.argmax(x, dim, keepdim=True)
    return torch.zeros_like(x).scatter(dim, index, 1)


_SOFTMAXES: dict[str, Callable[[Tensor, int], Tensor]] = {
    "Softmax": torch.softmax,
    "LogSoftmax": torch.log_softmax,
    "Hardmax": _hardmax,
}


@register(*_SOFTMAXES, since=13)
def softmax(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _first(inputs)
    return _SOFTMAXES[ctx.op_type](x, normal_axis(int(ctx.attr("axis", -1)), x.dim()))


@register(*_SOFTMAXES, until=12)
def softmax_legacy(ctx: NodeContext, inputs: Inputs) -> Tensor:
    # Before opset 13 the input is coerced to 2-D at `axis` and normalised over the whole tail.
    x = _first(inputs)
    axis = normal_axis(int(ctx.attr("axis", 1)), x.dim())
    flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
    return _SOFTMAXES[ctx.op_type](flat, 1).reshape(x.shape)


# --- normalizations ----------------------------------------------------------------------------


@register("LayerNormalization", since=17)
def layer_normalization(ctx: NodeContext, inputs: Inputs) -> Tensor | list[Tensor]:
    x, scale, bias = _first(inputs), inputs[1], _input(inputs, 2)
    assert scale is not None
    axis = normal_axis(int(ctx.attr("axis", -1)), x.dim())
    eps = float(ctx.attr("epsilon", 1e-5))
    # The first stage (normalization) runs in stash_type; scale and bias apply in X's type.
    xs = x.to(torch_dtype(int(ctx.attr("stash_type", 1))))
    if ctx.num_outputs == 1:  # the fused kernel, when Mean and InvStdDev are not wanted
        return _affine(F.layer_norm(xs, xs.shape[axis:], eps=eps).to(x.dtype), scale, bias)
    var, mean = torch.var_mean(xs, list(range(axis, x.dim())), correction=0, keepdim=True)
    inv_std = torch.rsqrt(var + eps)
    return [_affine(((xs - mean) * inv_std).to(x.dtype), scale, bias), mean, inv_std]


def _affine(x: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    return x * scale if bias is None else x * scale + bias


@register("GroupNormalization", since=18)
def group_normalization(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, scale, bias = _first(inputs), inputs[1], inputs[2]
    assert scale is not None and bias is not None
    groups = int(ctx.attr("num_groups"))
    channels = x.shape[1]
    if ctx.opset < 21:
        # Opset 18 scales and shifts per group, and normalizes in X's own type.
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
        stash = x.dtype
    else:
        stash = torch_dtype(int(ctx.attr("stash_type", 1)))
    eps = float(ctx.attr("epsilon", 1e-5))
    normed = F.group_norm(x.to(stash), groups, eps=eps).to(x.dtype)
    per_channel = (1, channels) + (1,) * (x.dim() - 2)
    return normed * scale.reshape(per_channel) + bias.reshape(per_channel)


@register("MeanVarianceNormalization", since=9)
def mean_variance_normalization(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _first(inputs)
    dims = [normal_axis(a, x.dim()) for a in ctx.attr("axes", [0, 2, 3])]
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    # ONNX adds epsilon to the standard deviation, not to the variance.
    return (x - mean) / (torch.sqrt(var) + 1e-9)


@register("LpNormalization")
def lp_normalization(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _first(inputs)
    p = int(ctx.attr("p", 2))
    if p not in (1, 2):
        raise ctx.reject(f"p={p} (ONNX allows only 1 and 2)")
    axis = normal_axis(int(ctx.attr("axis", -1)), x.dim())
    norm = torch.linalg.vector_norm(x, p, axis, keepdim=True)
    # A zero norm means an all-zero slice, whose output is zero; divide by 1 there instead.
    return x / torch.where(norm == 0, torch.ones_like(norm), norm)


# --- CumSum / Einsum ---------------------------------------------------------------------------


@register("CumSum", since=11)
def cumsum(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, axis_t = _first(inputs), inputs[1]
    assert axis_t is not None
    axis = normal_axis(int(axis_t.reshape(-1)[0]), x.dim())
    reverse = bool(ctx.attr("reverse", 0))
    y = x.flip(axis) if reverse else x
    out = torch.cumsum(y, axis, dtype=x.dtype)
    if ctx.attr("exclusive", 0) and y.shape[axis] > 0:
        # Shift by one rather than subtract x, which would add float rounding.
        zero = torch.zeros_like(y.narrow(axis, 0, 1))
        out = torch.cat([zero, out.narrow(axis, 0, y.shape[axis] - 1)], axis)
    return out.flip(axis) if reverse else out


@register("Einsum", since=12)
def einsum(ctx: NodeContext, inputs: Inputs) -> Tensor:
    operands = [t for t in inputs if t is not None]
    equation = str(ctx.attr("equation")).replace(" ", "")
    return torch.einsum(equation, *operands)
