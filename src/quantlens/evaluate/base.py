"""The evaluator interface, its registry, and the loader for evaluators written by users.

An evaluator sees one sample at a time (`update`), then reports dataset metrics (`result`) and a
score per sample (`sample_scores`, higher is better) so reports can list the worst samples first.
Built-ins register themselves by name; `path/to/file.py:name` loads a factory from a user file.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from quantlens.data.preprocess import InputSpec
from quantlens.errors import PluginError, UserError

Tensor = torch.Tensor
Outputs = Mapping[str, "np.ndarray | Tensor"]


@dataclass
class Sample:
    """One evaluated input: its name relative to the data folder, and what the pipeline knows.

    `reference` holds the float model's outputs for the same input when the pipeline has them
    (the `distance` evaluator compares against it; ground-truth evaluators ignore it).
    """

    index: int
    name: str
    path: Path | None = None
    image_size: tuple[int, int] | None = None  # (width, height) of the original image
    reference: dict[str, np.ndarray] | None = None


@dataclass
class EvalContext:
    """What a factory may use to build an evaluator for one model and one data folder."""

    data: Path
    sample_names: list[str]
    spec: InputSpec | None = None
    labels: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)
    ground_truth: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Evaluator(Protocol):
    """A task metric that streams over samples."""

    name: str
    # The key of `result()` that ranks models (higher is better).
    primary: str

    def update(self, outputs: Outputs, sample: Sample) -> None: ...

    def result(self) -> dict[str, float]: ...

    def sample_scores(self) -> dict[str, float]: ...


EvaluatorFactory = Callable[[EvalContext], Evaluator]
F = TypeVar("F", bound=EvaluatorFactory)
_REGISTRY: dict[str, EvaluatorFactory] = {}


def register_evaluator(name: str) -> Callable[[F], F]:
    def decorate(factory: F) -> F:
        _REGISTRY[name] = factory
        return factory

    return decorate


def evaluator_names() -> list[str]:
    return sorted(_REGISTRY)


def is_plugin_spec(spec: str) -> bool:
    file, sep, name = spec.rpartition(":")
    return bool(sep) and file.endswith(".py") and bool(name)


def make_evaluator(task: str, context: EvalContext) -> Evaluator:
    """The registered evaluator `task`, or the factory named by `path/to/file.py:name`."""
    if is_plugin_spec(task):
        factory = load_plugin(task)
    elif task in _REGISTRY:
        factory = _REGISTRY[task]
    else:
        raise UserError(
            f"unknown task {task!r}",
            f"choose one of: {', '.join(evaluator_names())}, or path/to/file.py:factory",
        )
    evaluator = factory(context)
    if not isinstance(evaluator, Evaluator):
        raise UserError(
            f"task {task!r} returned {type(evaluator).__name__}, not an evaluator",
            "return an object with name, primary, update(), result() and sample_scores()",
        )
    if is_plugin_spec(task):
        return PluginEvaluator(evaluator, Path(task.rpartition(":")[0]))
    return evaluator


class PluginEvaluator:
    """A user's evaluator, with its failures (exceptions, NaN metrics) reported as its own."""

    def __init__(self, inner: Evaluator, file: Path) -> None:
        self.inner, self.file = inner, file
        self.name, self.primary = inner.name, inner.primary

    def update(self, outputs: Outputs, sample: Sample) -> None:
        _call_plugin(self.file, "update()", self.inner.update, outputs, sample)

    def result(self) -> dict[str, float]:
        found = _call_plugin(self.file, "result()", self.inner.result)
        for key, value in found.items():
            if not isinstance(value, (int, float)) or math.isnan(value):
                raise PluginError(
                    f"plug-in {self.file}: result() returned {value!r} for {key!r}",
                    "return a number for every metric (NaN is not one)",
                )
        return found

    def sample_scores(self) -> dict[str, float]:
        return _call_plugin(self.file, "sample_scores()", self.inner.sample_scores)


def _call_plugin(file: Path, call: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except UserError:
        raise  # the plug-in's own clear message
    except Exception as exc:
        raise PluginError.raised(exc, file, call) from exc


def load_plugin(spec: str) -> Callable[..., Any]:
    """Import `path/to/file.py` and return its attribute `name` (given as `file.py:name`)."""
    file_part, _, name = spec.rpartition(":")
    path = Path(file_part)
    if not path.is_file():
        raise UserError(f"plug-in file {path} does not exist", "check the path before ':'")
    module_name = f"quantlens_plugin_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"cannot import {path}", "pass a Python source file ending in .py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise UserError(
            f"importing plug-in {path} failed: {type(exc).__name__}: {exc}", "fix the file"
        ) from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        defined = sorted(
            k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
        )
        raise UserError(
            f"plug-in {path} defines no callable {name!r}",
            f"name one of: {', '.join(defined) or '(none defined)'}",
        )
    return _blamed(factory, path, name)


def _blamed(fn: Callable[..., Any], file: Path, name: str) -> Callable[..., Any]:
    """`fn` with its exceptions reported as the plug-in's, with its file and line."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return _call_plugin(file, f"{name}()", lambda: fn(*args, **kwargs))

    return call


def as_numpy(value: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def single_output(outputs: Outputs, task: str, wanted: str | None = None) -> np.ndarray:
    """The output a single-head task reads: `wanted` when given, else the only (first) one."""
    if wanted is not None:
        if wanted not in outputs:
            raise UserError(
                f"task {task!r}: the model has no output {wanted!r}",
                f"choose one of: {', '.join(outputs)}",
            )
        return as_numpy(outputs[wanted])
    if not outputs:
        raise UserError(f"task {task!r}: the model produced no outputs", "check the model")
    return as_numpy(next(iter(outputs.values())))


def wrong_task(task: str, shape: tuple[int, ...], expected: str) -> UserError:
    return UserError(
        f"task {task!r} expects the model output to be {expected}, got shape {list(shape)}",
        "pick the task that matches the model (classification, detection, ocr, distance)",
    )
