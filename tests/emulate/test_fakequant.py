"""Fake quantization is bit-exact with ONNX Runtime's QuantizeLinear -> DequantizeLinear.

Every grid the profiles use (and a few more) is checked per tensor and per channel along several
axes, on inputs built to hit the edge cases: exact .5 ties (round half to even), values far
outside the range (saturation), signed zeros, and random data.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from quantlens.emulate.fakequant import fake_quantize, quantize_to_int
from quantlens.schemes.formats import IntFormat, int_format

SHAPE = (3, 4, 64)
# ONNX element types of each grid's codes.
_ONNX_TYPES = {
    "int4": TensorProto.INT4,
    "uint4": TensorProto.UINT4,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "uint16": TensorProto.UINT16,
    "int32": TensorProto.INT32,
}
FORMATS = [
    int_format("uint8-asym"),
    int_format("int8-sym"),
    int_format("int8-sym", narrow=True),
    int_format("int8-asym"),
    int_format("uint16-asym"),
    int_format("int16-sym"),
    int_format("int16-sym", narrow=True),
    int_format("int4-sym"),
    int_format("int4-sym", narrow=True),
    int_format("uint4-asym"),
]
# (axis or None, scales): power-of-two scales make exact ties; 0.1-like ones test the division.
SCALE_CASES = [
    (None, [0.25]),
    (None, [0.1]),
    (None, [3.0517578125e-05]),
    (0, [0.5, 0.1, 0.0625]),
    (1, [0.125, 0.3, 1e-3, 2.0]),
    (-1, list(np.linspace(0.01, 0.5, SHAPE[-1]))),
]


def _zero_points(fmt: IntFormat, count: int, rng: np.random.Generator) -> np.ndarray:
    if fmt.symmetric and fmt.signed:
        return np.zeros(count, np.int64)
    return rng.integers(fmt.qmin, fmt.qmax + 1, count).astype(np.int64)


def _inputs(scale: np.ndarray, zero: np.ndarray, fmt: IntFormat, axis: int | None) -> np.ndarray:
    """Ties, saturation, zeros and random values, each relative to the grid of its channel."""
    rng = np.random.default_rng(7)
    shape = [1] * len(SHAPE)
    if axis is not None:
        shape[axis] = -1
    s, z = scale.reshape(shape), zero.reshape(shape)
    codes = rng.integers(fmt.qmin - 3, fmt.qmax + 4, SHAPE)
    ties = ((codes - z) + 0.5) * s
    far = np.sign(rng.standard_normal(SHAPE)) * 10.0 ** rng.uniform(0, 30, SHAPE)
    noise = rng.standard_normal(SHAPE) * s * (fmt.qmax - fmt.qmin) / 4
    zeros = np.where(rng.random(SHAPE) < 0.5, 0.0, -0.0)
    pick = rng.integers(0, 4, SHAPE)
    values = np.choose(pick, [ties, far, noise, zeros])
    return values.astype(np.float32)


def _qdq_model(
    fmt: IntFormat, scale: np.ndarray, zero: np.ndarray, axis: int | None, domain: str
) -> bytes:
    """x -> [Max(narrow floor)] -> Q -> DQ -> y, with the codes (as int32) as a second output.

    QuantizeLinear saturates at the full grid; a narrow grid's lowest code is reached by first
    raising x to that code's value, which is exact since (qmin - zp) * s / s rounds back to it.
    """
    per_channel = axis is not None
    dims = [len(scale)] if per_channel else []
    qtype = _ONNX_TYPES[fmt.onnx_type]
    inits = [
        helper.make_tensor("s", TensorProto.FLOAT, dims, scale.astype(np.float32).tolist()),
        helper.make_tensor("z", qtype, dims, zero.tolist()),
    ]
    attrs = {"axis": axis} if per_channel else {}
    nodes = []
    source = "x"
    if fmt.narrow:
        floor_shape = [1] * len(SHAPE)
        if per_channel:
            floor_shape[axis] = -1
        floor = ((fmt.qmin - zero) * scale.astype(np.float32)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(floor.reshape(floor_shape), "floor"))
        nodes.append(helper.make_node("Max", ["x", "floor"], ["xf"]))
        source = "xf"
    nodes += [
        helper.make_node("QuantizeLinear", [source, "s", "z"], ["q"], domain=domain, **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], domain=domain, **attrs),
        helper.make_node("Cast", ["q"], ["codes"], to=TensorProto.INT32),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, list(SHAPE)),
            helper.make_tensor_value_info("codes", TensorProto.INT32, list(SHAPE)),
        ],
        initializer=inits,
    )
    # Opset 21: the first where standard Q/DQ take int16/uint16/int4/uint4 (and Cast takes int4).
    opsets = [helper.make_opsetid("", 21)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _ort(model: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    options = ort.SessionOptions()
    # Constant folding would evaluate the graph for us; keep ORT's kernels in the loop.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    y, codes = session.run(None, {"x": x})
    return y, codes


@pytest.mark.parametrize("domain", ["", "com.microsoft"], ids=["onnx", "contrib"])
@pytest.mark.parametrize(
    "fmt", FORMATS, ids=lambda f: f"{f.describe()}{'-narrow' if f.narrow else ''}".replace(" ", "-")
)
@pytest.mark.parametrize(
    ("axis", "scales"), SCALE_CASES, ids=[f"axis{a}-{s[0]:g}" for a, s in SCALE_CASES]
)
def test_fake_quantize_matches_ort_bit_for_bit(
    fmt: IntFormat, axis: int | None, scales: list[float], domain: str
) -> None:
    """Standard-domain (opset 21) and ORT's contrib Q/DQ, which the exporter uses below 21."""
    scale = np.asarray(scales, np.float32)
    zero = _zero_points(fmt, len(scale), np.random.default_rng(len(scales)))
    x = _inputs(scale, zero, fmt, axis)
    y_ort, codes_ort = _ort(_qdq_model(fmt, scale, zero, axis, domain), x)

    args = (torch.from_numpy(scale), torch.from_numpy(zero).float(), fmt.qmin, fmt.qmax, axis)
    y = fake_quantize(torch.from_numpy(x), *args).numpy()
    codes = quantize_to_int(torch.from_numpy(x), *args).numpy()
    np.testing.assert_array_equal(codes, codes_ort.astype(np.int64))
    np.testing.assert_array_equal(y, y_ort)
    # Ties must have been rounded to even, and the edges of the grid reached.
    assert codes.min() == fmt.qmin and codes.max() == fmt.qmax


