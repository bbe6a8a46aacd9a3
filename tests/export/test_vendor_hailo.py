"""Hailo model scripts: grammar, round trips, name maps, clipping, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest

from quantlens.calib.stats import CalibrationStats, TensorStats
from quantlens.errors import UserError
from quantlens.export.vendors import ModelIndex, get_format
from quantlens.export.vendors.base import NodeInfo
from quantlens.export.vendors.hailo_script import parse_script
from quantlens.schemes.assignment import Assignment, PatternRule
from quantlens.schemes.formats import int_format
from quantlens.vendor_io import export_vendor, import_vendor, load_name_map
from tests.export.vendor_helpers import context, effective, make_run, model_index, small_model
from tests.models import conv_bn_model

HAILO = get_format("hailo")
# Lines quoted from hailo_model_zoo .alls files (shared/reference/vendor-formats.md 1.4-1.5).
DOCUMENTED = """\
normalization1 = normalization([0.0, 0.0, 0.0], [255.0, 255.0, 255.0])
change_output_activation(conv71, sigmoid)
pre_quantization_optimization(equalization, policy=disabled)
quantization_param(output_layer3, precision_mode=a16_w16)
quantization_param([conv61, conv77, conv91], precision_mode=a16_w16)
quantization_param({conv*}, precision_mode=a16_w16)
quantization_param({conv_feature_splitter[0-9]*_[2-3]}, precision_mode=a8_w8)
quantization_param({conv[0-9]*}, precision_mode=a16_w8_a16, weight_group_size=128, bias_mode=double_scale_initialization)
quantization_param([conv1], weight_group_size=147)
quantization_param([davit_tiny/matmul3], force_range_in=[-200.96, 220.72], force_range_index=0)
quantization_param({*}, max_elementwise_feed_repeat=1)
pre_quantization_optimization(activation_clipping, layers=[conv11], mode=percentile, clipping_values=[0.01, 99.7])
post_quantization_optimization(finetune, policy=enabled, dataset_size=4000, epochs=4, learning_rate=0.0001, train_scales=True,
    batch_size=4, loss_layer_names=[deconv1, conv56], loss_factors=[1.0, 0.25], loss_types=[l2rel, l2rel])
