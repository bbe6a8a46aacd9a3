#!/usr/bin/env bash
# Build the TPU-MLIR 1.30.2 venv that benchmarks/_vendor_tpu_mlir.py runs in, from scratch
# or over an existing venv (every step is idempotent).
#
#   benchmarks/envs/tpu_mlir.sh [VENV]        (default /work/vendor-venvs/tpu-mlir)
#
# TPU-MLIR 1.30.2 wheels exist for Python 3.10 only. On Debian 12 it needs four fixes,
# each explained where it is applied below.
set -euo pipefail

VENV="${1:-/work/vendor-venvs/tpu-mlir}"
PY310="${PY310:-$HOME/.pyenv/versions/3.10.13/bin/python3.10}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY310" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)

# The [onnx] extra pins onnx 1.14.1, onnxruntime 1.16.3 and onnxsim 0.4.17, which
# OnnxConverter imports unconditionally. psutil is imported by the tools but not declared.
"${PIP[@]}" install "tpu-mlir[onnx]==1.30.2" psutil

SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
THIRD="$SITE/tpu_mlir/lib/third_party"

# Fix 1: the wheel bundles Ubuntu 22.04's libc/libm/libpthread and puts that folder on
# LD_LIBRARY_PATH; Debian 12's own binaries (sh, dot) then load a mismatched libc and die.
# Moving them aside lets the system's glibc (newer, backward compatible) serve everything.
mkdir -p "$THIRD/disabled"
for lib in libc.so.6 libm.so.6 libpthread.so.0; do
    if [[ -e "$THIRD/$lib" ]]; then
        mv "$THIRD/$lib" "$THIRD/disabled/$lib"
    fi
done

# Fix 2: the tools import torch unconditionally, and no CPU torch wheel for Python 3.10 is
# available here. On the paths we run (ONNX transform, deploy, model_runner) only
# torch.tensor(x).numpy() is used, so a numpy-backed stand-in is enough. A real torch, if
# one is installed, is left alone; an older stand-in is rewritten.
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null \
    || grep -qs quantlens "$SITE/torch/__init__.py"; then
    mkdir -p "$SITE/torch"
    cat > "$SITE/torch/__init__.py" <<'PY'
"""Stand-in for torch inside the TPU-MLIR venv (quantlens benchmarks/envs/tpu_mlir.sh).

Only torch.tensor(x).numpy() is used on the TPU-MLIR paths quantlens runs; anything
else raises, so a path that needs real torch fails loudly instead of silently.
"""

import numpy as _np

__version__ = "0.0.0+quantlens-stand-in"


class Tensor:
    def __init__(self, data):
        self._data = _np.asarray(data)

    def numpy(self):
        return self._data


def tensor(data, *args, **kwargs):
    return Tensor(data)


def from_numpy(data):
    return Tensor(data)


def __getattr__(name):
    # ImportError, not AttributeError: optional-torch code such as onnxruntime_extensions
    # wraps `import torch; from ._torch_cvt import ...` (which subclasses
    # torch.autograd.Function) in `except ImportError`, and must take that branch.
    raise ImportError(f"torch stand-in has no {name!r}: install a real torch for this path")
PY
fi

# Fix 3: model_deploy draws graphs with Graphviz's `dot`; the pip `graphviz` package is only
# the Python binding. Debian's package provides the binary.
if ! command -v dot >/dev/null; then
    if command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
        # A fresh container has no package lists yet: fetch them only when the install needs it.
        apt-get install -y --no-install-recommends graphviz >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y --no-install-recommends graphviz >/dev/null; }
    else
        echo "install Debian's graphviz (dot) as root: apt-get install graphviz" >&2
        exit 1
    fi
fi

# Smoke test: the tools import and the MLIR binaries start with the system's glibc.
"$VENV/bin/python" - <<'PY'
import onnx, onnxruntime, tpu_mlir
print("tpu_mlir", getattr(tpu_mlir, "__version__", "1.30.2"), "onnx", onnx.__version__,
      "onnxruntime", onnxruntime.__version__)
PY
"$VENV/bin/model_transform.py" --help >/dev/null
"$VENV/bin/tpuc-opt" --version >/dev/null 2>&1 || "$VENV/bin/tpuc-opt" --help >/dev/null
echo "TPU-MLIR venv ready: $VENV"
