"""Shape and data-movement kernels: reshape, concat, slice, gather, cast, shape arithmetic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F

from quantlens.emulate.registry import (
    NodeContext,
    ints,
    normal_axis,
    register,
    tensor_from_numpy,
    torch_dtype,
)

Tensor = torch.Tensor
Inputs = Sequence["Tensor | None"]

# The executor widens ONNX's wide unsigned types to int64 (torch lacks kernels for them); casts
# into them do the same, wrapping to the target width like a C cast would.
_WIDENED_UNSIGNED = {
    ir.DataType.UINT16.value: 16,
    ir.DataType.UINT32.value: 32,
    ir.DataType.UINT64.value: 64,
}


def _arg(inputs: Inputs, index: int) -> Tensor | None:
    return inputs[index] if index < len(inputs) else None


def _req(inputs: Inputs, index: int = 0) -> Tensor:
    x = _arg(inputs, index)
    assert x is not None, f"input {index} is required"
    return x


def _scalar(tensor: Tensor) -> Any:
    """A one-element tensor as a Python number."""
    return tensor.reshape(-1)[0].item()


def _wrap_indices(indices: Tensor, size: int | Tensor) -> Tensor:
    """ONNX allows negative indices counting from the end; torch's gather/scatter do not."""
    indices = indices.long()
    return torch.where(indices < 0, indices + size, indices)


def _cast(x: Tensor, onnx_type: int) -> Tensor:
    bits = _WIDENED_UNSIGNED.get(onnx_type)
    if bits is None:
        return x.to(torch_dtype(onnx_type))
    wide = x.to(torch.int64)
    return wide if bits == 64 else wide & ((1 << bits) - 1)


# --- joining and splitting -------------------------------------------------------------------


@register("Concat")
def concat(ctx: NodeContext, inputs: Inputs) -> Tensor:
    tensors = [x for x in inputs if x is not None]
    # Concat-1 defaults the axis to 1; later versions require it.
    axis = normal_axis(ctx.attr("axis", 1), tensors[0].dim())
    return torch.cat(tensors, dim=axis)


@register("Split")
def split(ctx: NodeContext, inputs: Inputs) -> Sequence[Tensor]:
    x = _req(inputs)
    axis = normal_axis(ctx.attr("axis", 0), x.dim())
    size = x.shape[axis]
    split_input = _arg(inputs, 1)
    sizes = ints(split_input) if split_input is not None else list(ctx.attr("split", []))
    if not sizes:
        count = ctx.attr("num_outputs", ctx.num_outputs)
        chunk = -(-size // count)
        # An uneven split leaves the remainder to the last output (it may be empty).
        sizes = [chunk] * (count - 1) + [size - chunk * (count - 1)]
    return list(torch.split(x, sizes, dim=axis))


# --- slicing and indexing --------------------------------------------------------------------


@register("Slice")
def slice_(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    if ctx.opset < 10:
        starts, ends = list(ctx.attr("starts")), list(ctx.attr("ends"))
        axes = list(ctx.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes_t, steps_t = _arg(inputs, 3), _arg(inputs, 4)
        axes = ints(axes_t) if axes_t is not None else list(range(len(starts)))
        steps = ints(steps_t) if steps_t is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    reversed_steps: dict[int, int] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = normal_axis(axis, x.dim())
        # Python's slice.indices clamps exactly as ONNX specifies, for either sign of step.
        picked = range(*slice(start, end, step).indices(x.shape[axis]))
        if not picked:
            index[axis] = slice(0, 0)
        elif step > 0:
            index[axis] = slice(picked.start, picked.stop, step)
        else:
            # torch has no negative strides: take the span ascending, flip it, then stride it.
            index[axis] = slice(picked[-1], picked[0] + 1)
            reversed_steps[axis] = -step
    y = x[tuple(index)]
    if not reversed_steps:
        return y
    y = y.flip(list(reversed_steps))
    strided = [slice(None, None, reversed_steps.get(axis, 1)) for axis in range(x.dim())]
    return y[tuple(strided)]


@register("Gather")
def gather(ctx: NodeContext, inputs: Inputs) -> Tensor:
    data, indices = _req(inputs, 0), _req(inputs, 1)
    axis = normal_axis(ctx.attr("axis", 0), data.dim())
    flat = _wrap_indices(indices, data.shape[axis]).reshape(-1)
    picked = data.index_select(axis, flat)
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]))