nms_postprocess("../../postprocess_config/nms_config_yolov6n.json", yolox, engine=cpu)
model_optimization_flavor(optimization_level=2, compression_level=0)  # trailing comment
"""  # noqa: E501
YOLO26N = """\
model_optimization_config(calibration, batch_size=8, calibset_size=1024)
model_optimization_flavor(optimization_level=4, compression_level=0)
post_quantization_optimization(adaround, policy=enabled, batch_size=8)
quantization_param([dw1, dw6, dw7, dw8], precision_mode=a16_w16)
quantization_param([conv61, conv77, conv91, conv64, conv80, conv94], precision_mode=a16_w16)
quantization_param([output_layer1, output_layer2, output_layer3], precision_mode=a16_w16)
"""
# The shape every real quantization_param line with a precision mode has.
MODE_LINE = re.compile(
    r"^quantization_param\((\S+|\[\S+(, \S+)*\]|\{\S+\}), precision_mode=a\d+_w\d+(_a\d+)?\)$"
)


def fake_model(*names: str) -> ModelIndex:
    return ModelIndex(nodes=[NodeInfo(n, "Conv", (), (f"{n}_out",)) for n in names])


def test_documented_lines_parse() -> None:
    commands = parse_script(DOCUMENTED, "doc.alls")
    assert [c.name for c in commands][:4] == [
        "normalization",
        "change_output_activation",
        "pre_quantization_optimization",
        "quantization_param",
    ]
    finetune = next(c for c in commands if c.name == "post_quantization_optimization")
    assert finetune.line == 13 and finetune.keywords["loss_factors"] == "[1.0, 0.25]"
    quoted = [line for line in DOCUMENTED.splitlines() if "precision_mode" in line]
    assert all(MODE_LINE.match(line) for line in quoted[:4])


def test_real_script_imports() -> None:
    names = [f"dw{i}" for i in (1, 6, 7, 8)] + [f"conv{i}" for i in (61, 77, 91, 64, 80, 94, 5)]
    model = fake_model(*names, "output_layer1", "output_layer2", "output_layer3")
    got = HAILO.parse(YOLO26N, "yolo26n.alls", model, None)
    assert got.default == "a8_w8" and got.patterns == []
    assert set(got.layers) == set(names[:-1]) | {f"output_layer{i}" for i in (1, 2, 3)}
    assert set(got.layers.values()) == {"a16_w16"}


def test_later_lines_refine_earlier_ones() -> None:
    script = (
        "quantization_param({vit_base/ew_add*}, precision_mode=a16_w16)\n"
        "quantization_param({vit_base/ew_add1}, precision_mode=a8_w8)\n"
        "quantization_param(vit_base/conv3, precision_mode=a16_w8_a16)\n"
        "quantization_param({*}, precision_mode=a8_w4)\n"
        "quantization_param(conv3, precision_mode=a16_w16)\n"
    )
    model = fake_model("ew_add1", "ew_add2", "ew_add10", "conv3", "conv4")
    got = HAILO.parse(script, "vit.alls", model, None)
    modes = {n: got.mode_name(n) for n in model.names}
    assert modes == {
        "ew_add1": "a8_w4",
        "ew_add2": "a8_w4",
        "ew_add10": "a8_w4",
        "conv3": "a16_w16",
        "conv4": "a8_w4",
    }
    got = HAILO.parse("\n".join(script.splitlines()[:3]), "vit.alls", model, None)
    assert got.mode_name("ew_add1") == "a8_w8" and got.mode_name("ew_add10") == "a16_w16"
    assert got.mode_name("conv3") == "a16_w8"  # the three-part spelling of a two-part mode


def test_export_groups_layers_by_mode(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    assignment = Assignment(
        target="hailo8",
        layers={"conv1": "a16_w16", "matmul": "a8_w8_a16", "conv2": "a16_w16"},
    )
    rendered = HAILO.export(context(assignment, model))
    lines = [ln for ln in rendered.texts[".alls"].splitlines() if not ln.startswith("#")]
    assert lines == [
        "quantization_param([conv1, conv2], precision_mode=a16_w16)",
        "quantization_param(matmul, precision_mode=a8_w8_a16)",
    ]
    assert all(MODE_LINE.match(line) for line in lines)
    assert "no name map" in rendered.warnings[0]


@pytest.mark.parametrize("default", ["a8_w8", "a8_w4", "a16_w16"])
def test_round_trip_keeps_default_patterns_and_layers(tmp_path: Path, default: str) -> None:
    model = small_model(tmp_path)
    assignment = Assignment.model_validate(
        {
            "target": "hailo8",
            "default": default,
            "patterns": [
                PatternRule(pattern="conv*", mode="a16_w16").model_dump(),
                PatternRule(pattern="*l*", mode="a8_w8_a16").model_dump(),
            ],
            "layers": {"conv2": "a8_w8", "matmul": "a16_w8"},
        }
    )
    text = HAILO.export(context(assignment, model)).texts[".alls"]
    back = HAILO.parse(text, "x.alls", model_index(model), None)
    assert back.default == assignment.default
    assert back.patterns == assignment.patterns
    assert back.layers == assignment.layers


def test_float_modes_are_dropped_with_a_reason(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    assignment = Assignment(target="hailo8", layers={"conv2": "fp16", "conv1": "a16_w16"})
    rendered = HAILO.export(context(assignment, model))
    assert "conv2" not in rendered.texts[".alls"]
    [dropped] = rendered.dropped
    assert dropped.layer == "conv2" and "no float" in dropped.reason
    back = HAILO.parse(rendered.texts[".alls"], "x.alls", model_index(model), None)
    assert back.layers == {"conv1": "a16_w16"}


HN = {
    "name": "net",
    "net_params": {"output_layers_order": ["net/output_layer1"]},
    "layers": {
        "net/input_layer1": {"type": "input_layer", "original_names": ["x"]},
        "net/conv1": {"type": "conv", "original_names": ["conv1", "relu1"]},
        "net/conv2": {"type": "conv", "original_names": ["conv2"]},
        "net/fc1": {"type": "fc", "original_names": ["matmul", "add"]},
        "net/output_layer1": {"type": "output_layer", "original_names": []},
    },
}


def test_name_map_from_hn_and_round_trip(tmp_path: Path) -> None:
    hn = tmp_path / "net.hn.json"
    hn.write_text(json.dumps(HN))
    assert load_name_map(hn) == {
        "x": "input_layer1",
        "conv1": "conv1",
        "relu1": "conv1",
        "conv2": "conv2",
        "matmul": "fc1",
        "add": "fc1",
    }
    assignment = Assignment(
        target="hailo8",
        patterns=[PatternRule(pattern="conv*", mode="a16_w16")],
        layers={"matmul": "a8_w8_a16", "add": "a8_w8_a16", "relu1": "a16_w16", "shape": "a8_w4"},
    )
    run_dir, model = make_run(tmp_path, "hailo8", Assignment(target="hailo8"))
    run_dir.joinpath("assignment.json").write_text(assignment.to_json())
    result = export_vendor(run_dir, "hailo", tmp_path / "x.alls", name_map=hn)
    text = Path(result.files[0]).read_text()
    assert "quantization_param(fc1, precision_mode=a8_w8_a16)" in text
    assert "quantization_param(conv1" not in text.replace("[conv1, conv2]", "")
    assert [d.layer for d in result.dropped] == ["shape"]
    assert "not in the name map" in result.dropped[0].reason
    back = import_vendor(Path(result.files[0]), "hailo", model, name_map=hn)
    index = model_index(model)
    mapped = [n for n in index.names if n in load_name_map(hn)]
    assert {n: back.mode_name(n) for n in mapped} == {n: assignment.mode_name(n) for n in mapped}


def test_clipping_lines_follow_the_calibration(tmp_path: Path) -> None:
    model = small_model(tmp_path)
    fmt = int_format("uint8-asym")
    stats = CalibrationStats(
        method="percentile",
        settings={"percentile": 99.9},
        samples=4,
        tensors={
            "c2": TensorStats(
                name="c2", format=fmt, numel=9, min=-10, max=10, clip_min=-5, clip_max=5
            ),
            "r1": TensorStats(
                name="r1", format=fmt, numel=9, min=0, max=10, clip_min=0, clip_max=9.99
            ),
            "x": TensorStats(name="x", format=fmt, numel=9, min=-9, max=9, clip_min=-1, clip_max=1),
        },
    )
    ctx = context(Assignment(target="hailo8"), model)
    ctx.calibration = stats
    text = HAILO.export(ctx).texts[".alls"]
    expected = (
        "pre_quantization_optimization(activation_clipping, layers=[conv2], mode=percentile, "
        "clipping_values=[0.05, 99.95])"
    )
    assert text.splitlines()[1:] == [expected]
    stats.method = "mse"
    ctx.calibration = stats
    line = HAILO.export(ctx).texts[".alls"].splitlines()[1]
    assert line.endswith("layers=[conv2], mode=manual, clipping_values=[-5, 5])")
    [command] = parse_script(line, "x.alls")
    assert command.positional == ("activation_clipping",)


def test_run_folder_calibration_becomes_manual_clipping(tmp_path: Path) -> None:
    run_dir, model = make_run(tmp_path, "hailo8", Assignment(layers={"conv2": "a16_w16"}))
    # An MSE calibration is slow to run here; narrowing the stored ranges has the same effect.
    stats = CalibrationStats.load(run_dir / "calibration.json")
    stats.method = "mse"
    for entry in stats.tensors.values():
        entry.clip_min, entry.clip_max = entry.min * 0.5, entry.max * 0.5
    stats.save(run_dir / "calibration.json")
    result = export_vendor(run_dir, "hailo")
    assert result.files[0].endswith("model.alls")
    text = Path(result.files[0]).read_text()
    clipped = [line for line in text.splitlines() if "activation_clipping" in line]
    # One clipping per Hailo layer, named by its head: conv1+relu1 clips r1, matmul+add clips y.
    producers = {"r1": "conv1", "c2": "conv2", "y": "matmul", "flat": "reshape"}
    # The emulation quantizes a Hailo layer once, at its output: nothing inside it is calibrated.
    assert set(stats.tensors) >= {"r1", "c2", "y"}
    assert not {"bn1", "mm"} & set(stats.tensors)
    written: dict[str, tuple[float, float]] = {}
    for line in clipped:
        match = re.search(
            r"layers=\[(.*)\], mode=manual, clipping_values=\[(\S+), (\S+)\]\)$", line
        )
        assert match is not None
        for layer in match.group(1).split(", "):
            written[layer] = (float(match.group(2)), float(match.group(3)))
    assert set(written) == {producers[t] for t in set(producers) & set(stats.tensors)}
    assert "relu1" not in written and "add" not in written
    for tensor in set(producers) & set(stats.tensors):
        entry = stats.tensors[tensor]
        low, high = written[producers[tensor]]
        assert low == pytest.approx(entry.clip_min, rel=1e-6, abs=1e-9)
        assert high == pytest.approx(entry.clip_max, rel=1e-6)
    back = import_vendor(Path(result.files[0]), "hailo", model)
    # conv2 with what hailo8's rules drag along (#17): its producer layer (conv1+relu1) writes
    # 16 bits and the Reshape after it outputs the 16 bits it receives.
    assert back.layers == {
        "conv1": "a8_w8_a16",
        "relu1": "a8_w8_a16",
        "conv2": "a16_w16",
        "reshape": "a16_w16",
    }


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        ("# ok\nquantization_param(conv3, precision_mode=a16_w16)\n", "x.alls:2: layer 'conv3'"),
        ("quantization_param(conv1, precision_mode=a12_w3)\n", "unknown precision mode 'a12_w3'"),
        ("quantization_param(conv1, precision_mode=a16_w16_a8)\n", "no quantlens equivalent"),
        ("\n\nthis is not a command\n", "x.alls:3: malformed"),
        ("quantization_param([conv1, precision_mode=a16_w16)\n", "x.alls:1: unclosed"),
        ("quantization_param({nothing*}, precision_mode=a16_w16)\n", "matches no layer"),
        ("quantization_param(conv 1, precision_mode=a16_w16)\n", "x.alls:1: cannot read"),
    ],
)
def test_bad_scripts_are_one_user_error(tmp_path: Path, script: str, needle: str) -> None:
    file = tmp_path / "x.alls"
    file.write_text(script)
    with pytest.raises(UserError) as err:
        import_vendor(file, "hailo", small_model(tmp_path))
    assert needle in str(err.value)
    if "conv3" in script:
        assert "did you mean conv" in str(err.value)


@pytest.mark.zoo
def test_zoo_orientation_round_trip(tmp_path: Path) -> None:
    from quantlens.data import zoo
    from quantlens.data.render import write_samples
    from quantlens.quantize import QuantizeOptions, quantize_model

    images = write_samples("rotated-pages", 2, tmp_path / "pages", seed=3)
    assignment = Assignment(target="hailo8", layers={"Conv.30": "a16_w16", "Conv.29": "a8_w8_a16"})
    model = zoo.fetch("pplcnet-orientation")
    quantize_model(
        model,
        QuantizeOptions(
            calib=images,
            target="hailo8",
            run_dir=tmp_path / "run",
            assignment=assignment.save(tmp_path / "a.json"),
        ),
    )
    for fmt in ("hailo", "qnn"):
        result = export_vendor(tmp_path / "run", fmt, model=model)
        assert Path(result.files[0]).exists()
    back = import_vendor(tmp_path / "run" / "model.alls", "hailo", model)
    index = model_index(model)
    # The run's assignment: the given one closed under hailo8's rules (#17).
    closed = Assignment.load(tmp_path / "run" / "assignment.json")
    assert closed.layers.items() >= assignment.layers.items()
    assert effective(back, index) == effective(closed, index)


def dfc_like_hn(model: onnx.ModelProto, net: str = "net") -> dict[str, object]:
    """An HN shaped like the DFC's parse of `model` (vendor-formats.md 1.7): one layer per
    weighted node with the BatchNorm and activation after it in `original_names`, numbered per
    type; the other nodes are layers of their own. Built from the original graph, not ours."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)
    merged, layers, counts = set(), {}, {}
    for node in model.graph.node:
        if node.name in merged or node.op_type == "Constant":
            continue
        names, tensor = [node.name], node.output[0]
        while node.op_type in ("Conv", "MatMul", "Gemm") and len(readers.get(tensor, [])) == 1:
            nxt = readers[tensor][0]
            if nxt.op_type not in ("BatchNormalization", "Relu", "HardSwish", "HardSigmoid"):
                break
            names.append(nxt.name)
            merged.add(nxt.name)
            tensor = nxt.output[0]
        kind = {"Conv": "conv", "MatMul": "fc"}.get(node.op_type, node.op_type.lower())
        counts[kind] = counts.get(kind, 0) + 1
        layers[f"{net}/{kind}{counts[kind]}"] = {"type": kind, "original_names": names}
    return {"name": net, "layers": layers}


