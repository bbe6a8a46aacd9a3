"""ONNX backend node cases for the tensor kernels that quantlens does not run, with reasons."""

# Every runnable case of the tensor ops passes; float8/sub-byte/string Cast cases are already
# skipped by element type in tests/onnx_node_cases.py.
EXCLUSIONS: dict[str, str] = {}
