#!/usr/bin/env bash
# Build the AIMET-ONNX 2.42.0 venv that benchmarks/_vendor_aimet.py (and the AIMET peers,
# _aimet_*.py) run in, from scratch or over an existing venv (every step is idempotent).
#
#   benchmarks/envs/aimet.sh [VENV]        (default /work/vendor-venvs/aimet)
#
# AIMET-ONNX runs on CPU here with a CPU torch. Three things would go wrong with a plain
# `pip install aimet-onnx`, each handled below: pip replacing the CPU torch with a CUDA
# build, onnx2torch pulling torchvision (no CPU build here), and aimet-onnx's own pins.
set -euo pipefail

VENV="${1:-/work/vendor-venvs/aimet}"
PYTHON="${PYTHON:-python3}"  # any CPython 3.11 (the torch wheel is cp311)
# The CPU torch: a local wheel where one lies (this machine), else PyTorch's CPU index.
WHEEL=/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
TORCH_SOURCE=()
if [[ -z "${TORCH:-}" && -e "$WHEEL" ]]; then
    TORCH="$WHEEL"
elif [[ -z "${TORCH:-}" ]]; then
    TORCH="torch==2.13.0+cpu"
    TORCH_SOURCE=(--extra-index-url https://download.pytorch.org/whl/cpu)
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

# Every later step resolves against these pins, so nothing can swap the CPU torch for a
# CUDA one (pip would, to satisfy a loose `torch` requirement) or bring torchvision in. The
# numeric stack is pinned to the versions BENCHMARKS' AIMET numbers were measured with: a
# newer ONNX Runtime sums its float Convs in another order, which moves the sim's outputs.
CONSTRAINTS="$VENV/quantlens-constraints.txt"
cat > "$CONSTRAINTS" <<'PINS'
torch==2.13.0
torchvision==0.0.0
onnxruntime==1.32.0
onnx==1.23.2
numpy==2.4.6
onnxscript==0.7.2
PINS

"${PIP[@]}" install -c "$CONSTRAINTS" "${TORCH_SOURCE[@]}" "$TORCH"

# onnx2torch declares torchvision, which AIMET-ONNX's import paths here never use, and
# aimet-onnx's declared pins are narrower than what it runs with: both without their deps.
"${PIP[@]}" install -c "$CONSTRAINTS" --no-deps onnx2torch aimet-onnx==2.42.0

# aimet-onnx's real needs (its import graph on the QuantizationSimModel /
# load_encodings_to_sim / QuantAnalyzer paths).
"${PIP[@]}" install -c "$CONSTRAINTS" \
    Jinja2 PyYAML "bokeh>=3.3" "hvplot>=0.10" jsonschema onnx_ir onnxruntime onnxscript \
    osqp pandas psutil pybind11 scikit-learn scipy tqdm onnx

# The check the workers rely on: the sim builds on CPU and AIMET's custom op library loads.
"$VENV/bin/python" - <<'PY'
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from aimet_onnx.quantsim import QuantizationSimModel

weight = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
graph = helper.make_graph(
    [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
    "smoke",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
    initializer=[weight],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
sim = QuantizationSimModel(model, config_file="htp_v73")
sim.compute_encodings(lambda session: session.run(None, {"x": np.ones((1, 2, 2, 2), np.float32)}))
from importlib.metadata import version

print(f"aimet-onnx {version('aimet-onnx')}, torch {version('torch')}: the sim builds and runs")
PY
