"""Neural-network kernels: convolution, matrix products, pooling, normalization, resize."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantlens.emulate.registry import NodeContext, register

Tensor = torch.Tensor
Inputs = Sequence["Tensor | None"]
