"""Emulation: run ONNX graphs with torch kernels, with hook points for quantizers."""

from quantlens.emulate.executor import Executor, Hooks, unsupported_nodes
from quantlens.emulate.registry import NodeContext, find_kernel, register, supported_ops

__all__ = [
    "Executor",
    "Hooks",
    "NodeContext",
    "find_kernel",
    "register",
    "supported_ops",
    "unsupported_nodes",
]
