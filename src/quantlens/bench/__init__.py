"""Measurements on this machine: ONNX Runtime latency."""
