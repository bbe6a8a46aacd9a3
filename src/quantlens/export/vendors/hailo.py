"""Hailo model script (.alls): `quantization_param` precision modes and activation clipping.

Export writes, in this order, so that the DFC's "later lines refine earlier ones" reproduces
the Assignment's "exact name, then first matching pattern, then default": the default as
`{*}`, the patterns last-to-first as globs, then the exact layers grouped by mode. The DFC
renames layers (conv1, conv2, ..., output_layer1), so a name map (ONNX node -> Hailo layer)
translates; without one, ONNX names are written and a warning says the DFC will not know them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

from quantlens.calib.stats import CalibrationStats, TensorStats
from quantlens.errors import UserError
from quantlens.export.vendors.base import (
    Dropped,
    ExportContext,
    ModelIndex,
    Rendered,
    register,
    unknown_name_error,
)
from quantlens.export.vendors.hailo_script import Command, Target, parse_script, parse_targets
from quantlens.ir.vendors.hailo_layers import layer_outputs, resolve_original
from quantlens.schemes.assignment import Assignment, PatternRule

HAILO_DEFAULT = "a8_w8"
# Our modes the DFC accepts under the same name (a16_w8 needs DFC 5.x: vendor-formats.md 1.3).
EXPORTABLE = ("a8_w8", "a8_w4", "a16_w16", "a16_w8", "a8_w8_a16")
# Three-part spellings of two-part modes (same bits in and out).
ALIASES = {
    "a8_w8_a8": "a8_w8",
    "a16_w16_a16": "a16_w16",
    "a16_w8_a16": "a16_w8",
    "a8_w4_a8": "a8_w4",
}
# DFC modes (5.3 enum) that quantlens cannot emulate: importing one is an error, not a guess.
UNSUPPORTED = (
    "a16_w4",
    "a8_w4_exp",
    "a16_w16_non_zero",
    "native",
    "a8_w4_a16",
    "a16_w16_a8",
    "a16_w8_a8",
    "a16_w4_a16",
    "a16_w4_a8",
)
# Clipping that moves a range end by less than this fraction of the observed span is noise
# from the percentile observer, not a decision worth a script line.
MIN_CLIP_FRACTION = 0.01
CLIPPING_METHODS = ("percentile", "mse", "entropy")
LINE_NAMES = 12
# A layer name a model-script line can carry (vendor-formats.md 1.4): the DFC's own are
# `conv12` or `net/conv12`. ONNX names such as `/model.0/conv/Conv` fit no script line (and the
# DFC would not know them anyway), so they are dropped rather than written.
_SCRIPT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")


@register
class HailoFormat:
    name: str = "hailo"
    description: str = "Hailo model script (.alls) for the Dataflow Compiler"
    suffixes: tuple[str, ...] = (".alls",)
    targets: tuple[str, ...] = ("hailo8", "hailo8l", "hailo10h")
    default_target: str = "hailo8"

    def export(self, ctx: ExportContext) -> Rendered:
        out = Rendered(texts={}, entries=0)
        rename = _Renamer(ctx.name_map, ctx.model, out)
        lines = [
            f"# quantlens precision modes for {ctx.plan.target} (hailo optimize --model-script)"
        ]
        lines += _default_lines(ctx.assignment.default, out)
        if ctx.name_map is None:
            lines += _pattern_lines(ctx.assignment.patterns, out)
            lines += _layer_lines(ctx.assignment.layers, rename, out)
        else:
            # Globs cannot be renamed: under a name map, patterns become exact layers.
            lines += _layer_lines({**_expand_patterns(ctx), **ctx.assignment.layers}, rename, out)
        if ctx.calibration is not None:
            lines += _clipping_lines(ctx.calibration, ctx.model, rename, out)
        rename.finish()
        out.texts[".alls"] = "\n".join(lines) + "\n"
        out.usage = "hailo optimize model.har --model-script FILE (or runner.load_model_script)"
        return out

    def parse(
        self, text: str, source: str, model: ModelIndex, name_map: Mapping[str, str] | None
    ) -> Assignment:
        builder = _Builder(model, name_map, source)
        for command in parse_script(text, source):
            if command.name == "quantization_param" and "precision_mode" in command.keywords:
                builder.apply(command)
        return builder.result(self.default_target)


def name_map_from_hn(hn: Mapping[str, object]) -> dict[str, str]:
    """ONNX node name -> Hailo layer name from a HAR's HN JSON (`layers.*.original_names`)."""
    layers = hn.get("layers")
    if not isinstance(layers, dict):
        raise UserError("the HN JSON has no 'layers' object", "pass runner.get_hn() output")
    mapping: dict[str, str] = {}
    for scoped, layer in layers.items():
        short = str(scoped).split("/", 1)[-1]
        for original in layer.get("original_names", []) if isinstance(layer, dict) else []:
            mapping.setdefault(str(original), short)
    return mapping


