"""Calibration shared by every stage of a run folder: each tensor is calibrated once per grid.

A calibration is valid for one context: the source model, the graph passes applied to it, the
calibration feeds, the method and its settings. Within a context, `Calibrations` keeps every
observed tensor keyed by (tensor, grid) in memory and on disk, so `quantize`, `analyze`,
`search` (its 8-bit and 16-bit grids) and the search's export reuse each other's work in the
same folder instead of calibrating again. `calibration.json` stays the calibration of the
folder's plan: it is rewritten only when the plan's calibration differs from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from quantlens.artifacts.calibration import CalibrationStats, TensorStats
from quantlens.artifacts.folder import RunFolder
from quantlens.calib import calibrate
from quantlens.emulate import Executor
from quantlens.errors import UserError
from quantlens.scale.options import ScaleOptions
from quantlens.schemes.formats import IntFormat

Progress = Callable[[int, int], None]
Feed = dict[str, np.ndarray]
GridKey = tuple[str, str]  # (tensor, format as JSON)


def calibration_context(
    model: Path,
    feeds: Sequence[Feed],
    method: str,
    percentile: float,
    graph: Mapping[str, bool] | None = None,
) -> str:
    """The key under which calibrations can be reused: what decides every observed value.

    Only enabled graph passes count, so "no passes" has one spelling whichever stage asks.
    """
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model.read_bytes()).digest())
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    settings = {
        "method": method,
        "percentile": percentile,
        "passes": 1,
        "graph": sorted(name for name, on in (graph or {}).items() if on),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _grid(fmt: IntFormat) -> str:
    return json.dumps(fmt.model_dump(mode="json"), sort_keys=True)


class Calibrations:
    """Every calibration made in one context, read from and written to one run folder."""

    def __init__(
        self,
        folder: RunFolder,
        context: str,
        executor: Executor,
        feeds: Sequence[Feed],
        method: str,
        percentile: float,
        scale: ScaleOptions | None = None,
    ) -> None:
        self.folder, self.context = folder, context
        self.scale = scale  # sample shards observed on Ray workers; None: here
        self.executor, self.feeds = executor, feeds
        self.method, self.percentile = method, percentile
        self.passes = 0  # calibration passes over the data this object made (tests read it)
        self._known: dict[GridKey, TensorStats] = {}
        self._template: CalibrationStats | None = None
        self._folder_stats: CalibrationStats | None = None
        self._load()

    @property
    def cache_dir(self) -> Path:
        return self.folder.calibration_cache / self.context[:16]

    def _load(self) -> None:
        if self.folder.read_calibration_key() == self.context:
            self._folder_stats = self.folder.read(CalibrationStats)
            if self._folder_stats is not None:
                self._absorb(self._folder_stats)
        for path in sorted(self.cache_dir.glob("*.json")):
            try:
                self._absorb(CalibrationStats.load(path))
            except UserError:
                continue  # a damaged cache entry is calibrated again, never trusted

    def _absorb(self, stats: CalibrationStats) -> None:
        if self._template is None:
            self._template = stats.model_copy(update={"tensors": {}})
        for name, tensor in stats.tensors.items():
            self._known.setdefault((name, _grid(tensor.format)), tensor)

    def stats_for(
        self, targets: Mapping[str, IntFormat], progress: Progress | None = None
    ) -> tuple[CalibrationStats, bool]:
        """The calibration of `targets`; True when nothing had to be calibrated for it."""
        missing = {n: f for n, f in targets.items() if (n, _grid(f)) not in self._known}
        # Nothing known yet, not even for an empty target set: calibrate as quantize always did.
        if missing or self._template is None:
            stats = self._calibrate(missing, progress)
            self.passes += 1
            self._absorb(stats)
            index = len(list(self.cache_dir.glob("*.json")))
            stats.save(self.cache_dir / f"{index:03d}.json")
            if len(missing) == len(targets):
                return stats, False
        assert self._template is not None
        tensors = {name: self._known[(name, _grid(fmt))] for name, fmt in targets.items()}
        return self._template.model_copy(update={"tensors": tensors}), not missing

    def _calibrate(
        self, targets: Mapping[str, IntFormat], progress: Progress | None
    ) -> CalibrationStats:
        if self.scale is not None:
            from quantlens.scale.calibrate import calibrate_on_workers  # imports Ray

            return calibrate_on_workers(
                self.scale,
                self.executor,
                self.feeds,
                targets,
                self.method,
                percentile=self.percentile,
                progress=progress,
            )
        return calibrate(
            self.executor,
            self.feeds,
            targets,
            self.method,
            percentile=self.percentile,
            progress=progress,
        )

    def ranges_for(
        self, targets: Mapping[str, IntFormat], progress: Progress | None = None
    ) -> dict[str, tuple[float, float]]:
        stats, _ = self.stats_for(targets, progress)
        return {name: (t.clip_min, t.clip_max) for name, t in stats.tensors.items()}

    def adopt(self, other: Calibrations) -> None:
        """Take over `other`'s calibrations when they were made in the same context."""
        if other.context == self.context:
            for key, tensor in other._known.items():
                self._known.setdefault(key, tensor)
            self._template = self._template or other._template

    def commit(self, stats: CalibrationStats) -> Path:
        """Make `stats` the folder's `calibration.json` (the plan's calibration); a file that
        already holds exactly it is left untouched."""
        path = self.folder.file(CalibrationStats)
        if stats != self._folder_stats or not path.is_file():
            self.folder.write(stats)
            self.folder.write_calibration_key(self.context)  # last: it vouches for the file
            self._folder_stats = stats
        return path