@register("GatherElements", since=11)
def gather_elements(ctx: NodeContext, inputs: Inputs) -> Tensor:
    data, indices = _req(inputs, 0), _req(inputs, 1)
    axis = normal_axis(ctx.attr("axis", 0), data.dim())
    return data.gather(axis, _wrap_indices(indices, data.shape[axis]))


def _linear_index(indices: Tensor, dims: Sequence[int]) -> Tensor:
    """Row-major offsets of the index tuples in `indices`' last axis into a block of `dims`."""
    wrapped = _wrap_indices(indices, torch.tensor(dims, device=indices.device))
    strides = [math.prod(dims[i + 1 :]) for i in range(len(dims))]
    return (wrapped * torch.tensor(strides, device=indices.device)).sum(-1)


@register("GatherND", since=11)
def gather_nd(ctx: NodeContext, inputs: Inputs) -> Tensor:
    data, indices = _req(inputs, 0), _req(inputs, 1)
    batch_dims = ctx.attr("batch_dims", 0)
    depth = indices.shape[-1]
    batch = math.prod(data.shape[:batch_dims])
    tail = data.shape[batch_dims + depth :]
    rows = data.reshape(batch, -1, *tail) if data.numel() else data.reshape(batch, 0, *tail)
    offsets = _linear_index(indices, data.shape[batch_dims : batch_dims + depth])
    offsets = offsets.reshape(batch, -1)
    batch_ids = torch.arange(batch, device=data.device).unsqueeze(1)
    return rows[batch_ids, offsets].reshape((*indices.shape[:-1], *tail))


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register("ScatterND", since=11)
def scatter_nd(ctx: NodeContext, inputs: Inputs) -> Tensor:
    data, indices, updates = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    depth = indices.shape[-1]
    tail = data.shape[depth:]
    rows = data.reshape(math.prod(data.shape[:depth]), *tail)
    offsets = _linear_index(indices, data.shape[:depth]).reshape(-1)
    values = updates.reshape(-1, *tail).to(data.dtype)
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        out = rows.index_put((offsets,), values)
    elif reduction == "add":
        out = rows.index_put((offsets,), values, accumulate=True)
    elif reduction in _SCATTER_REDUCE:
        # scatter_reduce wants one index per updated element, so repeat the row index.
        per_element = offsets.reshape(-1, *[1] * len(tail)).expand_as(values)
        out = rows.scatter_reduce(0, per_element, values, _SCATTER_REDUCE[reduction])
    else:
        raise ctx.reject(f"reduction {reduction!r}")
    return out.reshape(data.shape)


@register("ScatterElements", since=11)
@register("Scatter", since=9, until=10)
def scatter_elements(ctx: NodeContext, inputs: Inputs) -> Tensor:
    data, indices, updates = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    axis = normal_axis(ctx.attr("axis", 0), data.dim())
    wrapped = _wrap_indices(indices, data.shape[axis])
    updates = updates.to(data.dtype)
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        return data.scatter(axis, wrapped, updates)
    if reduction not in _SCATTER_REDUCE:
        raise ctx.reject(f"reduction {reduction!r}")
    return data.scatter_reduce(axis, wrapped, updates, _SCATTER_REDUCE[reduction])


