"""The oracle: every evaluation of a candidate goes through one on-disk cache.

Entries are keyed by the hash of the candidate's resolved per-node modes and live in a folder
named by everything else the result depends on (model, data, target, calibration), so a search
killed half-way and started again with `--resume` finds its finished evaluations and redoes
none of them. The time budget and the cap on full task-metric evaluations are enforced here.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantlens.artifacts import write_text_atomic


class BudgetExhausted(Exception):
    """The time budget or the cap on full evaluations is spent."""


def modes_key(modes: Mapping[str, str]) -> str:
    payload = json.dumps(sorted(modes.items()), separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Evaluators:
    # Balanced output SNR (dB) of a candidate: cheap, a few samples through the emulator.
    proxy: Callable[[Mapping[str, str]], float]
    # The task metric over the evaluation set: a full evaluation; None without ground truth.
    metric: Callable[[Mapping[str, str]], float] | None = None
    metric_name: str | None = None
    # Proxy SNRs of many candidates at once, in order (on Ray workers); None: one at a time.
    proxy_many: Callable[[Sequence[Mapping[str, str]]], Iterable[float]] | None = None


class Oracle:
    def __init__(
        self,
        folder: Path,
        evaluators: Evaluators,
        time_budget: float | None = None,
        max_full: int | None = None,
    ) -> None:
        self.folder = folder
        self.evaluators = evaluators
        self.deadline = time.monotonic() + time_budget if time_budget else math.inf
        self.max_full = max_full
        # Keys are "<cache folder>/<modes key>": oracles of one search share this set.
        self.full_done: set[str] = set()
        self.computed = 0  # evaluations actually run (not read back from the cache)
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def has_metric(self) -> bool:
        return self.evaluators.metric is not None

    def snr(self, modes: Mapping[str, str]) -> float:
        return float(self._get(modes, "snr_db", self.evaluators.proxy))

    def metric(self, modes: Mapping[str, str]) -> float | None:
        if self.evaluators.metric is None:
            return None
        key = modes_key(modes)
        cached = self._read(key).get("metric")
        if cached is None and self.max_full is not None and len(self.full_done) >= self.max_full:
            raise BudgetExhausted(f"{self.max_full} full evaluations done")
        value = float(self._get(modes, "metric", self.evaluators.metric))
        self.full_done.add(f"{self.folder.name}/{key}")
        return value

    def sibling(self, folder: Path) -> Oracle:
        """An oracle caching in another folder (the same model in another context, e.g. with
        fixes applied) that shares this one's evaluators, deadline and full evaluations."""
        other = Oracle(folder, self.evaluators, None, self.max_full)
        other.deadline = self.deadline
        other.full_done = self.full_done
        return other

    def prefetch_snr(self, candidates: Sequence[Mapping[str, str]]) -> None:
        """The proxy SNR of every candidate the cache lacks, computed together when the
        evaluators can (`proxy_many`); each enters the cache once, as it arrives, so `snr`
        then reads it and `--resume` redoes none of them."""
        many = self.evaluators.proxy_many
        todo = {modes_key(m): m for m in candidates if "snr_db" not in self.known(m)}
        if many is None or not todo or time.monotonic() > self.deadline:
            return
        start = time.perf_counter()
        for modes, value in zip(todo.values(), many(list(todo.values()))):
            self._store(modes, "snr_db", value, time.perf_counter() - start)
            start = time.perf_counter()

    def known(self, modes: Mapping[str, str]) -> dict[str, Any]:
        return self._read(modes_key(modes))

    def _get(self, modes: Mapping[str, str], field: str, compute: Callable[..., float]) -> float:
        key = modes_key(modes)
        entry = self._read(key)
        if field in entry:
            return float(entry[field])
        if time.monotonic() > self.deadline:
            raise BudgetExhausted("time budget spent")
        start = time.perf_counter()
        value = compute(modes)
        self._store(modes, field, value, time.perf_counter() - start)
        return value

    def _store(self, modes: Mapping[str, str], field: str, value: float, seconds: float) -> None:
        self.computed += 1
        key = modes_key(modes)
        entry = self._read(key)  # another field may have landed meanwhile
        entry.update({field: value, f"{field}_seconds": round(seconds, 3)})
        entry["modes"] = dict(sorted(modes.items()))
        write_text_atomic(self.folder / f"{key}.json", json.dumps(_finite(entry), indent=1))

    def _read(self, key: str) -> dict[str, Any]:
        path = self.folder / f"{key}.json"
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # not JSON, not UTF-8
            return {}  # a torn entry is recomputed
        return {k: _from_json(v) for k, v in data.items()}


def _finite(entry: dict[str, Any]) -> dict[str, Any]:
    def fix(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return value

    return {k: fix(v) for k, v in entry.items()}


def _from_json(value: Any) -> Any:
    if value in ("Infinity", "-Infinity", "NaN"):
        return float(value.replace("Infinity", "inf"))
    return value