class _Renamer:
    """ONNX node name -> the name written in the script, recording what cannot be written."""

    def __init__(self, name_map: Mapping[str, str] | None, model: ModelIndex, out: Rendered):
        self.name_map, self.model, self.out = name_map, model, out
        self.fallbacks = 0

    def __call__(self, layer: str, mode: str) -> str | None:
        name = self.name_map.get(layer) if self.name_map is not None else layer
        if name is None:
            reason = "not in the name map: the DFC fused or removed it, or the map is stale"
            self.out.dropped.append(Dropped(layer=layer, mode=mode, reason=reason))
            return None
        if not _SCRIPT_NAME.fullmatch(name):
            reason = "its name fits no model-script line; pass --name-map with the DFC's names"
            self.out.dropped.append(Dropped(layer=layer, mode=mode, reason=reason))
            return None
        self.fallbacks += self.name_map is None
        return name

    def finish(self) -> None:
        if self.name_map is None and self.fallbacks:
            self.out.warnings.append(
                f"no name map: {self.fallbacks} layer(s) written with ONNX node names, which the "
                "DFC renames (conv1, conv2, ...); see docs/hailo-name-map.md"
            )


def _mode_line(targets: list[str], mode: str) -> str:
    joined = targets[0] if len(targets) == 1 else f"[{', '.join(targets)}]"
    return f"quantization_param({joined}, precision_mode={mode})"


def _unexportable(layer: str, mode: str) -> Dropped:
    if mode in ("fp16", "bf16", "fp32"):
        reason = "Hailo has no float execution; a16_w16 is the closest mode"
    else:
        reason = f"the DFC has no precision mode {mode}"
    return Dropped(layer=layer, mode=mode, reason=reason)


def _default_lines(default: str, out: Rendered) -> list[str]:
    if default == HAILO_DEFAULT:
        return []
    if default not in EXPORTABLE:
        out.dropped.append(_unexportable("(default)", default))
        return []
    out.entries += 1
    return [_mode_line(["{*}"], default)]


def _pattern_lines(patterns: list[PatternRule], out: Rendered) -> list[str]:
    lines = []
    for rule in reversed(patterns):
        if rule.mode not in EXPORTABLE:
            out.dropped.append(_unexportable(rule.pattern, rule.mode))
            continue
        out.entries += 1
        lines.append(_mode_line([f"{{{rule.pattern}}}"], rule.mode))
    return lines


def _expand_patterns(ctx: ExportContext) -> dict[str, str]:
    assignment = ctx.assignment
    expanded: dict[str, str] = {}
    for name in ctx.model.names:
        if name in assignment.layers:
            continue
        rule = next((r for r in assignment.patterns if fnmatch.fnmatchcase(name, r.pattern)), None)
        if rule is not None and rule.mode != assignment.default:
            expanded[name] = rule.mode
    return expanded


def _layer_lines(layers: Mapping[str, str], rename: _Renamer, out: Rendered) -> list[str]:
    chosen: dict[str, tuple[str, str]] = {}  # hailo name -> (onnx layer, mode)
    for layer, mode in layers.items():
        if mode not in EXPORTABLE:
            out.dropped.append(_unexportable(layer, mode))
            continue
        name = rename(layer, mode)
        if name is None:
            continue
        if name in chosen and chosen[name][1] != mode:
            # Nodes fused into one Hailo layer share its mode; the first one asked wins.
            first, kept = chosen[name]
            reason = f"fused with {first} into {name}, which keeps {kept}"
            out.dropped.append(Dropped(layer=layer, mode=mode, reason=reason))
            continue
        chosen.setdefault(name, (layer, mode))
    by_mode: dict[str, list[str]] = {}
    for name, (_, mode) in chosen.items():
        by_mode.setdefault(mode, []).append(name)
    out.entries += len(chosen)
    lines = []
    for mode, names in by_mode.items():
        for start in range(0, len(names), LINE_NAMES):
            lines.append(_mode_line(names[start : start + LINE_NAMES], mode))
    return lines


def _clipping_lines(
    stats: CalibrationStats, model: ModelIndex, rename: _Renamer, out: Rendered
) -> list[str]:
    """One clipping per Hailo layer, from the range of the layer's output: a tensor inside a
    merged layer (a Conv's output before its activation) is never quantized on the chip."""
    if stats.method not in CLIPPING_METHODS:
        return []
    owners = layer_outputs(model)
    by_values: dict[str, list[str]] = {}
    named: set[str] = set()
    for tensor, entry in stats.tensors.items():
        layer = owners.get(tensor)
        if layer is None or not _clipped(entry):
            continue
        name = rename(layer, "clipping")
        if name is not None and name not in named:
            named.add(name)
            by_values.setdefault(_clipping_args(stats, entry), []).append(name)
    return [
        f"pre_quantization_optimization(activation_clipping, layers=[{', '.join(names)}], {args})"
        for args, names in by_values.items()
    ]


def _clipped(entry: TensorStats) -> bool:
    span = max(entry.max - entry.min, 1e-12)
    cut = max(entry.clip_min - entry.min, entry.max - entry.clip_max)
    return cut > MIN_CLIP_FRACTION * span


