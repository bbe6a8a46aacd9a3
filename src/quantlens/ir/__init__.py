"""Graph layer: load, canonicalize and describe ONNX models (onnx_ir)."""

from quantlens.ir.layers import Layer, discover_layers
from quantlens.ir.load import load_model, save_model
from quantlens.ir.passes import CanonicalizeOptions, PassReport, canonicalize

__all__ = [
    "CanonicalizeOptions",
    "Layer",
    "PassReport",
    "canonicalize",
    "discover_layers",
    "load_model",
    "save_model",
]
