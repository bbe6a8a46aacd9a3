"""ONNX backend node cases for the elementwise kernels that quantlens does not run, each with its reason."""

EXCLUSIONS: dict[str, str] = {}