def test_merged_layers_clip_once_and_import_names_canonical_nodes(tmp_path: Path) -> None:
    """A Conv+BN+Relu is one Hailo layer: its clipping is written once, and a script naming it
    imports onto nodes our canonical model has (the BatchNorm resolves to its Conv)."""
    run_dir, model = make_run(tmp_path, "hailo8", Assignment(target="hailo8"))
    hn = tmp_path / "net.hn.json"
    hn.write_text(json.dumps(dfc_like_hn(onnx.load(model))))
    assert load_name_map(hn)["bn1"] == "conv1" == load_name_map(hn)["relu1"]
    stats = CalibrationStats.load(run_dir / "calibration.json")
    for entry in stats.tensors.values():  # every range clipped, so every layer would be listed
        entry.min, entry.max = entry.clip_min - 10.0, entry.clip_max + 10.0
    stats.save(run_dir / "calibration.json")
    result = export_vendor(run_dir, "hailo", tmp_path / "x.alls", name_map=hn)
    clipped = [
        name.strip()
        for line in Path(result.files[0]).read_text().splitlines()
        if "activation_clipping" in line
        for name in line.split("layers=[")[1].split("]")[0].split(",")
    ]
    assert clipped and len(clipped) == len(set(clipped)), clipped
    assert "conv1" in clipped
    script = tmp_path / "mixed.alls"
    script.write_text("quantization_param([conv1], precision_mode=a16_w16)\n")
    back = import_vendor(script, "hailo", model, name_map=hn)
    index = model_index(model)
    assert set(back.layers) <= set(index.names), back.layers
    assert back.layers == {"conv1": "a16_w16", "relu1": "a16_w16"}


def test_onnx_names_no_script_line_takes_are_dropped_not_written(tmp_path: Path) -> None:
    # ONNX exporters name nodes `/model.0/conv/Conv`: a model-script line with one is refused
    # by the DFC's parser, so without a name map the entry is dropped, saying to pass one.
    proto = conv_bn_model(unnamed=False)
    proto.graph.node[0].name = "/model.0/conv/Conv"
    model = tmp_path / "slashed.onnx"
    onnx.save(proto, model)
    ctx = context(Assignment(layers={"/model.0/conv/Conv": "a16_w16"}), model)
    rendered = HAILO.export(ctx)
    assert "/model.0" not in rendered.texts[".alls"]
    assert [d.layer for d in rendered.dropped] == ["/model.0/conv/Conv"]
    assert "--name-map" in rendered.dropped[0].reason
