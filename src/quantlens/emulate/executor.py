"""The executor: runs an ONNX graph with torch kernels, under the caller's control.

It is built for analysis rather than serving:
- every tensor passes through `hooks.activation` and every weight through `hooks.weight`, which is
  where quantizers sit;
- `run(start=...)` begins from cached tensors at a cut and executes only the nodes still needed
  for the requested outputs;
- it runs on any torch device and keeps autograd when `grad=True`.
The graph itself is never mutated; everything that varies between runs is an argument.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnx_ir as ir
import torch

from quantlens.emulate.finite import FiniteGraph
from quantlens.emulate.registry import KernelFn, NodeContext, find_kernel, tensor_from_numpy
from quantlens.errors import InvariantError, UnsupportedOpError, UserError

Tensor = torch.Tensor


class Hooks(Protocol):
    """Where quantizers plug in. Both methods return the tensor to use in place of the input."""

    def weight(self, name: str, tensor: Tensor) -> Tensor: ...

    def activation(self, name: str, tensor: Tensor) -> Tensor: ...


class OwnedActivation(Protocol):
    """Optional hook method: `activation` for a tensor nothing else refers to, which it may
    overwrite, and which holds no NaN when `finite` (see `QuantHooks.activation_owned`). A hook
    with it may also have `cleans`: the activations it always returns finite."""

    def __call__(self, name: str, tensor: Tensor, finite: bool) -> Tensor: ...


@dataclass(frozen=True)
class Step:
    """One node, compiled: its kernel, context, and the names of the tensors it reads and writes."""

    index: int
    ctx: NodeContext
    fn: KernelFn
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    # After step i runs, the tensors in release[i] are no longer needed by this plan.
    release: tuple[tuple[str, ...], ...]


def unsupported_nodes(model: ir.Model) -> list[tuple[str, str, str]]:
    """(node name, op type, domain) of every node without a kernel for the model's opset."""
    missing = []
    for node in model.graph:
        opset = _opset_of(model, node.domain)
        if node.domain not in ("", "ai.onnx") or find_kernel(node.op_type, opset) is None:
            missing.append((node.name or "", node.op_type, node.domain))
    return missing


def _opset_of(model: ir.Model, domain: str) -> int:
    key = "" if domain == "ai.onnx" else domain
    return int(model.opset_imports.get(key, model.opset_imports.get("ai.onnx", 1)))


def exact_fp32_on_cuda(precision: str = "ieee") -> None:
    """Float32 convolutions and matrix products in IEEE float32 on CUDA. cuDNN's default is
    TF32 (a 10-bit mantissa) on Ampere and later: ~1e-3 relative error per layer, which moves
    values across quantizer boundaries, so a quantized model emulated on a GPU drifts from the
    same model on the CPU (benchmarks/gpu_speed.py measures it, passing "tf32"). Process-wide:
    torch has no per-call switch."""
    backends: Any = torch.backends
    if hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision"):
        backends.cudnn.conv.fp32_precision = precision
        backends.cuda.matmul.fp32_precision = precision
    else:  # torch before 2.9
        backends.cudnn.allow_tf32 = precision == "tf32"
        backends.cuda.matmul.allow_tf32 = precision == "tf32"


