"""Scale-out on Ray: the stages' units of work (evaluation shards, calibration shards, isolated
layers, search candidates) on workers of a local Ray runtime or an existing cluster.

Nothing here imports Ray until a stage is asked for workers (`ScaleOptions.enabled`); without
`--workers`/`--ray-address` every stage runs in its own process as before.
"""

from quantlens.scale.options import ScaleOptions, require_ray

__all__ = ["ScaleOptions", "require_ray"]
