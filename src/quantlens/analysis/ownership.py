"""Which quantizers each layer owns, where its output is compared, and where a re-run starts.

A layer (a node with a constant weight) owns its weight and bias quantizers and the activation
quantizers whose precision its mode decides: where every node output is quantized (NPUs), those
of its output up to the end of a fused activation (a chip writes Conv+ReLU or Conv+SiLU as one
layer) plus a graph input it reads; where only weighted ops' inputs are (ONNX Runtime CPU), its
input. So two neighbours never share a quantizer, and promoting a layer's nodes (`nodes`) to
16-bit changes exactly the quantizers it owns. The tensor compared with float is the layer's
output after the fused activation. That is also how we compare like with like: an asymmetric
uint8 range starting at 0 on a pre-ReLU tensor clips the negatives exactly as the ReLU does, so
an SNR taken before the ReLU would measure the ReLU, not quantization noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from quantlens.emulate.executor import Executor, Step
from quantlens.ir.layers import Layer
from quantlens.schemes.qparams import QuantPlan

# Element-wise activations that chips fuse into the preceding layer (one input that matters).
FUSED_ACTIVATIONS = frozenset(
    {
        "Relu",
        "Clip",
        "LeakyRelu",
        "PRelu",
        "HardSigmoid",
        "HardSwish",
        "Sigmoid",
        "Tanh",
        "Elu",
        "Selu",
        "Softplus",
        "Mish",
        "Gelu",
    }
)


@dataclass(frozen=True)
class LayerTensors:
    layer: Layer
    step: int
    weights: tuple[str, ...]
    activations: tuple[str, ...]
    # The tensor compared with float: the layer's output after any fused activation.
    measured: str
    fused: tuple[str, ...]
    # The layer's node followed by its fused activation nodes (what an Assignment promotes).
    nodes: tuple[str, ...]
    # Float tensors a partial run starts from so that exactly this layer and its successors run.
    cut: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.layer.id

    def quantizers(self, variant: str) -> frozenset[str]:
        return quantizer_names(self.weights, self.activations, variant)


def quantizer_names(
    weights: tuple[str, ...], activations: tuple[str, ...], variant: str
) -> frozenset[str]:
    """Names for `QuantHooks(only=...)`: "weight", "activation" or "both"."""
    if variant == "weight":
        return frozenset(weights)
    if variant == "activation":
        return frozenset(activations)
    return frozenset(weights) | frozenset(activations)


class _Graph:
    """Producer and consumer maps over the executor's compiled steps."""

    def __init__(self, executor: Executor) -> None:
        self.steps = executor.steps
        self.outputs = set(executor.output_names)
        self.weights = set(executor.weights)
        self.consumers: dict[str, list[Step]] = {}
        for step in self.steps:
            for name in step.inputs:
                if name is not None:
                    self.consumers.setdefault(name, []).append(step)

    def descendants(self, start: int) -> set[int]:
        seen = {start}
        stack = [self.steps[start]]
        while stack:
            for name in stack.pop().outputs:
                for step in self.consumers.get(name, []):
                    if step.index not in seen:
                        seen.add(step.index)
                        stack.append(step)
        return seen

    def cut(self, start: int) -> tuple[str, ...]:
        region = self.descendants(start)
        produced = {name for i in region for name in self.steps[i].outputs}
        needed: list[str] = []
        for i in sorted(region):
            needed.extend(n for n in self.steps[i].inputs if n is not None)
        # Outputs this layer cannot reach are passed through from the float run unchanged.
        needed.extend(sorted(self.outputs - produced))
        unique = dict.fromkeys(n for n in needed if n not in produced and n not in self.weights)
        return tuple(unique)

    def fused_chain(self, tensor: str) -> _Chain:
        """Follow fused activations from a layer's output `tensor`."""
        chain = _Chain(tensor, [], [tensor], [])
        while chain.end not in self.outputs:
            users = self.consumers.get(chain.end, [])
            found = _gated(chain.end, users) or _single_activation(chain.end, users)
            if found is None:
                break
            op, steps = found
            chain.ops.append(op)
            chain.nodes.extend(s.ctx.name for s in steps)
            chain.tensors.extend(s.outputs[0] for s in steps)
            chain.end = steps[-1].outputs[0]
        return chain


@dataclass
class _Chain:
    end: str
    ops: list[str]
    tensors: list[str]
    nodes: list[str]


def _single_activation(tensor: str, users: list[Step]) -> tuple[str, list[Step]] | None:
    if len(users) != 1 or users[0].ctx.op_type not in FUSED_ACTIVATIONS:
        return None
    if users[0].inputs[0] != tensor:
        return None
    return users[0].ctx.op_type, users


# Gated activations spelled x * gate(x): YOLO's SiLU, and HardSwish as `split-hardswish` writes it.
_GATES = {"Sigmoid": "SiLU", "HardSigmoid": "HardSwish"}


def _gated(tensor: str, users: list[Step]) -> tuple[str, list[Step]] | None:
    """x -> Sigmoid -> Mul(x, sigmoid(x)) (or a HardSigmoid gate): one activation in two nodes."""
    if len(users) != 2:
        return None
    gate = next((s for s in users if s.ctx.op_type in _GATES), None)
    mul = next((s for s in users if s.ctx.op_type == "Mul"), None)
    if gate is None or mul is None or set(mul.inputs) != {tensor, gate.outputs[0]}:
        return None
    return _GATES[gate.ctx.op_type], [gate, mul]


def layer_tensors(
    executor: Executor, layers: Sequence[Layer], plan: QuantPlan, placement: str
) -> list[LayerTensors]:
    """Ownership and cut of every layer, in execution order; `placement` is the profile's."""
    graph = _Graph(executor)
    step_of = {step.ctx.name: step.index for step in executor.steps}
    inputs = set(executor.input_names)
    result = []
    for layer in layers:
        index = step_of[layer.id]
        chain = graph.fused_chain(layer.output)
        weights = tuple(w for w in (layer.weight, layer.bias) if w and w in plan.weights)
        if placement == "all-outputs":
            owned = [layer.input] if layer.input in inputs else []
            owned += chain.tensors
        else:
            owned = [layer.input]
        acts = tuple(n for n in dict.fromkeys(owned) if n in plan.activations)
        nodes = (layer.id, *chain.nodes)
        cut = graph.cut(index)
        result.append(
            LayerTensors(layer, index, weights, acts, chain.end, tuple(chain.ops), nodes, cut)
        )
    return sorted(result, key=lambda lt: lt.step)


def node_tensors(
    executor: Executor, layers: Sequence[LayerTensors], plan: QuantPlan
) -> list[LayerTensors]:
    """Every other node that writes a quantizer of its own (a Sigmoid, a Concat, a Resize), as a
    weightless layer: on targets that quantize every node output these are choices too, and a
    detector's last Concat can matter more than any convolution."""
    graph = _Graph(executor)
    taken = {node for lt in layers for node in lt.nodes}
    found = []
    for step in executor.steps:
        if step.ctx.name in taken:
            continue
        owned = tuple(n for n in step.outputs if n in plan.activations)
        if not owned:
            continue
        inputs = [n for n in step.inputs if n is not None and n not in graph.weights]
        layer = Layer(
            id=step.ctx.name,
            op_type=step.ctx.op_type,
            input=inputs[0] if inputs else "",
            output=step.outputs[0],
            weight="",
            macs=0,
        )
        cut = graph.cut(step.index)
        found.append(
            LayerTensors(layer, step.index, (), owned, owned[0], (), (step.ctx.name,), cut)
        )
    return found
