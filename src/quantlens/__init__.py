"""quantlens: find where int8 quantization hurts an ONNX model and fix it cheaply."""

__version__ = "0.1.0"
