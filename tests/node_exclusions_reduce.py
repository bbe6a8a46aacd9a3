"""ONNX backend node cases for the reduce kernels that quantlens does not run, each with its reason."""

EXCLUSIONS: dict[str, str] = {}
