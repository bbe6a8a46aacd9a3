"""Run AIMET-ONNX's CLE or AdaRound, then w8a8 quantsim, on an ONNX model (for optimize_levels.py).

Runs in AIMET's own virtual environment (a peer, not a dependency), on ONNX Runtime CPU:
    AIMET_PYTHON _aimet_fixes.py {cle,adaround} MODEL CALIB_DIR OUTPUT [--adaround-iterations N]
CALIB_DIR holds .npz files keyed by input name, the same tensors quantlens and ONNX Runtime get.
One JSON line on stdout reports the seconds of the technique and of the whole run; AIMET's own
logging goes to stderr.

Steps. cle: `aimet_onnx.cross_layer_equalization.equalize_model` (BatchNorm folded into the
convolutions, ReLU6 -> ReLU, cross-layer scaling, high-bias fold); the report gives `cls_sets`,
how many layer sets the scaling found (it only crosses ReLU or no activation, not HardSwish,
GELU or SiLU). adaround: stride-1 Conv `auto_pad` SAME_* rewritten as the equal `pads` (AIMET's
AdaRound ignores `auto_pad`; the count is reported as `explicit_pads`), BatchNorm folded
(`fold_all_batch_norms_to_weight`, as AIMET's AdaRound recipe asks), then
`aimet_onnx.apply_adaround(sim, calib, num_iterations=N)`: per layer, rounding learned on the
calibration tensors, weight encodings then frozen; `changed_roundings` is the share of those
weights rounded otherwise than to nearest. AIMET recommends 10000 iterations; the default here is
ADAROUND_ITERATIONS (20) to keep the run short, and on CPU much of AdaRound's time is the
per-layer sampling of activations (two sessions built and every calibration sample run per layer),
which does not shrink with N. Both: `QuantizationSimModel` with AIMET's defaults, activation
encodings from the calibration tensors (`compute_encodings`), and `sim.to_onnx_qdq()`: standard
QuantizeLinear/DequantizeLinear pairs (float weights with a Q/DQ pair; opset raised to 13 where
per-channel axes need it), which plain ONNX Runtime runs.

AIMET's default quantsim (aimet-onnx 2.42: `config_file=None` -> default_config_per_channel.json,
`quant_scheme=min_max`, `param_type=activation_type=int8`): weights int8 *symmetric per-channel*
for Conv, ConvTranspose, Gemm, MatMul and PRelu (per-tensor symmetric for other parameters; not
strict-symmetric, so -128..127); biases not quantized (kept float); activations 8-bit asymmetric
min/max per tensor, exported as uint8 (an activation feeding MatMul's weight input gets a symmetric
encoding); the model input and every op output quantized except inside the Conv+Relu, Conv+Clip,
Add+Relu, Gemm+Relu and MatMul+Add supergroups. This is AIMET's own scheme, not quantlens'
`hailo8` (per-tensor int8 weights, uint8 activations): per-channel weights favour AIMET, as
NNCF's row uses NNCF's own defaults.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from aimet_onnx import apply_adaround
from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
from aimet_onnx.cross_layer_equalization import (
    CrossLayerScaling,
    equalize_model,
    replace_relu6_with_relu,
)
from aimet_onnx.quantsim import QuantizationSimModel
from onnx import numpy_helper
from onnxruntime.quantization.onnx_quantizer import ONNXModel

ADAROUND_ITERATIONS = 20  # per layer: pplcnet, ppocr 2-6 minutes on 2 busy cores; yolov8 more
Feed = dict[str, np.ndarray]
Prepared = tuple[QuantizationSimModel, dict[str, object]]  # the sim and what to report


def _quantsim(model: onnx.ModelProto, calib: list[Feed]) -> QuantizationSimModel:
    return QuantizationSimModel(model, dummy_input=calib[0], providers=["CPUExecutionProvider"])


def _batchnorms(model: onnx.ModelProto) -> int:
    return sum(node.op_type == "BatchNormalization" for node in model.graph.node)


def _cls_sets(model: onnx.ModelProto) -> int:
    """How many layer sets CLE's scaling will equalize, counted on a copy as equalize_model does."""
    probe = copy.deepcopy(model)
    fold_all_batch_norms_to_weight(probe)
    replace_relu6_with_relu(ONNXModel(probe))
    return len(CrossLayerScaling(probe).scale_model())


