"""Neural-network kernels: convolution, matrix products, pooling, normalization, resize.

Geometry (output sizes, auto_pad splits, ceil_mode) follows ONNX Runtime, which is what the
emulator is compared against. Common attribute combinations go straight to torch's fused kernels;
unusual ones (asymmetric pads, ceil_mode windows torch sizes differently, dilated average pooling)
take an explicit-padding path that is still vectorized.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from quantlens.emulate.registry import NodeContext, normal_axis, register

Tensor = torch.Tensor
Inputs = Sequence["Tensor | None"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
# Typed loosely: the return type depends on `return_indices`, which mypy cannot follow here.
_MAX_POOL: dict[int, Callable[..., Any]] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _req(inputs: Inputs, index: int) -> Tensor:
    value = inputs[index] if index < len(inputs) else None
    assert value is not None, f"input {index} is required"
    return value


def _opt(inputs: Inputs, index: int) -> Tensor | None:
    return inputs[index] if index < len(inputs) else None


def _spatial_rank(ctx: NodeContext, x: Tensor) -> int:
    nd = x.dim() - 2
    if nd not in (1, 2, 3):
        raise ctx.reject(f"{nd}-D spatial input (1-D to 3-D are supported)")
    return nd


def _ints_attr(ctx: NodeContext, name: str, nd: int, default: int) -> list[int]:
    value = ctx.attr(name)
    return [int(v) for v in value] if value else [default] * nd


def _split(total: int, upper: bool) -> tuple[int, int]:
    """(begin, end) halves of `total` padding; SAME_UPPER puts the odd unit at the end."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _window_pads(
    ctx: NodeContext,
    spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(begins, ends) of the padding for sliding windows of extent `window` (auto_pad or pads)."""
    nd = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, extent, stride in zip(spatial, window, strides, strict=True):
            out = -(-size // stride)
            begin, end = _split(
                max(0, (out - 1) * stride + extent - size), auto_pad == "SAME_UPPER"
            )
            begins.append(begin)
            ends.append(end)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if auto_pad not in ("NOTSET", ""):
        raise ctx.reject(f"auto_pad={auto_pad!r}")
    pads = _ints_attr(ctx, "pads", 2 * nd, 0)
    return pads[:nd], pads[nd:]


def _pad_arg(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """F.pad's argument (last dimension first) for per-dimension begin/end padding."""
    arg: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends), strict=True):
        arg += [begin, end]
    return arg


def _fast_layout(x: Tensor) -> Tensor:
    """4-D CPU float activations in channels_last.

    oneDNN's convolutions and torch's CPU pooling run several times faster on NHWC (depthwise
    convolution and pooling up to 10x); the layout then carries over to the following nodes, so
    a chain of convolutions pays for the conversion once.
    """
    if x.dim() == 4 and x.device.type == "cpu" and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


# --- convolution -------------------------------------------------------------------------------


@register("Conv")
def conv(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, w, b = _fast_layout(_req(inputs, 0)), _req(inputs, 1), _opt(inputs, 2)
    nd = _spatial_rank(ctx, x)
    strides = _ints_attr(ctx, "strides", nd, 1)
    dilations = _ints_attr(ctx, "dilations", nd, 1)
    group = int(ctx.attr("group", 1))
    extents = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dilations, strict=True)]
    begins, ends = _window_pads(ctx, x.shape[2:], extents, strides)
    if begins != ends:
        x = F.pad(x, _pad_arg(begins, ends))
        begins = [0] * nd
    return _CONV[nd](x, w, b, strides, begins, dilations, group)


