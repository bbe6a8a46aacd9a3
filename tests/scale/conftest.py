"""One local Ray runtime for the scale-out tests (2 CPUs, as the CI machine has); the tests
that need it skip where Ray is not installed (`pip install 'quantlens[ray]'`), the others
(exact merges, the flags without Ray) run everywhere."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",
            num_cpus=2,
            namespace="quantlens",
            include_dashboard=False,
            log_to_driver=False,
        )
    yield
    if started:
        ray.shutdown()


def assert_same(a: object, b: object, where: str = "") -> None:
    """Equal structures; floats equal to 1e-9 (absolute and relative)."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9, nan_ok=True), where
    else:
        assert a == b, where


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The single-process run at the workers' thread count: PyTorch's CPU reductions round
    differently with the number of threads, whoever runs them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