def test_rounding_is_half_to_even() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], dtype=torch.float32)
    codes = quantize_to_int(x, torch.tensor(1.0), torch.tensor(0.0), -128, 127)
    assert codes.tolist() == [0, 2, 2, 0, -2, -2]


def _dequantize_model(scale: np.ndarray, axis: int | None, shape: tuple[int, ...]) -> bytes:
    attrs = {"axis": axis} if axis is not None else {}
    dims = [len(scale)] if axis is not None else []
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s"], ["y"], **attrs)],
        "dq",
        [helper.make_tensor_value_info("q", TensorProto.INT32, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        initializer=[helper.make_tensor("s", TensorProto.FLOAT, dims, scale.tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("axis", [None, 0])
def test_int32_bias_matches_ort_dequantize(axis: int | None) -> None:
    """Biases are int32 codes + DequantizeLinear; saturation at +-2^31 included."""
    rng = np.random.default_rng(3)
    fmt = int_format("int32-sym", per_channel=axis is not None)
    scale = np.asarray([1e-6, 3e-4, 0.5] if axis is not None else [2.3e-5], np.float32)
    bias = (rng.standard_normal(3) * 10).astype(np.float32)
    bias[1] = 1e9  # far beyond 2^31 codes at that scale: saturates
    args = (torch.from_numpy(scale), torch.zeros(len(scale)), fmt.qmin, fmt.qmax, axis)
    codes = quantize_to_int(torch.from_numpy(bias), *args).clamp(fmt.qmin, fmt.qmax)
    session = ort.InferenceSession(
        _dequantize_model(scale, axis, bias.shape), providers=["CPUExecutionProvider"]
    )
    (y_ort,) = session.run(None, {"q": codes.numpy().astype(np.int32)})
    np.testing.assert_array_equal(fake_quantize(torch.from_numpy(bias), *args).numpy(), y_ort)


@pytest.mark.parametrize("axis", [None, 1])
def test_quantizer_writes_into_out_and_leaves_its_input(axis: int | None) -> None:
    from quantlens.emulate.fakequant import TensorQuantizer
    from quantlens.schemes.qparams import TensorQuant

    channels = 3 if axis is not None else 1
    spec = TensorQuant(
        name="t",
        format=int_format("uint8"),
        scale=[0.05, 0.1, 0.2][:channels],
        zero_point=[7, 128, 0][:channels],
        axis=axis,
    )
    quantizer = TensorQuantizer(spec, torch.device("cpu"))
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last) * 10
    before = x.clone()
    out = torch.empty(x.numel()).as_strided(x.shape, x.stride())
    y = quantizer(x, out=out)
    torch.testing.assert_close(y, quantizer(x), rtol=0, atol=0)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    if axis is None:  # per tensor, the result is `out` itself: no allocation
        assert y.data_ptr() == out.data_ptr()


def test_int32_bias_codes_come_from_a_float64_quotient_as_ort_quantize_static_stores_them() -> None:
    """ONNX Runtime's quantize_static divides a bias by its scale in float64; a float32
    quotient near a tie rounds the other way. The emulator and the QDQ export must agree with it."""
    from quantlens.emulate.fakequant import TensorQuantizer
    from quantlens.export.qdq import integer_codes
    from quantlens.schemes.qparams import TensorQuant

    rng = np.random.default_rng(0)
    scale = np.float32(3.7e-4) * np.float32(0.013)  # input scale x weight scale, in float32
    bias = (rng.standard_normal(20000) * 0.05).astype(np.float32)
    ort_codes = np.round(bias.astype(np.float64) / np.float64(scale))
    float32_codes = np.round(bias / scale)
    assert (ort_codes != float32_codes).any()  # the case exists in this sample
    spec = TensorQuant(
        name="b", format=int_format("int32-sym"), scale=[float(scale)], zero_point=[0]
    )
    codes = integer_codes(torch.from_numpy(bias), spec)
    np.testing.assert_array_equal(codes, ort_codes.astype(np.int32))
    emulated = TensorQuantizer(spec, torch.device("cpu"))(torch.from_numpy(bias))
    np.testing.assert_array_equal(emulated.numpy(), ort_codes.astype(np.float32) * scale)