@register("ConvTranspose")
def conv_transpose(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, w, b = _fast_layout(_req(inputs, 0)), _req(inputs, 1), _opt(inputs, 2)
    nd = _spatial_rank(ctx, x)
    strides = _ints_attr(ctx, "strides", nd, 1)
    dilations = _ints_attr(ctx, "dilations", nd, 1)
    out_pad = _ints_attr(ctx, "output_padding", nd, 0)
    group = int(ctx.attr("group", 1))
    begins, ends = _transpose_pads(ctx, x.shape[2:], w.shape[2:], strides, dilations, out_pad)
    fn = _CONV_T[nd]
    torch_ok = all(p < max(s, d) for p, s, d in zip(out_pad, strides, dilations, strict=True))
    if begins == ends and torch_ok and min(begins) >= 0:
        return fn(x, w, b, strides, begins, out_pad, group, dilations)
    # Full transposed convolution, then crop (negative F.pad) or extend with zeros to ONNX's size.
    y = fn(x, w, None, strides, 0, 0, group, dilations)
    y = F.pad(
        y, _pad_arg([-p for p in begins], [o - e for o, e in zip(out_pad, ends, strict=True)])
    )
    return y if b is None else y + b.reshape(-1, *([1] * nd))


def _transpose_pads(
    ctx: NodeContext,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_pad: Sequence[int],
) -> tuple[list[int], list[int]]:
    nd = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    explicit = [int(v) for v in ctx.attr("output_shape") or []][-nd:]
    target = explicit
    if not target and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [size * stride for size, stride in zip(spatial, strides, strict=True)]
    if not target:
        if auto_pad == "VALID":
            return [0] * nd, [0] * nd
        pads = _ints_attr(ctx, "pads", 2 * nd, 0)
        return pads[:nd], pads[nd:]
    begins, ends = [], []
    for i in range(nd):
        full = strides[i] * (spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
        total = full - target[i]
        if not explicit:
            total = max(0, total)  # ORT never pads negatively for SAME (1-wide kernels)
        begin, end = _split(total, auto_pad == "SAME_UPPER")
        begins.append(begin)
        ends.append(end)
    return begins, ends


# --- matrix products ---------------------------------------------------------------------------


@register("MatMul")
def matmul(ctx: NodeContext, inputs: Inputs) -> Tensor:
    return torch.matmul(_req(inputs, 0), _req(inputs, 1))


@register("Gemm")
def gemm(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b, c = _req(inputs, 0), _req(inputs, 1), _opt(inputs, 2)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if ctx.attr("transA", 0):
        a = a.t()
    if c is None or beta == 0.0:
        y = torch.matmul(a, b.t() if ctx.attr("transB", 0) else b)
        return y if alpha == 1.0 else y * alpha
    if (
        ctx.attr("transB", 0)
        and alpha == 1.0
        and beta == 1.0
        and c.dim() <= 1
        and c.dtype.is_floating_point
    ):
        # F.linear reads B in its stored layout; a 0-D/1-D C is a bias row.
        return F.linear(a, b, c.expand(b.shape[0]))
    b = b.t() if ctx.attr("transB", 0) else b
    if c.dtype.is_floating_point:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    return torch.matmul(a, b) * int(alpha) + c * int(beta)


# --- normalization -----------------------------------------------------------------------------


@register("BatchNormalization")
def batch_norm(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    scale, bias, mean, var = (_req(inputs, i) for i in range(1, 5))
    training = ctx.attr("training_mode", 0) if ctx.opset >= 14 else not ctx.attr("is_test", 0)
    if (ctx.opset >= 14 and training) or ctx.num_outputs > 1:
        raise ctx.reject("training-mode BatchNormalization (only inference is emulated)")
    eps = float(ctx.attr("epsilon", 1e-5))
    if scale.dim() == 1 and x.dim() >= 2:
        return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)
    # spatial=0 (opset < 9): per-element statistics of shape x.shape[1:].
    return (x - mean) / torch.sqrt(var + eps) * scale + bias


@register("InstanceNormalization")
def instance_norm(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x, scale, bias = (_req(inputs, i) for i in range(3))
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(ctx.attr("epsilon", 1e-5)))


@register("LRN")
def lrn(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    size = int(ctx.attr("size"))
    alpha, beta = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75))
    bias = float(ctx.attr("bias", 1.0))
    # ONNX's window is [c - floor((size-1)/2), c + ceil((size-1)/2)]; torch's
    # local_response_norm centres even windows the other way, so sum squares ourselves.
    n, c = x.shape[:2]
    sq = (x * x).reshape(n, 1, c, -1)
    sq = F.pad(sq, [0, 0, (size - 1) // 2, size // 2])
    mean = F.avg_pool2d(sq, (size, 1), stride=1).reshape(x.shape)
    return x / (bias + alpha * mean) ** beta


# --- pooling -----------------------------------------------------------------------------------


def _pool_geometry(
    ctx: NodeContext, x: Tensor, nd: int
) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, pad begins, pad ends, output sizes) as ONNX Runtime sizes."""
    kernel = [int(k) for k in ctx.attr("kernel_shape")]
    strides = _ints_attr(ctx, "strides", nd, 1)
    dilations = _ints_attr(ctx, "dilations", nd, 1)
    spatial = list(x.shape[2:])
    # ORT (and the ONNX reference) size SAME padding by the undilated kernel.
    begins, ends = _window_pads(ctx, spatial, kernel, strides)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    outs = []
    for i in range(nd):
        extent = (kernel[i] - 1) * dilations[i] + 1
        span = spatial[i] + begins[i] + ends[i] - extent
        out = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (out - 1) * strides[i] >= spatial[i] + begins[i]:
            out -= 1  # the last window must start inside the input or its left padding
        outs.append(out)
    return kernel, strides, dilations, begins, ends, outs


def _torch_pool_size(size: int, extent: int, stride: int, pad: int, ceil_mode: bool) -> int:
    span = size + 2 * pad - extent
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_fits(
    x: Tensor,
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    begins: Sequence[int],
    ends: Sequence[int],
    outs: Sequence[int],
    ceil_mode: bool,
) -> bool:
    """Whether torch's pooling with symmetric `begins` gives exactly ONNX's windows."""
    if list(begins) != list(ends):
        return False
    for i, size in enumerate(x.shape[2:]):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if begins[i] > kernel[i] // 2:  # torch bounds pads by the undilated kernel
            return False
        if _torch_pool_size(size, extent, strides[i], begins[i], ceil_mode) != outs[i]:
            return False
    return True


def _tail_pads(
    x: Tensor,
    extents: Sequence[int],
    strides: Sequence[int],
    begins: Sequence[int],
    outs: Sequence[int],
) -> list[int]:
    """End padding (negative: crop) making the last window end exactly at the padded edge."""
    return [
        (o - 1) * s + e - size - b
        for o, s, e, size, b in zip(outs, strides, extents, x.shape[2:], begins, strict=True)
    ]


@register("MaxPool")
def max_pool(ctx: NodeContext, inputs: Inputs) -> Tensor | tuple[Tensor, Tensor]:
    x = _fast_layout(_req(inputs, 0))
    nd = _spatial_rank(ctx, x)
    kernel, strides, dilations, begins, ends, outs = _pool_geometry(ctx, x, nd)
    want_indices = ctx.num_outputs > 1
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    dtype = x.dtype
    work = x if dtype.is_floating_point or (dtype == torch.uint8 and nd == 2) else x.double()
    if _torch_fits(x, kernel, strides, dilations, begins, ends, outs, ceil_mode):
        pad, padded = list(begins), work
    else:
        extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
        tails = _tail_pads(x, extents, strides, begins, outs)
        lowest = -math.inf if work.dtype.is_floating_point else torch.iinfo(work.dtype).min
        padded = F.pad(work, _pad_arg(begins, tails), value=lowest)
        pad, ceil_mode = [0] * nd, False
    result = _MAX_POOL[nd](
        padded, kernel, strides, pad, dilations, ceil_mode=ceil_mode, return_indices=want_indices
    )
    if not want_indices:
        return result.to(dtype)
    values, indices = result
    if padded is not work:
        indices = _unpad_indices(indices, padded.shape[2:], begins, x.shape[2:])
    return values.to(dtype), _onnx_indices(ctx, indices, x.shape)


def _unpad_indices(
    indices: Tensor, padded: Sequence[int], begins: Sequence[int], spatial: Sequence[int]
) -> Tensor:
    """Flat indices into the padded plane -> flat indices into the unpadded plane."""
    flat = torch.zeros_like(indices)
    rest = indices
    for i, size in enumerate(spatial):
        step = int(np.prod(padded[i + 1 :], dtype=np.int64))
        coord = torch.div(rest, step, rounding_mode="floor")
        rest = rest - coord * step
        flat = flat * size + (coord - begins[i])
    return flat


def _onnx_indices(ctx: NodeContext, flat: Tensor, shape: Sequence[int]) -> Tensor:
    """torch's per-plane row-major indices -> ONNX's indices into the whole input tensor."""
    spatial = list(shape[2:])
    plane = int(np.prod(spatial, dtype=np.int64))
    if ctx.attr("storage_order", 0):
        # Column-major within the plane: the first spatial coordinate varies fastest.
        coords = []
        rest = flat
        for i in range(len(spatial)):
            step = int(np.prod(spatial[i + 1 :], dtype=np.int64))
            coord = torch.div(rest, step, rounding_mode="floor")
            rest = rest - coord * step
            coords.append(coord)
        flat = torch.zeros_like(flat)
        for i in reversed(range(len(spatial))):
            flat = flat * spatial[i] + coords[i]
    planes = torch.arange(shape[0] * shape[1], device=flat.device).reshape(shape[0], shape[1])
    return flat + (planes * plane).reshape(shape[0], shape[1], *([1] * len(spatial)))


def _window_sum(
    x: Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> Tensor:
    """Sum of each (dilated) window of an already padded tensor, as a ones-kernel convolution."""
    nd = x.dim() - 2
    n, c = x.shape[:2]
    ones = torch.ones(1, 1, *kernel, dtype=x.dtype, device=x.device)
    y = _CONV[nd](x.reshape(n * c, 1, *x.shape[2:]), ones, None, strides, 0, dilations)
    return y.reshape(n, c, *y.shape[2:])


def _explicit_pool(ctx: NodeContext, x: Tensor, values: Tensor, include_pad: bool) -> Tensor:
    """(window sums of `values`, element counts) of x's windows, with explicit padding."""
    nd = x.dim() - 2
    kernel, strides, dilations, begins, ends, outs = _pool_geometry(ctx, x, nd)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    tails = _tail_pads(x, extents, strides, begins, outs)
    sums = _window_sum(F.pad(values, _pad_arg(begins, tails)), kernel, strides, dilations)
    ones = torch.ones(1, 1, *x.shape[2:], dtype=values.dtype, device=x.device)
    if include_pad:
        # Declared pads count; the extra tail that ceil_mode adds does not.
        ones = F.pad(ones, _pad_arg(begins, ends), value=1.0)
        mask = F.pad(ones, _pad_arg([0] * nd, [t - e for t, e in zip(tails, ends, strict=True)]))
    else:
        mask = F.pad(ones, _pad_arg(begins, tails))
    counts = _window_sum(mask, kernel, strides, dilations)
    return sums / counts


@register("AveragePool")
def average_pool(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _fast_layout(_req(inputs, 0))
    nd = _spatial_rank(ctx, x)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    kernel, strides, dilations, begins, ends, outs = _pool_geometry(ctx, x, nd)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    fits = _torch_fits(x, kernel, strides, dilations, begins, ends, outs, ceil_mode)
    if fits and all(d == 1 for d in dilations):
        return _AVG_POOL[nd](x, kernel, strides, begins, ceil_mode, include_pad)
    return _explicit_pool(ctx, x, x, include_pad)


@register("LpPool")
def lp_pool(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    nd = _spatial_rank(ctx, x)
    p = float(ctx.attr("p", 2))
    powered = x.abs() ** p
    # Padding contributes zeros to the p-th power sums, so a plain window sum is exact.
    kernel, strides, dilations, begins, _, outs = _pool_geometry(ctx, x, nd)
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    tails = _tail_pads(x, extents, strides, begins, outs)
    sums = _window_sum(F.pad(powered, _pad_arg(begins, tails)), kernel, strides, dilations)
    return sums ** (1.0 / p)


@register("GlobalAveragePool")
def global_average_pool(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def global_max_pool(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# --- resize ------------------------------------------------------------------------------------


# Per axis: source indices [out, taps], blend weights (None for nearest), extrapolation mask.
_Taps = tuple[Tensor, "Tensor | None", "Tensor | None"]


@functools.lru_cache(maxsize=512)
def _axis_taps(
    size: int,
    out: int,
    scale: float,
    mode: str,
    transform: str,
    nearest_mode: str,
    cubic_a: float,
    antialias: bool,
    exclude_outside: bool,
    roi: tuple[float, float],
) -> _Taps:
    """Source indices [out, taps], weights [out, taps] (None: nearest) and the extrapolation mask.

    Computed once per geometry in float64 (as the ONNX reference does) and cached on the CPU.
    """
    x = _source_coords(size, out, scale, transform, roi)
    outside = (x < 0) | (x > size - 1) if transform == "tf_crop_and_resize" else None
    mask = None if outside is None or not outside.any() else torch.from_numpy(outside)
    if mode == "nearest":
        idx = _nearest_index(x, scale, nearest_mode)
        return torch.from_numpy(np.clip(idx, 0, size - 1)[:, None]), None, mask
    base = np.floor(x)
    frac = x - base
    # An exact source pixel is treated as ratio 1 from its left neighbour, as ONNX does.
    base = np.where(frac == 0, base - 1, base).astype(np.int64)
    frac = np.where(frac == 0, 1.0, frac)
    shrink = min(scale, 1.0) if antialias else 1.0
    support = 1.0 if mode == "linear" else 2.0
    start = math.floor(-support / shrink) + 1
    taps = np.arange(start, 2 - start)
    dist = np.abs((taps[None, :] - frac[:, None]) * shrink)
    weights = _linear_filter(dist) if mode == "linear" else _cubic_filter(dist, cubic_a)
    idx = base[:, None] + taps[None, :]
    if exclude_outside:
        weights = np.where((idx < 0) | (idx >= size), 0.0, weights)
    if antialias or exclude_outside:
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    idx = np.clip(idx, 0, size - 1)
    return torch.from_numpy(idx), torch.from_numpy(weights), mask


def _linear_filter(dist: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - dist, 0.0, 1.0)


def _cubic_filter(dist: np.ndarray, a: float) -> np.ndarray:
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
    return np.where(dist <= 1, near, np.where(dist < 2, far, 0.0))


def _source_coords(
    size: int, out: int, scale: float, transform: str, roi: tuple[float, float]
) -> np.ndarray:
    """Input coordinate of each output pixel along one axis.

    Evaluated in float32 with ONNX Runtime's operation order: nearest-neighbour picks at exact
    boundaries (e.g. 3 / 0.6f) depend on that rounding.
    """
    f = np.float32
    y = np.arange(out, dtype=f)
    s, half, length = f(scale), f(0.5), f(size)
    if transform == "asymmetric":
        x = y / s
    elif transform == "align_corners":
        x = np.zeros(out, f) if out == 1 else y * f(size - 1) / f(out - 1)
    elif transform == "pytorch_half_pixel":
        x = np.zeros(out, f) if out == 1 else (y + half) / s - half
    elif transform == "half_pixel":
        x = (y + half) / s - half
    elif transform == "half_pixel_symmetric":
        offset = length / f(2) * (f(1) - f(out) / (s * length))
        x = offset + (y + half) / s - half
    elif transform == "tf_half_pixel_for_nn":
        x = (y + half) / s
    elif transform == "tf_crop_and_resize":
        lo, hi = f(roi[0]), f(roi[1])
        if out == 1:
            x = np.full(out, half * (lo + hi) * f(size - 1), f)
        else:
            x = lo * f(size - 1) + (y * (hi - lo) * f(size - 1)) / f(out - 1)
    else:
        raise ValueError(f"coordinate_transformation_mode={transform!r}")
    return x.astype(np.float64)


def _nearest_index(x: np.ndarray, scale: float, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        idx = np.where(x - np.floor(x) <= 0.5, np.floor(x), np.ceil(x))
    elif nearest_mode == "round_prefer_ceil":
        idx = np.where(x - np.floor(x) < 0.5, np.floor(x), np.ceil(x))
    elif nearest_mode == "floor":
        idx = np.floor(x)
    elif nearest_mode == "ceil":
        idx = np.ceil(x)
    else:  # "simple": ORT's opset-10 rule, ceil when shrinking and truncation otherwise
        idx = np.ceil(x) if scale < 1 else np.trunc(x)
    return idx.astype(np.int64)


def _resample_axis(
    x: Tensor,
    axis: int,
    taps: _Taps,
    extrapolation: float,
) -> Tensor:
    """Gather the taps of every output position along `axis` and blend them."""
    idx, weights, mask = taps
    out, n = idx.shape
    idx = idx.to(x.device)
    trailing = [1] * (x.dim() - axis - 1)
    if weights is None:
        y = x.index_select(axis, idx[:, 0])
    else:
        # One gather per tap, accumulated: cheaper than gathering all taps into one big tensor.
        work = x if x.is_floating_point() else x.double()
        w = weights.to(device=x.device, dtype=work.dtype).reshape(out, n, *trailing)
        y = work.index_select(axis, idx[:, 0]) * w[:, 0]
        for tap in range(1, n):
            y = y + work.index_select(axis, idx[:, tap]) * w[:, tap]
        if not x.is_floating_point():
            y = y.round().to(x.dtype)
    if mask is not None:
        fill = torch.tensor(extrapolation, dtype=y.dtype, device=y.device)
        y = torch.where(mask.to(y.device).reshape(out, *trailing), fill, y)
    return y


_TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "tf_crop_and_resize",
)


def _resize(
    ctx: NodeContext,
    x: Tensor,
    scales: list[float] | None,
    sizes: list[int] | None,
    roi: list[float] | None,
    transform: str,
    nearest_mode: str,
) -> Tensor:
    mode = str(ctx.attr("mode", "nearest"))
    mode = "linear" if mode == "bilinear" else mode  # Upsample-7 spelling
    if mode not in ("nearest", "linear", "cubic"):
        raise ctx.reject(f"mode={mode!r}")
    if transform not in _TRANSFORMS:
        raise ctx.reject(f"coordinate_transformation_mode={transform!r}")
    rank = x.dim()
    axes = [normal_axis(int(a), rank) for a in ctx.attr("axes") or range(rank)]
    factors, out_sizes = _output_geometry(ctx, list(x.shape), axes, scales, sizes)
    full_roi = [(0.0, 1.0)] * rank
    if roi and transform == "tf_crop_and_resize":
        k = len(roi) // 2
        for i, a in enumerate(axes if k == len(axes) else range(rank)):
            full_roi[a] = (roi[i], roi[k + i])
    antialias = bool(ctx.attr("antialias", 0)) and mode != "nearest"
    settings = (
        mode,
        transform,
        nearest_mode,
        float(ctx.attr("cubic_coeff_a", -0.75)),
        antialias,
        bool(ctx.attr("exclude_outside", 0)),
    )
    plans = {
        a: _axis_taps(x.shape[a], out_sizes[a], factors[a], *settings, full_roi[a])
        for a in range(rank)
        # ORT leaves unscaled axes alone, even under a tf_crop_and_resize roi.
        if not (out_sizes[a] == x.shape[a] and factors[a] == 1.0)
    }
    if not plans:
        return x
    fast = _interpolate_fast(x, mode, transform, factors, out_sizes, antialias, plans)
    if fast is not None:
        return fast
    extrapolation = float(ctx.attr("extrapolation_value", 0.0))
    for a, taps in plans.items():
        x = _resample_axis(x, a, taps, extrapolation)
    return x


def _output_geometry(
    ctx: NodeContext,
    shape: list[int],
    axes: list[int],
    scales: list[float] | None,
    sizes: list[int] | None,
) -> tuple[list[float], list[int]]:
    """(scale, output size) of every axis, from `scales` or `sizes` and the aspect policy."""
    factors = [1.0] * len(shape)
    out_sizes = list(shape)
    if scales:
        for a, factor in zip(axes, scales, strict=True):
            factors[a] = factor
            out_sizes[a] = math.floor(factor * shape[a])
        return factors, out_sizes
    if not sizes:
        raise ctx.reject("neither scales nor sizes given")
    policy = str(ctx.attr("keep_aspect_ratio_policy", "stretch"))
    ratios = [size / shape[a] for a, size in zip(axes, sizes, strict=True)]
    if policy == "stretch":
        for a, size, ratio in zip(axes, sizes, ratios, strict=True):
            factors[a], out_sizes[a] = ratio, size
        return factors, out_sizes
    common = min(ratios) if policy == "not_larger" else max(ratios)
    for a in axes:
        factors[a], out_sizes[a] = common, int(common * shape[a] + 0.5)
    return factors, out_sizes


def _interpolate_fast(
    x: Tensor,
    mode: str,
    transform: str,
    scales: Sequence[float],
    sizes: Sequence[int],
    antialias: bool,
    plans: dict[int, _Taps],
) -> Tensor | None:
    """F.interpolate where it computes exactly ONNX's result; None otherwise."""
    rank = x.dim()
    if rank not in (3, 4, 5) or antialias or min(plans) < 2:
        return None
    spatial_out = list(sizes[2:])
    if mode == "nearest":
        # torch's nearest kernels, where their source pixels are exactly ours on every axis.
        if any(mask is not None for _, _, mask in plans.values()):
            return None
        found = {_torch_nearest_mode(x.shape[a], sizes[a], idx) for a, (idx, _, _) in plans.items()}
        torch_mode = found.pop() if len(found) == 1 else None
        return None if torch_mode is None else F.interpolate(x, spatial_out, mode=torch_mode)
    factors = [float(v) for v in scales[2:]]
    same_size = [
        math.floor(n * f) for n, f in zip(x.shape[2:], factors, strict=True)
    ] == spatial_out
    half_pixel = transform == "half_pixel" or (
        transform == "pytorch_half_pixel" and min(spatial_out) > 1
    )
    if mode == "linear" and x.is_floating_point() and half_pixel and same_size:
        # torch's (bi/tri)linear with an explicit scale_factor is ONNX half_pixel to within
        # float rounding of the source coordinate.
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[rank]
        return F.interpolate(x, scale_factor=factors, mode=torch_mode, recompute_scale_factor=False)
    return None


@functools.lru_cache(maxsize=512)
def _torch_nearest_picks(size: int, out: int, mode: str) -> Tensor:
    probe = torch.arange(size, dtype=torch.float64).reshape(1, 1, size)
    return F.interpolate(probe, size=out, mode=mode).reshape(-1).to(torch.int64)


def _torch_nearest_mode(size: int, out: int, idx: Tensor) -> str | None:
    """The F.interpolate mode whose source pixels along an axis are exactly `idx`, if any."""
    for mode in ("nearest", "nearest-exact"):
        if torch.equal(_torch_nearest_picks(size, out, mode), idx.reshape(-1)):
            return mode
    return None


def _floats(t: Tensor | None) -> list[float] | None:
    if t is None or t.numel() == 0:
        return None
    return [float(v) for v in t.reshape(-1).tolist()]


def _sizes(t: Tensor | None) -> list[int] | None:
    if t is None or t.numel() == 0:
        return None
    return [int(v) for v in t.reshape(-1).tolist()]


@register("Resize", since=11)
def resize(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    roi, scales, sizes = _floats(_opt(inputs, 1)), _floats(_opt(inputs, 2)), _sizes(_opt(inputs, 3))
    transform = str(ctx.attr("coordinate_transformation_mode", "half_pixel"))
    nearest_mode = str(ctx.attr("nearest_mode", "round_prefer_floor"))
    return _resize(ctx, x, scales, sizes, roi, transform, nearest_mode)


@register("Resize", since=10, until=10)
def resize_10(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    return _resize(ctx, x, _floats(_opt(inputs, 1)), None, None, "asymmetric", "simple")


@register("Upsample", since=7, until=9)
def upsample(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = _req(inputs, 0)
    scales = _floats(_opt(inputs, 1)) if ctx.opset >= 9 else [float(s) for s in ctx.attr("scales")]
    return _resize(ctx, x, scales, None, None, "asymmetric", "simple")
