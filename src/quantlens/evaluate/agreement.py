"""The `distance` task: how far candidate outputs are from reference outputs, no ground truth.

Per output: SNR in dB and cosine pooled over all samples (sums of signal, noise and products,
so large samples weigh more), the worst sample's SNR, top-1 agreement along the class axis, and
KL(reference || candidate) when the reference is a probability distribution along that axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from quantlens.errors import InvariantError, UserError
from quantlens.evaluate.base import EvalContext, Outputs, Sample, as_numpy, register_evaluator
from quantlens.evaluate.distance import snr_db

_PROBABILITY_TOLERANCE = 1e-3
_KL_EPS = 1e-12


@dataclass
class _Sums:
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    candidate: float = 0.0
    agree: int = 0
    positions: int = 0
    kl: float = 0.0
    kl_valid: bool = True
    max_abs: float = 0.0
    ref_abs: float = 0.0
    nonfinite: int = 0
    elements: int = 0


class DistanceEvaluator:
    name = "distance"
    primary = "snr_db"

    def __init__(
        self, class_axis: int = -1, class_start: int = 0, min_score: float | None = None
    ) -> None:
        self.class_axis = class_axis
        self.class_start = class_start
        # Top-1 agreement only where the reference's best score reaches this: a detector's
        # background anchors have near-equal tiny scores whose argmax is noise.
        self.min_score = min_score
        self.sums: dict[str, _Sums] = {}
        self.per_sample: dict[str, float] = {}

    def update(self, outputs: Outputs, sample: Sample) -> None:
        if sample.reference is None:
            raise InvariantError("the distance task needs the reference outputs of each sample")
        worst = math.inf
        for name, value in outputs.items():
            reference = sample.reference.get(name)
            if reference is None:
                continue
            ref = torch.as_tensor(reference, dtype=torch.float64)
            cand = torch.as_tensor(as_numpy(value), dtype=torch.float64)
            if ref.shape != cand.shape:
                raise UserError(
                    f"output {name!r} has shape {list(cand.shape)}, the reference "
                    f"{list(ref.shape)}",
                    "compare outputs of the same model and input",
                )
            bad = int((~torch.isfinite(cand)).sum())
            if bad:
                # NaN/Inf in the candidate is total loss: count it, read those values as 0.
                cand = torch.nan_to_num(cand, nan=0.0, posinf=0.0, neginf=0.0)
            self._accumulate(self.sums.setdefault(name, _Sums()), ref, cand, bad)
            worst = min(worst, -math.inf if bad else snr_db(ref, cand))
        self.per_sample[sample.name] = worst

    def _accumulate(self, sums: _Sums, ref: torch.Tensor, cand: torch.Tensor, bad: int) -> None:
        diff = cand - ref
        sums.elements += ref.numel()
        sums.nonfinite += bad
        sums.signal += float(ref.pow(2).sum())
        sums.noise += math.inf if bad else float(diff.pow(2).sum())
        sums.dot += float((ref * cand).sum())
        sums.candidate += float(cand.pow(2).sum())
        sums.max_abs = max(sums.max_abs, float(diff.abs().max()) if diff.numel() else 0.0)
        sums.ref_abs = max(sums.ref_abs, float(ref.abs().max()) if ref.numel() else 0.0)
        if ref.dim() == 0:
            sums.kl_valid = False
            return
        ref_cls, cand_cls = self._classes(ref), self._classes(cand)
        same = ref_cls.argmax(-1) == cand_cls.argmax(-1)
        if self.min_score is not None:
            same = same[ref_cls.amax(-1) >= self.min_score]
        sums.agree += int(same.sum())
        sums.positions += same.numel()
        if sums.kl_valid and _is_distribution(ref_cls):
            p = ref_cls.clamp(min=_KL_EPS)
            q = cand_cls.clamp(min=_KL_EPS)
            p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
            sums.kl += float((p * (p.log() - q.log())).sum())
        else:
            sums.kl_valid = False

    def _classes(self, tensor: torch.Tensor) -> torch.Tensor:
        """The class scores with classes on the last axis."""
        moved = tensor.movedim(self.class_axis, -1)
        return moved[..., self.class_start :]

    def result(self) -> dict[str, float]:
        many = len(self.sums) > 1
        metrics: dict[str, float] = {}
        for name, sums in self.sums.items():
            prefix = f"{name}:" if many else ""
            for key, value in _metrics(sums, self.per_sample).items():
                metrics[prefix + key] = value
        if many:
            metrics["snr_db"] = min(v for k, v in metrics.items() if k.endswith(":snr_db"))
        return metrics

    def sample_scores(self) -> dict[str, float]:
        return dict(self.per_sample)


def _metrics(sums: _Sums, per_sample: dict[str, float]) -> dict[str, float]:
    norms = math.sqrt(sums.signal * sums.candidate)
    metrics = {
        "snr_db": _pooled_snr(sums.signal, sums.noise),
        "min_sample_snr_db": min(per_sample.values(), default=math.inf),
        "cosine": sums.dot / norms if norms > 0 else float(sums.noise == 0.0),
        "relative_error": sums.max_abs / sums.ref_abs if sums.ref_abs > 0 else 0.0,
    }
    if sums.nonfinite:
        metrics["nonfinite_fraction"] = sums.nonfinite / sums.elements
    if sums.positions:
        metrics["top1_agreement"] = sums.agree / sums.positions
    if sums.kl_valid and sums.positions:
        metrics["kl"] = sums.kl / sums.positions
    return metrics


def _pooled_snr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or math.isinf(noise):
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _is_distribution(scores: torch.Tensor) -> bool:
    if scores.shape[-1] < 2 or bool((scores < 0).any()):
        return False
    return bool(((scores.sum(-1) - 1.0).abs() <= _PROBABILITY_TOLERANCE).all())


@register_evaluator("distance")
def make_distance(context: EvalContext) -> DistanceEvaluator:
    options = context.options
    return DistanceEvaluator(
        class_axis=int(options.get("class_axis", -1)),
        class_start=int(options.get("class_start", 0)),
        min_score=_optional_float(options.get("min_score")),
    )


def _optional_float(value: object) -> float | None:
    return None if value is None else float(str(value))


def as_reference(outputs: Outputs) -> dict[str, np.ndarray]:
    return {name: as_numpy(value) for name, value in outputs.items()}