class Executor:
    """Runs `model` (canonicalized, topologically sorted) on `device` with torch kernels."""

    def __init__(self, model: ir.Model, device: str | torch.device = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)
        if self.device.type == "cuda":
            exact_fp32_on_cuda()
        graph = model.graph
        self.input_names = [v.name or "" for v in graph.inputs]
        self.input_kinds = {v.name or "": _dtype_kinds(v.dtype) for v in graph.inputs}
        self.output_names = [v.name or "" for v in graph.outputs]
        self.weights = {
            name: _to_torch(value.const_value, self.device)
            for name, value in graph.initializers.items()
            if value.const_value is not None
        }
        self.weights = {k: v for k, v in self.weights.items() if k not in self.input_names}
        self.steps = tuple(self._compile(i, node) for i, node in enumerate(graph))
        self.producer = {out: step for step in self.steps for out in step.outputs}
        # Tensors that cannot hold NaN: their quantizers skip mapping NaN to the lowest code.
        self._finite: dict[frozenset[str], frozenset[str]] = {}
        steps = ((s.ctx.op_type, s.inputs, s.outputs) for s in self.steps)
        self._finite_graph = FiniteGraph(steps, self.weights, self.input_names)
        self.finite = self.finite_given(frozenset())
        self._plans: dict[tuple[frozenset[str], tuple[str, ...], frozenset[str]], Plan] = {}

    # --- compilation ----------------------------------------------------------------------------

    def _compile(self, index: int, node: ir.Node) -> Step:
        opset = _opset_of(self.model, node.domain)
        name = node.name or f"{node.op_type}_{index}"
        spec = find_kernel(node.op_type, opset, node.domain)
        if spec is None:
            raise UnsupportedOpError(node.op_type, name, node.domain, opset)
        ctx = NodeContext(
            name=name,
            op_type=node.op_type,
            opset=opset,
            attrs={key: _attr_value(attr) for key, attr in node.attributes.items()},
            num_outputs=len(node.outputs),
            outputs_present=tuple(bool(v.name) for v in node.outputs),
            device=str(self.device),
        )
        inputs = tuple(v.name if v is not None and v.name else None for v in node.inputs)
        outputs = tuple(v.name or f"{name}:{i}" for i, v in enumerate(node.outputs))
        return Step(index, ctx, spec.fn, inputs, outputs)

    def finite_given(self, cleaned: frozenset[str]) -> frozenset[str]:
        """The tensors kernels compute finite when those in `cleaned` are made finite by hooks
        (see `finite_tensors`); cached per set."""
        found = self._finite.get(cleaned)
        if found is None:
            found = self._finite[cleaned] = self._finite_graph.given(cleaned)
        return found

    # --- planning -------------------------------------------------------------------------------

    def plan(
        self,
        outputs: Sequence[str],
        available: Collection[str],
        keep: Collection[str] = (),
    ) -> Plan:
        """The steps that produce `outputs` from the tensors in `available` (and the weights)."""
        key = (frozenset(available), tuple(outputs), frozenset(keep))
        cached = self._plans.get(key)
        if cached is None:
            cached = self._plans[key] = self._make_plan(outputs, set(available), set(keep))
        return cached

    def _make_plan(self, outputs: Sequence[str], available: set[str], keep: set[str]) -> Plan:
        needed: set[int] = set()
        stack = [name for name in (*outputs, *keep) if name not in available]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name in available or name in self.weights:
                continue
            seen.add(name)
            step = self.producer.get(name)
            if step is None:
                raise UserError(
                    f"tensor {name!r} is neither produced by the graph nor given",
                    f"feed it; the model's inputs are {self.input_names}",
                )
            needed.add(step.index)
            stack.extend(n for n in step.inputs if n is not None)
        steps = tuple(self.steps[i] for i in sorted(needed))
        return Plan(steps, _release_schedule(steps, set(outputs) | keep))

    # --- running --------------------------------------------------------------------------------

    def run(
        self,
        feeds: Mapping[str, Tensor | np.ndarray] | None = None,
        *,
        outputs: Sequence[str] | None = None,
        start: Mapping[str, Tensor] | None = None,
        hooks: Hooks | None = None,
        keep: Collection[str] = (),
        grad: bool = False,
    ) -> dict[str, Tensor]:
        """Run the graph; returns `outputs` (default: the model outputs) plus every `keep` tensor.

        `feeds` are graph inputs (hooked as activations); `start` are cached tensors at a cut,
        used as they are. Only nodes needed to reach the outputs from those tensors run.
        """
        env: dict[str, Tensor] = {}
        for name, value in (feeds or {}).items():
            _check_kind(name, value, self.input_kinds.get(name))
            tensor = _as_tensor(value, self.device)
            env[name] = hooks.activation(name, tensor) if hooks else tensor
        env.update(start or {})
        wanted = list(outputs) if outputs is not None else self.output_names
        plan = self.plan(wanted, env.keys(), keep)
        with torch.set_grad_enabled(grad):
            self._execute(plan, env, hooks)
        result = {}
        for name in (*wanted, *keep):
            if name not in env:
                raise InvariantError(f"tensor {name!r} was not computed")
            result[name] = env[name]
        return result

    def _execute(self, plan: Plan, env: dict[str, Tensor], hooks: Hooks | None) -> None:
        # Hooks that can quantize in place get the kernel outputs that alias nothing else.
        owning: OwnedActivation | None = getattr(hooks, "activation_owned", None)
        if torch.is_grad_enabled():
            owning = None
        finite = self.finite_given(getattr(hooks, "cleans", frozenset())) if owning else None
        # Hooks may replace a node's kernel (a vendor's integer arithmetic), not under autograd.
        kernels: Mapping[str, KernelFn] = getattr(hooks, "kernels", None) or {}
        # Hooks may have a node read an input as its producer computed it, before the hook
        # quantized it (`QuantHooks.raw_reads`: a vendor's float op read by another float op,
        # while integer readers get its cast; a constant an integer op quantizes as well);
        # tensors fed at a cut have no such value.
        raw_reads: Mapping[str, Mapping[int, str]] = getattr(hooks, "raw_reads", None) or {}
        if torch.is_grad_enabled():
            kernels, raw_reads = {}, {}
        kept_raw = {name for reads in raw_reads.values() for name in reads.values()}
        raw: dict[str, Tensor] = {}
        for step, release in zip(plan.steps, plan.release):
            args = [self._fetch(name, env, hooks) for name in step.inputs]
            for index, name in raw_reads.get(step.ctx.name, {}).items():
                # A constant read raw is the constant itself, not what `hooks.weight` makes it.
                args[index] = self.weights.get(name, raw.get(name, args[index]))
            produced = kernels.get(step.ctx.name, step.fn)(step.ctx, args)
            values = [produced] if isinstance(produced, Tensor) else list(produced)
            if len(values) < len(step.outputs):
                raise InvariantError(f"{step.ctx.name}: kernel returned {len(values)} outputs")
            for name, value in zip(step.outputs, values):
                if name in kept_raw and hooks is not None:
                    raw[name] = value  # the hook returns a new tensor: this one stays as is
                    env[name] = hooks.activation(name, value)
                elif owning is not None and finite is not None and _owned(value, args, values):
                    env[name] = owning(name, value, name in finite)
                else:
                    env[name] = hooks.activation(name, value) if hooks else value
            for name in release:
                env.pop(name, None)
                raw.pop(name, None)

    def _fetch(
        self, name: str | None, env: dict[str, Tensor], hooks: Hooks | None
    ) -> Tensor | None:
        if name is None:
            return None
        if name in env:
            return env[name]
        weight = self.weights.get(name)
        if weight is None:
            raise UserError(
                f"tensor {name!r} has no value",
                f"feed every model input: {', '.join(self.input_names)}",
            )
        return hooks.weight(name, weight) if hooks else weight

    # --- convenience ----------------------------------------------------------------------------

    def activation_names(self) -> list[str]:
        """Every tensor the graph computes, in execution order."""
        return [name for step in self.steps for name in step.outputs]

    def to(self, device: str | torch.device) -> Executor:
        return Executor(self.model, device)


