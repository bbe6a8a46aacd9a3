"""The report: one self-contained HTML page rendered from a run folder's artifacts only.

`render_report` lives in `quantlens.report.render` (not imported here, to keep this import
light). The report reads artifact schemas only (`quantlens.artifacts`), never a pipeline.
"""

from quantlens.report.graph import GraphArtifact, build_graph, write_graph
from quantlens.report.provenance import CommandLog, record_command

__all__ = ["CommandLog", "GraphArtifact", "build_graph", "record_command", "write_graph"]
