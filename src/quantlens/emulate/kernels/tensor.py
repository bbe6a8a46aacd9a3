"""Shape and data-movement kernels: reshape, concat, slice, gather, cast, shape arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from quantlens.emulate.registry import NodeContext, register

Tensor = torch.Tensor
Inputs = Sequence["Tensor | None"]
