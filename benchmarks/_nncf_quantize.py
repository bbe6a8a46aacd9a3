"""Run NNCF's default `nncf.quantize` on an ONNX model (called by int8_quality.py).

Runs in NNCF's own virtual environment (NNCF is a peer we compare against, not a dependency):
    NNCF_PYTHON _nncf_quantize.py MODEL CALIB_DIR OUTPUT
CALIB_DIR holds .npz files keyed by input name, the same tensors quantlens and ONNX Runtime get.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nncf
import numpy as np
import onnx


def main() -> None:
    model_path, calib_dir, output = (Path(a) for a in sys.argv[1:4])
    model = onnx.load(str(model_path))
    samples = [dict(np.load(f)) for f in sorted(calib_dir.glob("*.npz"))]
    dataset = nncf.Dataset(samples)
    quantized = nncf.quantize(model, dataset, subset_size=len(samples))
    onnx.save(quantized, str(output))


if __name__ == "__main__":
    main()
