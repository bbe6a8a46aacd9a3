"""What the user asked for: how many workers, and which cluster."""

from __future__ import annotations

from dataclasses import dataclass

from quantlens.errors import UserError

INSTALL_HINT = "pip install 'quantlens[ray]'"


@dataclass(frozen=True)
class ScaleOptions:
    """`workers`: actors to start (None: one per CPU of the cluster, or per GPU with cuda);
    `address`: an existing cluster (`auto`, `ray://host:port`, `host:port`); None with workers
    set starts a local Ray runtime; `threads`: torch threads per worker (None: the cores split
    evenly). PyTorch's CPU reductions round differently with the thread count, so results are
    bitwise those of one process only at the same thread count (else equal to ~1e-7 relative
    on outputs)."""

    workers: int | None = None
    address: str | None = None
    threads: int | None = None

    @property
    def enabled(self) -> bool:
        return self.workers is not None or self.address is not None


def require_ray() -> None:
    """One clear error when the flags are given and Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError(
            "--workers/--ray-address need Ray, which is not installed",
            f"install it with: {INSTALL_HINT}",
        ) from None


def scale_options(workers: int | None, address: str | None) -> ScaleOptions | None:
    """The CLI flags as options; None (nothing changes) when neither is given."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} is not a positive count", "pass --workers 1 or more")
    options = ScaleOptions(workers, address)
    if not options.enabled:
        return None
    require_ray()
    return options
