"""Check quantlens' AIMET encodings (or Qualcomm overrides) in AIMET-ONNX itself.

Runs in AIMET's own virtual environment (benchmarks/envs/aimet.sh), never imports quantlens:
    AIMET_PYTHON _vendor_aimet.py JOB.json
JOB.json: {"format": "aimet"|"qnn", "model", "variant", "float_model": the `.float.onnx`
written beside the files, "files": {suffix: path}, "inputs": .npz (one float32 array per graph
input), "input_shapes", "workdir"}.

Steps: a QuantizationSimModel for HTP (config `htp_v73`, the one quantlens' fusion rules are
read from) on the float model; `load_encodings_to_sim` with the file as it is. The sim's
defaults (int8 everywhere) differ from any mixed file, so strict loading, which treats every
setting that differs from those defaults as an error, is tried first and reported as a note;
the file is then loaded non-strictly (AIMET takes the file's settings) and every entry is
checked against the quantizer it landed on: enabled, bit width, float or int, symmetry, scale
and offset exactly. A Qualcomm overrides file is AIMET's 0.6.1 schema without its version
field, so it is loaded with "version": "0.6.1" added. The sim then runs on the inputs; its
outputs go to workdir/outputs.npz keyed by the float model's output names.

The last stdout line is one JSON object: {"accepted", "error", "checks": {what: {"planned",
"honoured"}}, "outputs", "notes"}; AIMET's logging goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx

CONFIG = "htp_v73"
SUFFIX = {"aimet": ".encodings", "qnn": ".qnn.json"}
Entry = dict[str, Any]


def main(job_path: str) -> dict[str, Any]:
    job = json.loads(Path(job_path).read_text())
    result: dict[str, Any] = {"accepted": False, "error": None, "checks": {}, "outputs": None}
    result["notes"] = notes = [f"aimet-onnx {_version()}, config {CONFIG}"]
    try:
        encodings = _read_encodings(job, notes)
        model = onnx.load(job["float_model"])
        notes.append(_strict_attempt(model, encodings))
        sim, enabled_before = _sim(model)
        _load(sim, encodings, strict=False)
        result["accepted"] = True
        result["checks"] = _checks(sim, encodings, enabled_before, notes)
        result["outputs"] = _run(sim, model, job)
    except Exception:  # the vendor's own error, whatever its type, is the finding
        result["error"] = _last_line()
    return result


def _version() -> str:
    from importlib.metadata import version

    return version("aimet-onnx")


def _read_encodings(job: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    data = json.loads(Path(job["files"][SUFFIX[job["format"]]]).read_text())
    if job["format"] == "qnn":
        data = {"version": "0.6.1", **data}
        notes.append("qnn overrides loaded as AIMET 0.6.1 encodings (the same schema)")
    return data


def _sim(model: onnx.ModelProto) -> tuple[Any, set[str]]:
    from aimet_onnx.quantsim import QuantizationSimModel

    with contextlib.redirect_stdout(sys.stderr):
        sim = QuantizationSimModel(
            onnx.ModelProto.FromString(model.SerializeToString()),
            param_type="int8",
            activation_type="int8",
            config_file=CONFIG,
        )
    return sim, {name for name, q in sim.qc_quantize_op_dict.items() if q.enabled}


def _load(sim: Any, encodings: dict[str, Any], strict: bool) -> list[Any]:
    from aimet_onnx.quantsim import load_encodings_to_sim

    with contextlib.redirect_stdout(sys.stderr):
        return load_encodings_to_sim(sim, json.loads(json.dumps(encodings)), strict=strict)


def _strict_attempt(model: onnx.ModelProto, encodings: dict[str, Any]) -> str:
    """What strict loading would refuse: the settings that differ from the sim's defaults."""
    sim, _ = _sim(model)
    mismatches = _load(sim, encodings, strict=False)
    if not mismatches:
        return "strict load: accepted (no setting differs from the sim's defaults)"
    kinds: dict[str, int] = {}
    for info in mismatches:
        for kind in ("enabled", "dtype", "bitwidth", "is_symmetric", "enc_type"):
            if getattr(info, f"{kind}_mismatch", None):
                kinds[kind] = kinds.get(kind, 0) + 1
    summary = ", ".join(f"{kind} {count}" for kind, count in kinds.items())
    return (
        f"strict load would refuse: {len(mismatches)} quantizers differ from the sim's int8 "
        f"defaults ({summary}); loaded non-strictly, the file's settings win"
    )


