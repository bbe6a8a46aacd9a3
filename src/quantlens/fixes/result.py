"""What every fix returns, and how its result is applied.

A fix never mutates the graph or the executor it is given: it returns new float weights (and a
new plan when it changed quantization parameters). The pipeline applies the result to the
executor (so later fixes see it) and to the onnx_ir model (so the exported QDQ model and the
float model in the run folder carry the same weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch

from quantlens.emulate.executor import Executor
from quantlens.errors import InvariantError
from quantlens.schemes.qparams import QuantPlan


@dataclass
class FixResult:
    """New float weights (initializer name -> value) and, if qparams changed, a new plan."""

    name: str
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    plan: QuantPlan | None = None
    changes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Output SNR (dB) on the guard's samples before and after the fix, and whether it was kept.
    snr_before_db: float | None = None
    snr_after_db: float | None = None
    kept: bool = True
    # Weighted layer output -> (SNR before, SNR after) in dB against the float model.
    layer_snr_db: dict[str, tuple[float, float]] = field(default_factory=dict)

    def layers_changed(self) -> tuple[int, int]:
        """How many layers' output SNR rose and fell by more than 0.1 dB."""
        deltas = [after - before for before, after in self.layer_snr_db.values()]
        return sum(d > 0.1 for d in deltas), sum(d < -0.1 for d in deltas)

    def summary(self) -> str:
        if not self.changes:
            return f"{self.name}: nothing to do ({self.seconds:.1f} s)"
        shown = "; ".join(self.changes[:3])
        more = f" (+{len(self.changes) - 3} more)" if len(self.changes) > 3 else ""
        return f"{self.name}: {shown}{more} ({self.seconds:.1f} s)"

    def as_record(self) -> dict[str, object]:
        """JSON-ready account for quantize.json."""
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "weights_changed": sorted(self.weights),
            "plan_changed": self.plan is not None,
            "changes": list(self.changes),
            "output_snr_db": {
                "before": _finite(self.snr_before_db),
                "after": _finite(self.snr_after_db),
            },
            "kept": self.kept,
            "layers_better_worse": list(self.layers_changed()),
            "layer_snr_db": {
                name: [_finite(before), _finite(after)]
                for name, (before, after) in self.layer_snr_db.items()
            },
        }


def _finite(value: float | None) -> float | str | None:
    """JSON has no infinity: a noise-free output is written as "inf"."""
    if value is None:
        return None
    return round(value, 2) if np.isfinite(value) else str(value)


def apply_to_executor(executor: Executor, result: FixResult | Mapping[str, np.ndarray]) -> None:
    """Replace the executor's weights in place (same device and dtype as before)."""
    weights = result.weights if isinstance(result, FixResult) else result
    for name, value in weights.items():
        old = executor.weights.get(name)
        if old is None:
            # A new initializer (e.g. a bias added where a layer had none) must also be wired
            # into the graph, which only the model side can do; refuse to half-apply it.
            raise InvariantError(f"fix writes weight {name!r}, which the executor does not hold")
        executor.weights[name] = torch.as_tensor(np.asarray(value), dtype=old.dtype).to(old.device)


def apply_to_model(model: ir.Model, result: FixResult | Mapping[str, np.ndarray]) -> None:
    """Replace initializer values in the onnx_ir model, keeping each one's dtype."""
    weights = result.weights if isinstance(result, FixResult) else result
    initializers = model.graph.initializers
    for name, value in weights.items():
        init = initializers.get(name)
        if init is None or init.const_value is None:
            raise InvariantError(f"fix writes weight {name!r}, which the model does not hold")
        dtype = init.const_value.numpy().dtype
        init.const_value = ir.tensor(np.asarray(value).astype(dtype), name=name)


def apply_fix(executor: Executor, result: FixResult) -> QuantPlan | None:
    """Apply a fix to the executor and its model; returns the fix's new plan, if any."""
    apply_to_executor(executor, result)
    apply_to_model(executor.model, result)
    return result.plan
