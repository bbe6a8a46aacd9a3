"""Elementwise math and activation kernels (numpy-style broadcasting, as ONNX specifies)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantlens.emulate.registry import NodeContext, register

Tensor = torch.Tensor
Inputs = Sequence["Tensor | None"]


def _two(inputs: Inputs) -> tuple[Tensor, Tensor]:
    a, b = inputs[0], inputs[1]
    assert a is not None and b is not None
    return a, b


@register("Add")
def add(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _two(inputs)
    return a + b


@register("Sub")
def sub(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _two(inputs)
    return a - b


@register("Mul")
def mul(ctx: NodeContext, inputs: Inputs) -> Tensor:
    a, b = _two(inputs)
    return a * b


@register("Relu")
def relu(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = inputs[0]
    assert x is not None
    return torch.relu(x)


@register("Sigmoid")
def sigmoid(ctx: NodeContext, inputs: Inputs) -> Tensor:
    x = inputs[0]
    assert x is not None
    return torch.sigmoid(x)
