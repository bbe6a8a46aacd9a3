"""Which tensors of a graph stay finite whenever the graph inputs and weights are finite.

Fake quantization maps NaN to the lowest code, as ONNX Runtime's QuantizeLinear does, and that
costs a pass over the tensor; a tensor that cannot hold NaN skips it. A NaN needs an op that
makes one from finite numbers (a division by a computed value, a square root or logarithm of
one, ...) upstream with no integer quantizer in between (a quantizer puts NaN and Inf back on
its grid). This module finds the tensors with no such op since the last of the given quantized
tensors (`cleaned`); with none given, it holds for any plan. Float overflow (finite inputs
summing past 3.4e38) is ignored: Inf is clamped to the grid's end like any large value, and a
NaN from it needs Inf - Inf or 0 * Inf after it; fp16 rounding overflows far sooner, so
`QuantHooks` does not skip the pass at all when its plan has an fp16 tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

# Finite inputs give finite outputs (barring overflow). Normalizations are absent on purpose: an
# epsilon of 0 over a constant row gives 0/0.
FINITE_OPS = frozenset(
    [
        "Abs",
        "Add",
        "AveragePool",
        "BitShift",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "DepthToSpace",
        "Dropout",
        "Elu",
        "Equal",
        "Erf",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mish",
        "Mul",
        "Neg",
        "Not",
        "Pad",
        "PRelu",
        "Range",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "Round",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Size",
        "Slice",
        "Softmax",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
    ]
)


def finite_tensors(
    steps: Iterable[tuple[str, Sequence[str | None], Sequence[str]]],
    weights: Mapping[str, torch.Tensor],
    inputs: Iterable[str],
    cleaned: frozenset[str] = frozenset(),
) -> frozenset[str]:
    """Names of the tensors a kernel computes finite when `inputs` and `weights` are finite and
    the tensors in `cleaned` are made finite after they are computed (an integer quantizer maps
    NaN and Inf onto its grid); `steps` are (op type, input names, output names) in order."""
    return FiniteGraph(steps, weights, inputs).given(cleaned)


class FiniteGraph:
    """What `finite_tensors` needs that does not depend on `cleaned`: which weights are finite
    and which steps keep finite inputs finite. Looking at every weight again for each set cost
    isolated mode ~10% of its time (one set per layer)."""

    def __init__(
        self,
        steps: Iterable[tuple[str, Sequence[str | None], Sequence[str]]],
        weights: Mapping[str, torch.Tensor],
        inputs: Iterable[str],
    ) -> None:
        self._steps = [
            (tuple(a for a in args if a is not None), tuple(outputs), _safe(op_type, args, weights))
            for op_type, args, outputs in steps
        ]
        self._finite = frozenset(inputs) | {n for n, w in weights.items() if _all_finite(w)}

    def given(self, cleaned: frozenset[str]) -> frozenset[str]:
        finite = set(self._finite)
        usable = finite | set(cleaned)
        for present, outputs, safe in self._steps:
            if safe and all(a in usable for a in present):
                finite.update(outputs)
                usable.update(outputs)
            usable.update(name for name in outputs if name in cleaned)
        return frozenset(finite)


def _safe(op_type: str, args: Sequence[str | None], weights: Mapping[str, torch.Tensor]) -> bool:
    if op_type in FINITE_OPS:
        return True
    # A division by a constant with no zero in it (YOLO heads halve box sizes).
    divisor = args[1] if op_type == "Div" and len(args) == 2 else None
    if divisor is not None and divisor in weights:
        return bool((weights[divisor] != 0).all())
    return False


def _all_finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())