def _cle(model: onnx.ModelProto, calib: list[Feed], _: argparse.Namespace) -> Prepared:
    info: dict[str, object] = {"cls_sets": _cls_sets(model), "batchnorms": _batchnorms(model)}
    start = time.perf_counter()
    equalize_model(model)  # in place: BatchNorm fold, ReLU6 -> ReLU, scaling, high-bias fold
    info["technique_seconds"] = round(time.perf_counter() - start, 1)
    info["batchnorms_left"] = _batchnorms(model)
    return _quantsim(model, calib), info


def _same_pads(node: onnx.NodeProto) -> list[int] | None:
    """Explicit pads equal to a Conv's auto_pad SAME_* when its strides are 1 (any input size)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    mode, kernel = attrs.get("auto_pad", b"NOTSET"), attrs.get("kernel_shape")
    if mode not in (b"SAME_UPPER", b"SAME_LOWER") or kernel is None:
        return None
    if any(stride != 1 for stride in attrs.get("strides", [1] * len(kernel))):
        return None
    totals = [d * (k - 1) for k, d in zip(kernel, attrs.get("dilations", [1] * len(kernel)))]
    small, large = [t // 2 for t in totals], [t - t // 2 for t in totals]
    return small + large if mode == b"SAME_UPPER" else large + small  # UPPER: extra at the end


def _explicit_pads(model: onnx.ModelProto) -> int:
    """Rewrite stride-1 Conv auto_pad SAME_* as the equal `pads`; returns how many.

    AIMET 2.42's AdaRound reads a Conv's `pads` but not its `auto_pad`, so its torch replica of
    such a layer pads nothing and stops on a shape mismatch (ppocr's 2x2 SAME_UPPER convs).
    """
    count = 0
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        pads = _same_pads(node)
        if pads is not None:
            kept = [a for a in node.attribute if a.name != "auto_pad"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("pads", pads)])
            count += 1
    return count


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _changed_roundings(sim: QuantizationSimModel, before: dict[str, np.ndarray]) -> float:
    """Share of the weights AdaRound changed that it rounded otherwise than to nearest."""
    after = _weights(sim.model.model)
    changed = total = 0
    for name in sim.param_names:
        quantizer = sim.qc_quantize_op_dict[name]
        encoding = quantizer.export_encodings("2.0.0") if quantizer.enabled else None
        if not encoding or name not in before or name not in after:
            continue
        if np.array_equal(after[name], before[name]):
            continue  # not a weight AdaRound rounded
        scale = np.asarray(encoding["y_scale"], np.float32)
        if encoding.get("axis") is not None:
            shape = [1] * after[name].ndim
            shape[encoding["axis"]] = -1
            scale = scale.reshape(shape)
        nearest = np.round(before[name] / scale)
        changed += int(np.count_nonzero(np.round(after[name] / scale) != nearest))
        total += after[name].size
    return round(changed / max(total, 1), 5)


def _adaround(model: onnx.ModelProto, calib: list[Feed], args: argparse.Namespace) -> Prepared:
    info: dict[str, object] = {"explicit_pads": _explicit_pads(model)}
    fold_all_batch_norms_to_weight(model)
    folded = _weights(model)  # copies: the sim edits the graph in place
    sim = _quantsim(model, calib)
    start = time.perf_counter()
    apply_adaround(sim, calib, num_iterations=args.adaround_iterations)
    info["technique_seconds"] = round(time.perf_counter() - start, 1)
    info["iterations"] = args.adaround_iterations
    return sim, {**info, "changed_roundings": _changed_roundings(sim, folded)}


TECHNIQUES = {"cle": _cle, "adaround": _adaround}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("technique", choices=sorted(TECHNIQUES))
    parser.add_argument("model", type=Path)
    parser.add_argument("calib", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--adaround-iterations", type=int, default=ADAROUND_ITERATIONS)
    args = parser.parse_args()
    report = os.fdopen(os.dup(1), "w", buffering=1)  # fd 1 then points at stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    start = time.perf_counter()
    model = onnx.load(str(args.model))
    calib = [dict(np.load(f)) for f in sorted(args.calib.glob("*.npz"))]
    sim, info = TECHNIQUES[args.technique](model, calib, args)
    sim.compute_encodings(calib)
    onnx.save(sim.to_onnx_qdq(), str(args.output))
    total = round(time.perf_counter() - start, 1)
    report.write(json.dumps({**info, "total_seconds": total}) + "\n")


if __name__ == "__main__":
    main()
