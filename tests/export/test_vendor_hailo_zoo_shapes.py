"""Our .alls importer reads scripts shaped like the public Hailo model zoo's.

The lines below follow the shapes seen in hailo_model_zoo/cfg/alls/generic/*.alls (checked
2026-11): normalization assignments, optimization and allocator commands, scoped globs
`{net/ew_add*}`, format conversions, and multi-name assignments from `defuse`. Only
`quantization_param` lines set modes; every other command must be read and ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from quantlens.vendor_io import import_vendor
from tests.models import conv_bn_model

SCRIPT = """\
normalization1 = normalization([0.0, 0.0, 0.0], [255.0, 255.0, 255.0])
pre_quantization_optimization(matmul_equalization, layers={*}, policy=disabled)
model_optimization_flavor(optimization_level=2, compression_level=0)
model_optimization_config(calibration, batch_size=8, calibset_size=512)
pre_quantization_optimization(ew_add_fusing, policy=disabled)
quantization_param({net/conv*}, precision_mode=a16_w16)
quantization_param([net/conv2], precision_mode=a8_w8)  # later lines win
allocator_param(enable_auto_spatial_reshapes=False)
reshape1 = format_conversion(conv1, conv2, spatial_reshape, 5, 8)
pool_a, pool_b = defuse(avgpool1, 2, defuse_type=SUPER_DW)
nms_postprocess("cfg/nms.json", meta_arch=yolov8, engine=cpu)
post_quantization_optimization(finetune, policy=enabled, learning_rate=0.0001, epochs=8)
"""


def test_zoo_shaped_script_imports(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(unnamed=False), model)
    script = tmp_path / "m.alls"
    script.write_text(SCRIPT)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"conv1": "net/conv1", "conv2": "net/conv2", "matmul": "net/fc1"}))
    assignment = import_vendor(script, "hailo", model, name_map=names)
    assert assignment.layers == {"conv1": "a16_w16", "conv2": "a8_w8"}
    assert assignment.default == "a8_w8"