def _owned(value: Tensor, args: Sequence[Tensor | None], values: Sequence[Tensor]) -> bool:
    """Whether a kernel output shares memory with none of the step's inputs (weights, cached
    start tensors, tensors other consumers still read) nor with its other outputs: a view,
    Identity or a no-op Cast shares it, and writing into it would change those."""
    storage = value.untyped_storage().data_ptr()
    if storage == 0 or not _dense(value):
        return False
    shared = [a for a in args if a is not None] + [v for v in values if v is not value]
    return all(t.untyped_storage().data_ptr() != storage for t in shared)


def _dense(value: Tensor) -> bool:
    """No two elements share memory (an expanded tensor's do; writing into it would fail)."""
    return value.is_contiguous() or value.is_contiguous(memory_format=torch.channels_last)


def _release_schedule(steps: Sequence[Step], pinned: set[str]) -> tuple[tuple[str, ...], ...]:
    last_use: dict[str, int] = {}
    for position, step in enumerate(steps):
        for name in (*step.inputs, *step.outputs):
            if name is not None:
                last_use[name] = position
    release: list[list[str]] = [[] for _ in steps]
    for name, position in last_use.items():
        if name not in pinned:
            release[position].append(name)
    return tuple(tuple(names) for names in release)


def _attr_value(attr: ir.Attr) -> Any:
    value = attr.value
    if isinstance(value, ir.TensorProtocol):
        return value.numpy()
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [v.numpy() if isinstance(v, ir.TensorProtocol) else v for v in value]
    return value


def _to_torch(tensor: ir.TensorProtocol, device: torch.device) -> Tensor:
    return _as_tensor(tensor.numpy(), device)


def _dtype_kinds(dtype: ir.DataType | None) -> str | None:
    """numpy dtype kinds a feed of an input of `dtype` may have (None: anything)."""
    if dtype is None:
        return None
    if dtype == ir.DataType.BOOL:
        return "b"
    return "f" if dtype.is_floating_point() else "iu" if dtype.is_integer() else None


def _check_kind(name: str, value: Tensor | np.ndarray, kinds: str | None) -> None:
    """A float input fed int64 or bool data fails deep in a kernel: say so where it enters."""
    if isinstance(value, Tensor):
        dtype: object = value.dtype
        kind = "b" if value.dtype == torch.bool else "f" if value.is_floating_point() else "i"
    else:
        dtype = np.asarray(value).dtype
        kind = np.asarray(value).dtype.kind
    # Kinds beyond numpy's own ("V": bfloat16, float8 from ml_dtypes) are the kernels' business.
    if kinds is not None and kind in "biuf" and kind not in kinds:
        wanted = {"f": "float", "b": "bool", "iu": "integer"}[kinds]
        raise UserError(
            f"input {name!r} was given {dtype} data, the model's input is {wanted}",
            f"save the input arrays as {wanted} (the model's input type)",
        )


def _as_tensor(value: Tensor | np.ndarray, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(device)
    return tensor_from_numpy(np.asarray(value), device)