def _entries(encodings: dict[str, Any]) -> dict[str, tuple[str, Entry]]:
    """Name -> (section, entry in 1.0.0 terms) for either schema."""
    found: dict[str, tuple[str, Entry]] = {}
    for section in ("activation_encodings", "param_encodings"):
        items = encodings.get(section) or {}
        if isinstance(items, list):
            found.update({e["name"]: (section, e) for e in items})
            continue
        for name, channels in items.items():
            found[name] = (section, _from_0_6_1(channels))
    return found


def _from_0_6_1(channels: list[Entry]) -> Entry:
    first = channels[0]
    if str(first.get("dtype", "int")).lower() == "float":
        return {"bw": first["bitwidth"], "dtype": "FLOAT"}
    return {
        "bw": first["bitwidth"],
        "dtype": "INT",
        "is_sym": str(first.get("is_symmetric")) == "True",
        "scale": [c["scale"] for c in channels],
        "offset": [c["offset"] for c in channels],
    }


def _checks(
    sim: Any, encodings: dict[str, Any], enabled_before: set[str], notes: list[str]
) -> dict[str, dict[str, int]]:
    entries = _entries(encodings)
    bias_names = _bias_names(sim)
    checks = {
        key: {"planned": 0, "honoured": 0}
        for key in ("activations", "params", "int32 biases", "not fused away")
    }
    wrong: list[str] = []
    for name, (section, entry) in entries.items():
        quantizer = sim.qc_quantize_op_dict.get(name)
        is_bias = name in bias_names and entry["dtype"] == "INT" and entry["bw"] >= 32
        key = "activations" if section == "activation_encodings" else "params"
        key = "int32 biases" if is_bias else key
        checks[key]["planned"] += 1
        why = _mismatch(quantizer, entry, is_bias)
        checks[key]["honoured"] += why is None
        if why is not None:
            wrong.append(f"{name}: {why}")
        if section == "activation_encodings":
            checks["not fused away"]["planned"] += 1
            checks["not fused away"]["honoured"] += name in enabled_before
    if wrong:
        notes.append(f"not honoured ({len(wrong)}): " + "; ".join(wrong[:8]))
    left = sorted(enabled_before - set(entries))
    if left:
        notes.append(
            f"{len(left)} AIMET quantizers got no encoding (left float by the load): "
            + ", ".join(left[:10])
        )
    return checks


def _bias_names(sim: Any) -> set[str]:
    names = set()
    for op in sim.connected_graph.get_all_ops().values():
        _, bias = sim._get_weight_and_bias(op)  # AIMET's own bias lookup
        if bias is not None:
            names.add(bias.name)
    return names


def _mismatch(quantizer: Any, entry: Entry, is_bias: bool) -> str | None:
    """Why the loaded quantizer does not hold `entry` exactly, or None."""
    if quantizer is None:
        return "no quantizer"
    if is_bias:  # AIMET disables int32 bias quantizers on load: lossless, derived on export
        return None if not quantizer.enabled and quantizer.bitwidth == entry["bw"] else "bias"
    if not quantizer.enabled:
        return "disabled"
    loaded = quantizer.export_encodings("1.0.0")
    if loaded is None or loaded.get("bw") != entry["bw"]:
        return f"bitwidth {None if loaded is None else loaded.get('bw')} != {entry['bw']}"
    if loaded.get("dtype") != entry["dtype"]:
        return f"dtype {loaded.get('dtype')} != {entry['dtype']}"
    if entry["dtype"] == "FLOAT":
        return None
    if bool(loaded.get("is_sym")) != bool(entry["is_sym"]):
        return "symmetry"
    if list(loaded["offset"]) != [int(o) for o in entry["offset"]]:
        return f"offset {loaded['offset'][:2]} != {entry['offset'][:2]}"
    got = np.asarray(loaded["scale"], np.float32)
    want = np.asarray(entry["scale"], np.float32)
    return None if np.array_equal(got, want) else f"scale {got[:2]} != {want[:2]}"


def _run(sim: Any, model: onnx.ModelProto, job: dict[str, Any]) -> str:
    """Sample by sample: the float model quantlens ships has the batch size of its shapes."""
    arrays = {k: v.astype(np.float32) for k, v in np.load(job["inputs"]).items()}
    count = len(next(iter(arrays.values())))
    runs = [
        sim.session.run(None, {k: v[i : i + 1] for k, v in arrays.items()}) for i in range(count)
    ]
    names = [o.name for o in model.graph.output]
    stacked = {name: np.concatenate([r[i] for r in runs]) for i, name in enumerate(names)}
    out = Path(job["workdir"]) / "outputs.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **stacked)
    return str(out)


def _last_line() -> str:
    lines = [line for line in traceback.format_exc().strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


if __name__ == "__main__":
    report = main(sys.argv[1])
    sys.stdout.flush()
    print(json.dumps(report), flush=True)