@register("Compress", since=9)
def compress(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, condition = _req(inputs, 0), _req(inputs, 1)
    axis = ctx.attr("axis")
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = normal_axis(axis, x.dim())
    # A condition shorter than the axis selects nothing beyond its end.
    keep = condition.reshape(-1)[: x.shape[axis]].nonzero().reshape(-1)
    return x.index_select(axis, keep)


# --- reshaping -------------------------------------------------------------------------------


@register("Reshape")
def reshape(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    shape = list(ctx.attr("shape", [])) if ctx.opset < 5 else ints(inputs[1])
    if not ctx.attr("allowzero", 0):
        # 0 copies the input's dimension unless allowzero says it means an empty dimension.
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = x.numel() // known if known else 0
    return x.reshape(shape)


@register("Transpose")
def transpose(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    perm = ctx.attr("perm") or list(reversed(range(x.dim())))
    return x.permute(perm)


def _axes(ctx: NodeContext, inputs: Inputs) -> list[int] | None:
    """`axes` of Squeeze/Unsqueeze: an attribute before opset 13, an input since."""
    if ctx.opset < 13:
        axes = ctx.attr("axes")
        return None if axes is None else list(axes)
    axes_t = _arg(inputs, 1)
    return None if axes_t is None else ints(axes_t)


@register("Squeeze")
def squeeze(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    axes = _axes(ctx, inputs)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(normal_axis(a, x.dim()) for a in axes))


@register("Unsqueeze")
def unsqueeze(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    axes = _axes(ctx, inputs) or []
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for axis in sorted(normal_axis(a, rank) for a in axes):
        shape.insert(axis, 1)
    return x.reshape(shape)


@register("Flatten")
def flatten(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    axis = normal_axis(ctx.attr("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Expand", since=8)
def expand(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    # Bidirectional broadcasting: the requested shape may hold 1 where the input is larger.
    shape = torch.broadcast_shapes(x.shape, tuple(ints(inputs[1])))
    return x.expand(shape)


@register("Tile")
def tile(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    if ctx.opset < 6:
        # Tile-1 repeats one axis, both given as scalar inputs.
        repeats = [1] * x.dim()
        repeats[normal_axis(int(_scalar(_req(inputs, 2))), x.dim())] = int(_scalar(_req(inputs, 1)))
        return x.repeat(repeats)
    return x.repeat(ints(inputs[1]))


@register("DepthToSpace")
def depth_to_space(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    bs = ctx.attr("blocksize")
    b, c, h, w = x.shape
    depth = c // (bs * bs)
    if ctx.attr("mode", "DCR") == "DCR":
        y = x.reshape(b, bs, bs, depth, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(b, depth, bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(b, depth, h * bs, w * bs)


@register("SpaceToDepth")
def space_to_depth(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    bs = ctx.attr("blocksize")
    b, c, h, w = x.shape
    y = x.reshape(b, c, h // bs, bs, w // bs, bs)
    if ctx.attr("mode", "DCR") == "DCR":
        y = y.permute(0, 3, 5, 1, 2, 4)
    else:
        y = y.permute(0, 1, 3, 5, 2, 4)
    return y.reshape(b, c * bs * bs, h // bs, w // bs)


# --- padding ---------------------------------------------------------------------------------


def _pad_source(mode: str, begin: int, end: int, size: int, device: torch.device) -> Tensor:
    """Which input position each output position along one axis reads, for a non-constant mode."""
    # Negative pads crop first (as ONNX Runtime does); the rest pads the cropped span.
    low, size = max(-begin, 0), size - max(-begin, 0) - max(-end, 0)
    position = torch.arange(-max(begin, 0), size + max(end, 0), device=device)
    if mode == "edge":
        position = position.clamp(0, size - 1)
    elif mode == "wrap":
        position = position.remainder(size)
    else:
        # reflect: the sequence 0..n-1..1 repeats with period 2(n-1).
        period = max(2 * (size - 1), 1)
        position = position.remainder(period)
        position = torch.where(position >= size, period - position, position)
    return position + low


@register("Pad")
def pad(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads = list(ctx.attr("pads" if ctx.opset >= 2 else "paddings"))
        value = float(ctx.attr("value", 0.0))
        axes = list(range(x.dim()))
    else:
        pads = ints(inputs[1])
        value_t = _arg(inputs, 2)
        value = _scalar(value_t) if value_t is not None and value_t.numel() else 0
        axes_t = _arg(inputs, 3)
        axes = ints(axes_t) if axes_t is not None else list(range(x.dim()))
    axes = [normal_axis(a, x.dim()) for a in axes]
    begins, ends = pads[: len(axes)], pads[len(axes) :]
    if mode == "constant":
        # F.pad lists (begin, end) pairs from the last axis backwards; negative pads crop.
        torch_pads = [0, 0] * x.dim()
        for axis, begin, end in zip(axes, begins, ends, strict=True):
            slot = 2 * (x.dim() - 1 - axis)
            torch_pads[slot : slot + 2] = [begin, end]
        return F.pad(x, torch_pads, value=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise ctx.reject(f"pad mode {mode!r}")
    for axis, begin, end in zip(axes, begins, ends, strict=True):
        if begin or end:
            source = _pad_source(mode, begin, end, x.shape[axis], x.device)
            x = x.index_select(axis, source)
    return x


# --- types -----------------------------------------------------------------------------------


@register("Cast")
def cast(ctx: NodeContext, inputs: Inputs) -> Tensor:
    to = ctx.attr("to")
    if isinstance(to, str):
        # Cast-1 names the type ("FLOAT") instead of giving its number.
        to = ir.DataType[to.upper()].value
    return _cast(_req(inputs), to)


@register("CastLike", since=15)
def cast_like(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return _req(inputs, 0).to(_req(inputs, 1).dtype)


# --- shapes and constants --------------------------------------------------------------------


@register("Shape")
def shape(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    dims = list(x.shape)[ctx.attr("start", 0) : ctx.attr("end", x.dim())]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


@register("Size")
def size(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("ConstantOfShape", since=9)
def constant_of_shape(ctx: NodeContext, inputs: Inputs) -> Tensor:
    dims = _req(inputs)
    value = ctx.attr("value")
    fill = (
        tensor_from_numpy(value, ctx.device)
        if value is not None
        else torch.zeros((), dtype=torch.float32)
    )
    return torch.full(ints(dims), _scalar(fill), dtype=fill.dtype, device=dims.device)


@register("Constant")
def constant(ctx: NodeContext, inputs: Inputs) -> Tensor:
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32)):
        if key in ctx.attrs:
            return tensor_from_numpy(np.asarray(ctx.attrs[key], dtype=dtype), ctx.device)
    for key in ("value_int", "value_ints"):
        if key in ctx.attrs:
            return tensor_from_numpy(np.asarray(ctx.attrs[key], dtype=np.int64), ctx.device)
    if "value" in ctx.attrs:
        return tensor_from_numpy(ctx.attrs["value"], ctx.device)
    raise ctx.reject(f"only numeric dense values are supported, got {sorted(ctx.attrs)}")


@register("Range", since=11)
def range_(ctx: NodeContext, inputs: Inputs) -> Tensor:
    start, limit, delta = _req(inputs, 0), _req(inputs, 1), _req(inputs, 2)
    first, stop, step = _scalar(start), _scalar(limit), _scalar(delta)
    count = max(math.ceil((stop - first) / step), 0)
    dtype = start.dtype
    work = dtype
    if dtype in (torch.float16, torch.bfloat16):
        # Half-precision ranges are computed in the stash type (float32 unless it says double).
        work = torch.float64 if ctx.attr("stash_type", 1) == ir.DataType.DOUBLE else torch.float32
    steps = torch.arange(count, dtype=work, device=start.device)
    return (start.to(work).reshape(()) + steps * delta.to(work).reshape(())).to(dtype)


@register("EyeLike", since=9)
def eye_like(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    cols = torch.arange(x.shape[1], device=x.device)
    dtype = ctx.attr("dtype")
    on_diagonal = cols - rows == ctx.attr("k", 0)
    return _cast(on_diagonal, dtype) if dtype is not None else on_diagonal.to(x.dtype)


@register("Trilu", since=14)
def trilu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    k_t = _arg(inputs, 1)
    k = int(_scalar(k_t)) if k_t is not None else 0
    return x.triu(k) if ctx.attr("upper", 1) else x.tril(k)


@register("OneHot", since=9)
def one_hot(ctx: NodeContext, inputs: Inputs) -> Tensor:
    indices, values = _req(inputs, 0), _req(inputs, 2)
    depth = int(_scalar(_req(inputs, 1)))
    axis = normal_axis(ctx.attr("axis", -1), indices.dim() + 1)
    # Negative indices count from depth; anything out of range gets no hot entry.
    wrapped = _wrap_indices(indices, depth)
    hot = wrapped.unsqueeze(-1) == torch.arange(depth, device=indices.device)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return torch.where(hot, on, off).movedim(-1, axis)


# --- search ----------------------------------------------------------------------------------


@register("TopK")
def top_k(ctx: NodeContext, inputs: Inputs) -> Sequence[Tensor]:
    x = _req(inputs)
    k = ctx.attr("k") if ctx.opset < 10 else int(_scalar(_req(inputs, 1)))
    axis = normal_axis(ctx.attr("axis", -1), x.dim())
    largest = bool(ctx.attr("largest", 1))
    # A stable sort keeps equal values in index order, which is how ONNX breaks ties.
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return values.narrow(axis, 0, k), indices.narrow(axis, 0, k)


@register("NonZero", since=9)
def non_zero(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs)
    # Like ONNX Runtime, a scalar counts as a one-element vector.
    return torch.nonzero(x.reshape(-1) if x.dim() == 0 else x).T.contiguous()