def _clipping_args(stats: CalibrationStats, entry: TensorStats) -> str:
    """Percentile calibration maps onto the DFC's percentile mode (recomputed on its data);
    MSE and entropy ranges have no DFC equivalent, so their clip range is written as manual."""
    if stats.method == "percentile":
        keep = float(stats.settings.get("percentile", 99.999))
        # Our percentile observer splits the cut between both tails only for signed data.
        low = (100.0 - keep) / 2 if entry.min < 0 < entry.max else 0.0
        high = 100.0 - low if low else keep
        return f"mode=percentile, clipping_values=[{low:g}, {high:g}]"
    return f"mode=manual, clipping_values=[{entry.clip_min:.7g}, {entry.clip_max:.7g}]"


class _Builder:
    """Replays `quantization_param` lines ("later lines win") into an Assignment."""

    def __init__(self, model: ModelIndex, name_map: Mapping[str, str] | None, source: str):
        self.known = model.names
        self.source = source
        self.inverse = _invert(name_map, model) if name_map is not None else None
        self.default = HAILO_DEFAULT
        self.patterns: list[PatternRule] = []
        self.layers: dict[str, str] = {}

    def apply(self, command: Command) -> None:
        mode = _import_mode(command.keywords["precision_mode"], self.source, command.line)
        if not command.positional:
            raise UserError(
                f"{self.source}:{command.line}: quantization_param without a layer argument",
                "name the layer first: quantization_param(conv3, precision_mode=a16_w16)",
            )
        for target in parse_targets(command.positional[0], self.source, command.line):
            self._apply_target(target, mode, command.line)

    def _apply_target(self, target: Target, mode: str, line: int) -> None:
        if target.is_glob and target.text in ("*", "*/*"):
            self.default, self.patterns, self.layers = mode, [], {}
        elif target.is_glob and self.inverse is not None:
            # Map keys may be scoped (net/conv1) or bare (conv1), like the glob itself.
            pattern = _unscope(target.text)
            matched = [h for h in self.inverse if fnmatch.fnmatchcase(_unscope(h), pattern)]
            if not matched:
                raise UserError(
                    f"{self.source}:{line}: the glob {{{target.text}}} matches no mapped layer",
                    "check the glob against the name map",
                )
            for hailo in matched:
                self.layers.update(dict.fromkeys(self.inverse[hailo], mode))
        elif target.is_glob:
            self._apply_glob(_unscope(target.text), mode, line)
        else:
            self.layers.update(dict.fromkeys(self._resolve(target.text, line), mode))

    def _apply_glob(self, pattern: str, mode: str, line: int) -> None:
        if not fnmatch.filter(self.known, pattern):
            raise UserError(
                f"{self.source}:{line}: the glob {{{pattern}}} matches no layer of the model",
                "with Hailo layer names (conv1, ...) pass the name map",
            )
        self.layers = {k: v for k, v in self.layers.items() if not fnmatch.fnmatchcase(k, pattern)}
        kept = [rule for rule in self.patterns if rule.pattern != pattern]
        self.patterns = [PatternRule(pattern=pattern, mode=mode), *kept]  # type: ignore[arg-type]

    def _resolve(self, name: str, line: int) -> list[str]:
        if self.inverse is not None:
            candidates: Iterable[str] = self.inverse
            found = self.inverse.get(name) or self.inverse.get(_unscope(name))
        else:
            candidates = self.known
            found = [n for n in (name, _unscope(name)) if n in self.known][:1]
        if not found:
            raise unknown_name_error("layer", name, candidates, f"{self.source}:{line}")
        return found

    def result(self, target: str) -> Assignment:
        return Assignment.model_validate(
            {
                "target": target,
                "default": self.default,
                "patterns": [rule.model_dump() for rule in self.patterns],
                "layers": self.layers,
            }
        )


def _import_mode(value: str, source: str, line: int) -> str:
    mode = ALIASES.get(value.strip(), value.strip())
    if mode in EXPORTABLE:
        return mode
    if mode in UNSUPPORTED:
        raise UserError(
            f"{source}:{line}: Hailo precision mode {mode} has no quantlens equivalent",
            f"quantlens models {', '.join(EXPORTABLE)}",
        )
    raise UserError(
        f"{source}:{line}: unknown precision mode {mode!r}", f"use one of: {', '.join(EXPORTABLE)}"
    )


def _unscope(name: str) -> str:
    """`net/conv3` -> `conv3`: scoped names carry the network name the DFC prefixes."""
    return name.split("/", 1)[1] if "/" in name and not name.startswith("/") else name


def _invert(name_map: Mapping[str, str], model: ModelIndex) -> dict[str, list[str]]:
    """Hailo layer -> the canonical model's nodes it was made from. A map from the DFC's parse
    names the original graph (BatchNorm nodes, Identities); those resolve to the node that
    absorbed them or drop out, so an imported assignment only names nodes `quantize` knows."""
    originals: dict[str, list[str]] = {}
    for onnx_name, hailo in name_map.items():
        originals.setdefault(hailo, []).append(onnx_name)
    resolved = {hailo: resolve_original(model, names) for hailo, names in originals.items()}
    return {hailo: names for hailo, names in resolved.items() if names}
