"""An explicit assignment closed under the target's precision rules, so that it means what it
says on the chip: every mode it had to change comes back with the reason, or it is refused.

On a target that quantizes every tensor once (`all-outputs` placement: Hailo, QNN, TPU-MLIR), a
layer cannot read more bits than its producer writes: `a16_w8` on a layer whose producer writes
8 bits is realized as `a8_w8_a16`, and the vendor file says so. The rules below are the search's
(`quantlens.search.groups`), applied to modes instead of search levels, so that a hand-written
assignment and a searched one obey the same chip:

- a fused op (the vendor's fusion rules, `quantlens.ir.vendors`: Conv + bias + activation) has
  one quantizer, so its nodes take one mode;
- a layer that reads N-bit activations needs its producers to write N bits: `a8_w8` becomes
  `a8_w8_a16` (Hailo's producer rule; on QNN, encodings are per tensor, so the same holds);
  data movement and ops that output the precision they receive (Hailo's concat, feature
  splitter, shortcut) read and write it (`a16_w16`), which reaches back to their own producers;
- on Hailo (a profile whose search has an `output_mode`) such an op with one 16-bit input is
  16-bit, and so are its other inputs; tensors the vendor holds in one quantizer (a Concat's
  inputs on QNN) take one precision;
- on TPU-MLIR a float Conv and the Scale op after it (`search.drag_after`) go float together.

Where no mode of the profile does what a rule needs (a producer in `a8_w4` has no 16-bit output
mode), the assignment is refused with the reason. ONNX Runtime targets quantize each weighted
op's inputs on their own (the widest reader decides), so nothing there needs closing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

import onnx_ir as ir

from quantlens.artifacts.quantize import ModeChange
from quantlens.emulate.plan import node_modes, quantization_points
from quantlens.errors import UserError
from quantlens.ir.index import ModelIndex
from quantlens.ir.layers import discover_layers
from quantlens.ir.vendors.placement import VendorPlacement, vendor_placement
from quantlens.schemes.assignment import Assignment
from quantlens.schemes.formats import IntFormat
from quantlens.schemes.modes import ModeName, PrecisionMode, get_mode
from quantlens.schemes.profiles import TargetProfile


@dataclass
class Group:
    """Nodes the vendor runs as one quantized op: the writer of `output` and the nodes whose
    outputs it fuses into it (a singleton where nothing fuses)."""

    key: str
    members: list[str]
    anchor: str  # the weighted member, else the writer: the name messages use
    op_type: str  # the anchor's
    weighted: bool
    # Activations read from outside the group -> the members that read them.
    reads: dict[str, list[str]] = field(default_factory=dict)
    output: str | None = None  # the tensor its quantizer writes


@dataclass
class GroupGraph:
    groups: dict[str, Group]  # key -> group, in graph order
    group_of: dict[str, str]  # node -> key
    producer: dict[str, str]  # tensor -> key of the group writing it
    vendor: VendorPlacement
    weighted: set[str]  # nodes with weights

    def source(self, tensor: str) -> str | None:
        """The group whose quantizer holds `tensor`'s values; None for a graph input, whose
        quantizer follows its widest reader."""
        return self.producer.get(self.quantizer_of(tensor))

    def quantizer_of(self, tensor: str) -> str:
        """The tensor whose quantizer `tensor` reads through unquantized data movement."""
        seen = set()
        while tensor in self.vendor.passthrough and tensor not in seen:
            seen.add(tensor)
            tensor = self.vendor.passthrough[tensor]
        return tensor


def quantizes_every_tensor(profile: TargetProfile) -> bool:
    return profile.placement == "all-outputs" and profile.integer_ops is None


def close_assignment(
    model: ir.Model, assignment: Assignment, profile: TargetProfile
) -> tuple[Assignment, list[ModeChange]]:
    """`assignment` with every mode the rules force changed, and the changes in graph order."""
    requested = node_modes(model, assignment, profile)
    if not quantizes_every_tensor(profile):
        return assignment, []
    graph = group_graph(model, profile)
    closure = _Closure(graph, profile, requested, _explicit(assignment, requested))
    closure.run()
    changes = [
        ModeChange(node=node, requested=mode, mode=closure.node_mode(node), reason=why)
        for node, mode in requested.items()
        if (why := closure.reason_for(node, mode)) is not None
    ]
    closed = assignment.with_layers({c.node: cast(ModeName, c.mode) for c in changes})
    _verify(model, closed, profile, graph)
    return closed, changes


def group_graph(model: ir.Model, profile: TargetProfile) -> GroupGraph:
    index = ModelIndex.from_model(model)
    vendor = vendor_placement(model, profile.arithmetic.fusions)
    layer_map = discover_layers(model)
    floats = set(layer_map.activations)
    weighted = {layer.id for layer in layer_map.layers}
    groups: dict[str, Group] = {}
    group_of: dict[str, str] = {}
    for node in index.nodes:
        outs = [t for t in node.outputs if t in floats]
        # A node that writes no float tensor is a group of its own (named apart from tensors).
        key = _carrier(outs[0], vendor.fused_away) if outs else f"<{node.name}>"
        group = groups.setdefault(key, Group(key, [], node.name, node.op_type, False))
        group.members.append(node.name)
        group_of[node.name] = key
        if key in outs:
            group.output = key
        if node.name in weighted and not group.weighted:
            group.anchor, group.op_type, group.weighted = node.name, node.op_type, True
        elif key in outs and not group.weighted:
            group.anchor, group.op_type = node.name, node.op_type
    producer = {t: group_of[n.name] for n in index.nodes for t in n.outputs}
    for node in index.nodes:
        group = groups[group_of[node.name]]
        for tensor in node.inputs:
            inside = producer.get(tensor) == group.key
            if tensor in floats and not inside:
                readers = group.reads.setdefault(tensor, [])
                readers.extend([node.name] if node.name not in readers else [])
    return GroupGraph(groups, group_of, producer, vendor, weighted)


def _carrier(tensor: str, fused_away: Mapping[str, str]) -> str:
    seen = {tensor}
    while tensor in fused_away and fused_away[tensor] not in seen:
        tensor = fused_away[tensor]
        seen.add(tensor)
    return tensor


def _explicit(assignment: Assignment, requested: Mapping[str, str]) -> set[str]:
    """Nodes the assignment names (exactly or by a pattern), as opposed to its default."""
    return {
        node
        for node in requested
        if node in assignment.layers
        or any(fnmatch.fnmatchcase(node, rule.pattern) for rule in assignment.patterns)
    }


class _Closure:
    """Modes per node, raised by the rules until none applies. A fused group's members write
    one quantizer, so their output bits move together; the rest of each mode (the input bits
    a member reads from outside, its weights) is its own."""

    def __init__(
        self,
        graph: GroupGraph,
        profile: TargetProfile,
        requested: Mapping[str, str],
        explicit: set[str],
    ) -> None:
        self.graph, self.profile = graph, profile
        self.moves_data = {*profile.passthrough_ops, *profile.shared_scale_ops}
        self.modes: dict[str, str] = dict(requested)
        self.reasons: dict[str, str] = {}  # node -> why its mode changed
        for group in graph.groups.values():
            self._unify(group, explicit)

    # --- results ----------------------------------------------------------------------------

    def node_mode(self, node: str) -> str:
        return self.modes[node]

    def reason_for(self, node: str, requested: str) -> str | None:
        return None if self.modes[node] == requested else self.reasons[node]

    # --- the rules ----------------------------------------------------------------------------

    def run(self) -> None:
        """Apply every rule until none changes a mode (each change only raises precision, so
        this ends)."""
        for _ in range(4 * len(self.graph.groups) + 4):
            changed = False
            for group in self._writers():
                changed |= self._inputs_rule(group)
                changed |= self._passthrough_rule(group)
                changed |= self._drag_rule(group)
            changed |= self._tie_rule()
            if not changed:
                return
        raise UserError(
            "the assignment's precision rules did not settle", "report this with the model"
        )

    def _writers(self) -> Iterator[Group]:
        return (g for g in self.graph.groups.values() if g.output is not None or g.weighted)

    def _inputs_rule(self, group: Group) -> bool:
        """A layer reading N-bit activations needs each producer to write N bits."""
        changed = False
        for tensor, readers in group.reads.items():
            source = self.graph.source(tensor)
            wants = [(get_mode(self.modes[n]).act_in_bits or 0, n) for n in readers]
            bits, reader = max(wants)
            if source is None or source == group.key or not bits:
                continue
            why = (
                f"feeds {reader} ({self.modes[reader]}), which reads {bits}-bit inputs: a tensor "
                f"has one quantizer on {self.profile.name}, so its producer writes {bits} bits"
            )
            changed |= self._raise_output(source, bits, why, (reader, tensor))
        return changed

    def _passthrough_rule(self, group: Group) -> bool:
        """Hailo: concat, feature splitter, shortcut and data movement output the precision
        they receive, so one 16-bit input makes them 16-bit (and, through the inputs rule,
        their other inputs too)."""
        if self.profile.search.output_mode is None or group.op_type not in self.moves_data:
            return False
        widest = max((self._out_bits(s) for s in self._sources(group)), default=0)
        if widest <= self._out_bits(group.key):
            return False
        why = (
            f"reads a {widest}-bit input, and {group.op_type} outputs the precision it receives "
            f"on {self.profile.name}"
        )
        return self._raise_output(group.key, widest, why, None)

    def _drag_rule(self, group: Group) -> bool:
        """TPU-MLIR: a float Conv and the Scale op after it run in one precision."""
        if group.op_type not in self.profile.search.drag_after:
            return False
        sources = set(self._sources(group))
        if len(sources) != 1:
            return False
        layer = self.graph.groups[next(iter(sources))]
        if not layer.weighted:
            return False
        mine, theirs = self._mode(group), self._mode(layer)
        if mine.is_float == theirs.is_float:
            return False
        floating, other = (group, layer) if mine.is_float else (layer, group)
        mode = self.modes[floating.anchor]
        why = (
            f"{self.profile.name} runs {layer.anchor} and the {group.op_type} after it in one "
            f"precision, and {floating.anchor} is {mode}"
        )
        for node in other.members:
            self._set(node, mode, why)
        return True

    def _tie_rule(self) -> bool:
        """Tensors the vendor holds in one quantizer take one precision (the widest)."""
        changed = False
        for tensor, owner in self.graph.vendor.tied.items():
            a, b = self.graph.source(tensor), self.graph.source(owner)
            if a is None or b is None or a == b:
                continue
            bits_a, bits_b = self._out_bits(a), self._out_bits(b)
            if not bits_a or not bits_b or bits_a == bits_b:
                continue
            low, bits = (a, bits_b) if bits_a < bits_b else (b, bits_a)
            why = (
                f"{self.profile.name} holds {tensor!r} and {owner!r} in one quantizer, and one "
                f"of them is {bits}-bit"
            )
            changed |= self._raise_output(low, bits, why, None)
        return changed

    # --- mode changes -----------------------------------------------------------------------

    def _raise_output(self, key: str, bits: int, why: str, reader: tuple[str, str] | None) -> bool:
        """Every member of group `key` writes `bits` (they share one quantizer)."""
        group = self.graph.groups[key]
        changed = False
        for node in group.members:
            mode = get_mode(self.modes[node])
            if mode.is_float or (mode.act_out_bits or 0) >= bits:
                continue
            found = self._output_mode(group, node, mode, bits)
            if found is None:
                raise self._refusal(group, node, mode, bits, reader)
            self._set(node, found, why)
            changed = True
        return changed

    def _output_mode(self, group: Group, node: str, mode: PrecisionMode, bits: int) -> str | None:
        """The profile's mode that writes `bits` and otherwise keeps `mode`; data movement
        reads what it writes."""
        candidates = [get_mode(m) for m in self.profile.modes]
        if group.op_type in self.moves_data and not group.weighted:
            same = [m for m in candidates if m.act_in_bits == bits and m.act_out_bits == bits]
            same.sort(key=lambda m: m.weight_bits != bits)
            return same[0].name if same else None
        weighted = node in self.graph.weighted
        for m in candidates:
            keeps_weights = m.weight_bits == mode.weight_bits or not weighted
            if m.act_in_bits == mode.act_in_bits and m.act_out_bits == bits and keeps_weights:
                return m.name
        return None

    def _refusal(
        self,
        group: Group,
        node: str,
        mode: PrecisionMode,
        bits: int,
        reader: tuple[str, str] | None,
    ) -> UserError:
        wanted = "reads and writes" if group.op_type in self.moves_data else "writes"
        options = [m for m in self.profile.modes if get_mode(m).act_out_bits == bits]
        if reader is None:
            need = f"{node} ({mode.name}) must write {bits} bits"
        else:
            consumer, tensor = reader
            need = (
                f"{consumer} ({self.modes[consumer]}) reads {tensor!r} at {bits} bits, which "
                f"{node} ({mode.name}) writes"
            )
        return UserError(
            f"the assignment cannot be realized on {self.profile.name}: {need}, and no "
            f"{self.profile.name} mode {wanted} {bits} bits with {node}'s weights",
            f"assign {node} one of {', '.join(options) or '(none)'}, or give the reader a "
            f"mode with {mode.act_out_bits}-bit inputs",
        )

    def _set(self, node: str, mode: str, why: str) -> None:
        self.modes[node] = mode
        self.reasons[node] = why

    def _unify(self, group: Group, explicit: set[str]) -> None:
        """A fused group writes one quantizer: members at the default take the mode the
        assignment names for the group; named modes must agree on what that quantizer is
        (float or integer, output bits), though each may describe it from its own node."""
        named = {n: self.modes[n] for n in group.members if n in explicit}
        kinds = {(m.is_float, m.act_out_bits) for m in map(get_mode, named.values())}
        if len(kinds) > 1:
            listed = ", ".join(f"{n} ({m})" for n, m in named.items())
            raise UserError(
                f"the assignment gives {listed}, but {self.profile.name} runs them as one "
                "fused op with one quantizer, which cannot be both",
                "give them one mode",
            )
        if not named or len(group.members) == 1:
            return
        mode = named.get(group.anchor) or next(iter(named.values()))
        ops = "+".join(group.members)
        why = f"{ops} are one op on {self.profile.name} after its fusions: one quantizer"
        for node in group.members:
            if node not in named and self.modes[node] != mode:
                self._set(node, mode, why)

    def _mode(self, group: Group) -> PrecisionMode:
        return get_mode(self.modes[group.anchor])

    def _out_bits(self, key: str) -> int:
        writer = self.graph.groups[key]
        bits = [get_mode(self.modes[n]) for n in writer.members]
        return max((0 if m.is_float else m.act_out_bits or 0) for m in bits)

    def _sources(self, group: Group) -> Iterator[str]:
        for tensor in group.reads:
            source = self.graph.source(tensor)
            if source is not None and source != group.key:
                yield source


def _verify(
    model: ir.Model, assignment: Assignment, profile: TargetProfile, graph: GroupGraph
) -> None:
    """The plan of the closed assignment gives every integer node the bits its mode says; a
    miss is a rule this module lacks, refused rather than exported silently."""
    points = quantization_points(model, assignment, profile)
    for group in graph.groups.values():
        written = _bits(points.activations.get(group.output or ""))
        for node in group.members:
            mode = assignment.mode_for(node)
            if written and not mode.is_float and written != mode.act_out_bits:
                _unrealized(profile, node, mode, f"writes {group.output!r} at {written} bits")
        for tensor, readers in group.reads.items():
            held = _bits(points.activations.get(graph.quantizer_of(tensor)))
            for node in readers:
                mode = assignment.mode_for(node)
                if held and not mode.is_float and held < (mode.act_in_bits or 0):
                    _unrealized(profile, node, mode, f"reads {tensor!r} at {held} bits")


def _bits(fmt: object) -> int:
    return fmt.bits if isinstance(fmt, IntFormat) else 0


def _unrealized(profile: TargetProfile, node: str, mode: PrecisionMode, what: str) -> None:
    raise UserError(
        f"the assignment cannot be realized on {profile.name}: {node} ({mode.name}) {what}",
        "report this with the model (a precision rule quantlens lacks); meanwhile assign the "
        "layer the mode it realizes",
    )
