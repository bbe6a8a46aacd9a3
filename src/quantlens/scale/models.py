"""Models as bytes: what travels through Ray's object store to the workers (one copy per node,
however many actors read it), so workers need no access to the driver's files for the model."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import torch

from quantlens.emulate.executor import Executor


def model_bytes(model: ir.Model) -> bytes:
    return ir.serde.serialize_model(model).SerializeToString()


def model_from_bytes(data: bytes) -> ir.Model:
    return ir.serde.deserialize_model(onnx.load_from_string(data))


def worker_executor(data: bytes, device: str, threads: int) -> Executor:
    """The executor a worker runs: `threads` torch threads, so that the actors of one machine
    together use its cores once (oversubscribed cores make every actor slower)."""
    torch.set_num_threads(threads)
    return Executor(model_from_bytes(data), device=device)
