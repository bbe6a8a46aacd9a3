"""Kernel registry: torch implementations of ONNX ops, keyed by domain, op type and opset range.

A kernel is a plain function `fn(ctx, inputs) -> Tensor | Sequence[Tensor]`. `inputs` holds one
entry per node input, `None` for an omitted optional input. Kernels must be differentiable where
the op is (no `.numpy()` round trips on float data) and must not move data off `inputs`' device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from quantlens.errors import UserError

Tensor = torch.Tensor
KernelFn = Callable[["NodeContext", Sequence["Tensor | None"]], "Tensor | Sequence[Tensor]"]


@dataclass(frozen=True)
class NodeContext:
    """What a kernel may know about its node besides the input tensors."""

    name: str
    op_type: str
    opset: int
    attrs: dict[str, Any] = field(default_factory=dict)
    num_outputs: int = 1
    # Which outputs the graph uses; an optional output omitted with an empty name is False.
    outputs_present: tuple[bool, ...] = (True,)
    device: str = "cpu"

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def reject(self, why: str) -> UserError:
        """An error for a node whose attributes or inputs the kernel cannot honour."""
        return UserError(
            f"node {self.name!r} ({self.op_type}, opset {self.opset}) is not supported: {why}",
            "run `quantlens inspect` on the model and open an issue with it",
        )


@dataclass(frozen=True)
class KernelSpec:
    domain: str
    op_type: str
    since: int
    until: int | None
    fn: KernelFn

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


_REGISTRY: dict[tuple[str, str], list[KernelSpec]] = {}


def register(
    *op_types: str, since: int = 1, until: int | None = None, domain: str = ""
) -> Callable[[KernelFn], KernelFn]:
    """Register `fn` for `op_types` from opset `since` up to `until` (inclusive)."""

    def decorate(fn: KernelFn) -> KernelFn:
        for op_type in op_types:
            specs = _REGISTRY.setdefault((domain, op_type), [])
            specs.append(KernelSpec(domain, op_type, since, until, fn))
            specs.sort(key=lambda spec: -spec.since)
        return fn

    return decorate


def find_kernel(op_type: str, opset: int, domain: str = "") -> KernelSpec | None:
    _load_builtin_kernels()
    for spec in _REGISTRY.get((_normal_domain(domain), op_type), []):
        if spec.covers(opset):
            return spec
    return None


def supported_ops(domain: str = "") -> dict[str, list[tuple[int, int | None]]]:
    """Op type -> the opset ranges it has kernels for (for docs and the node-test suite)."""
    _load_builtin_kernels()
    return {
        op_type: sorted((s.since, s.until) for s in specs)
        for (dom, op_type), specs in sorted(_REGISTRY.items())
        if dom == _normal_domain(domain)
    }


def _normal_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


_loaded = False


def _load_builtin_kernels() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import quantlens.emulate.kernels  # noqa: F401  (registers by import)


# --- helpers shared by kernels -----------------------------------------------------------------


def torch_dtype(onnx_type: int) -> torch.dtype:
    """torch dtype of an ONNX TensorProto data type (raises for types torch lacks)."""
    dtype = ir.DataType(onnx_type)
    if dtype == ir.DataType.BFLOAT16:
        return torch.bfloat16
    try:
        return torch.from_numpy(np.empty(0, dtype=dtype.numpy())).dtype
    except (TypeError, ValueError) as exc:
        raise UserError(f"ONNX data type {dtype.name} has no torch equivalent") from exc


def tensor_from_numpy(array: np.ndarray, device: torch.device | str | None = None) -> Tensor:
    """A torch tensor from numpy data (feeds, initializers, attributes), owning its memory.

    bfloat16 (ml_dtypes) is reinterpreted bit for bit; uint16/32/64 are widened to int64 because
    torch's wide unsigned types lack most kernels (uint64 values >= 2**63 and wrap-around
    arithmetic are therefore not emulated; no CNN/OCR graph relies on them).
    """
    # np.array (not ascontiguousarray, which turns 0-d into 1-d): a C-ordered, writeable copy.
    array = np.array(array, order="C")
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).to(device)
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(array).to(device)


def ints(tensor: Tensor | None) -> list[int]:
    """A small integer tensor (shape, axes, pads) as a Python list."""
    if tensor is None:
        return []
    return [int(v) for v in tensor.reshape(-1).tolist()]


def normal_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
