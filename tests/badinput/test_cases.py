"""Every bad input is answered with one `error:` line and exit 1 (usage errors: exit 2), no
traceback, and nothing written: the case's own folder and the shared run folder are unchanged.

One row per case: (id, command line, exit code, text the error line must hold, setup). The
command line's `{model}`, `{calib}`, `{run}`, `{labels}` name the shared world (see conftest);
`{tmp}` is the case's own folder, where `setup` writes its bad files first.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from typer.core import TyperGroup as click_group

from tests.badinput.conftest import World, answer_shape, external_data_model, invoke, tree
from tests.models import conv_bn_model

Setup = Callable[[Path, World], None] | None
USAGE, USER = 2, 1
LATIN1 = "caf\xe9 \xff".encode("latin-1")


def write(name: str, content: str | bytes) -> Callable[[Path, World], None]:
    def setup(tmp: Path, world: World) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def run_copy(
    mutate: Callable[[Path], None], manifest: bool = True
) -> Callable[[Path, World], None]:
    """A copy of the quantized run at {tmp}/r, changed by `mutate` (without its manifest when
    `manifest` is False: a folder from before manifests, so the file itself is what is read)."""

    def setup(tmp: Path, world: World) -> None:
        target = tmp / "r"
        shutil.copytree(world.run, target)
        if not manifest:
            (target / "run.json").unlink()
        mutate(target)

    return setup


def npz_calib(dtype: str) -> Callable[[Path, World], None]:
    def setup(tmp: Path, world: World) -> None:
        (tmp / "c").mkdir()
        value = np.ones((1, 3, 8, 8), dtype=dtype)
        np.savez(tmp / "c" / "000.npz", x=value)

    return setup


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def model_file(name: str, build: Callable[[], onnx.ModelProto]) -> Callable[[Path, World], None]:
    def setup(tmp: Path, world: World) -> None:
        (tmp / name).write_bytes(build().SerializeToString())

    return setup


def opset_99() -> onnx.ModelProto:
    model = conv_bn_model(opset=13, unnamed=False)
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 99))
    return model


def external(location: str) -> Callable[[Path, World], None]:
    def setup(tmp: Path, world: World) -> None:
        (tmp / "m").mkdir()
        external_data_model(tmp / "m", location)
        (tmp / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())

    return setup


PLUGIN = """
import math

class Broken:
    name = "broken"
    primary = "score"

    def __init__(self, where):
        self.where = where

    def update(self, outputs, sample):
        if self.where == "update":
            raise ValueError("plug-in bug in update")

    def result(self):
        return {"score": math.nan if self.where == "nan" else 1.0}

    def sample_scores(self):
        return {}


def make_raises(context):
    raise RuntimeError("plug-in bug in the factory")


def make_update(context):
    return Broken("update")


def make_nan(context):
    return Broken("nan")
"""

EVAL = ["eval", "{model}", "--data", "{calib}"]
QUANTIZE = ["quantize", "{model}", "--calib", "{calib}", "-o", "{tmp}/out"]
CHECK = ["check", "{model}", "--random", "1"]


def labels(text: str) -> Callable[[Path, World], None]:
    return write("labels.txt", text)


CASES: list[tuple[str, list[str], int, str, Setup]] = [
    # --- usage errors: one line, exit 2 --------------------------------------------------
    ("usage-optimize-abc", [*QUANTIZE, "--optimize", "abc"], USAGE, "--optimize", None),
    ("usage-missing-calib", ["quantize", "{model}"], USAGE, "--calib", None),
    ("usage-unknown-option", [*QUANTIZE, "--bogus"], USAGE, "--bogus", None),
    ("usage-eval-missing-task", EVAL, USAGE, "--task", None),
    ("usage-unknown-command", ["frobnicate"], USAGE, "frobnicate", None),
    # --- paths ---------------------------------------------------------------------------
    (
        "path-missing-model-brackets",
        ["quantize", "{tmp}/nope[/x].onnx", "--calib", "{calib}", "-o", "{tmp}/out"],
        USER,
        "nope[/x].onnx",
        None,
    ),
    ("path-model-is-folder", ["inspect", "{calib}"], USER, "calib", None),
    ("path-model-garbage", ["inspect", "{tmp}/g.onnx"], USER, "g.onnx", write("g.onnx", b"\x08")),
    (
        "path-output-is-file",
        ["quantize", "{model}", "--calib", "{calib}", "-o", "{tmp}/f.txt"],
        USER,
        "f.txt",
        write("f.txt", "x"),
    ),
    (
        "path-output-dev-null",
        ["quantize", "{model}", "--calib", "{calib}", "-o", "/dev/null"],
        USER,
        "/dev/null",
        None,
    ),
    (
        "path-output-under-file",
        ["analyze", "{model}", "--calib", "{calib}", "-o", "{tmp}/f.txt/run"],
        USER,
        "f.txt",
        write("f.txt", "x"),
    ),
    (
        "path-search-output-is-file",
        ["search", "{model}", "--calib", "{calib}", "-o", "{tmp}/f.txt"],
        USER,
        "f.txt",
        write("f.txt", "x"),
    ),
    (
        "path-calib-missing",
        ["quantize", "{model}", "--calib", "{tmp}/none", "-o", "{tmp}/out"],
        USER,
        "none",
        None,
    ),
    (
        "path-calib-not-data",
        ["quantize", "{model}", "--calib", "{tmp}/notes.txt", "-o", "{tmp}/out"],
        USER,
        "notes.txt",
        write("notes.txt", "hello"),
    ),
    ("path-check-json-under-dev-null", [*CHECK, "-o", "/dev/null/x.json"], USER, "/dev/null", None),
    ("path-report-missing", ["report", "{tmp}/none"], USER, "none", None),
    ("path-report-file", ["report", "{tmp}/f.txt"], USER, "f.txt", write("f.txt", "x")),
    ("path-export-missing", ["export", "{tmp}/none", "-f", "hailo"], USER, "none", None),
    (
        "path-eval-run-missing",
        [*EVAL, "--task", "classification", "--run", "{tmp}/none"],
        USER,
        "none",
        None,
    ),
    (
        "doctor-model-without-data",
        ["doctor", "--calib", "{calib}", "--model", "{model}"],
        USER,
        "--data",
        None,
    ),
    (
        "path-compare-run-missing",
        ["compare", "{tmp}/none", "--dumps", "{tmp}/d.npz"],
        USER,
        "none",
        None,
    ),
    ("path-doctor-missing", ["doctor", "--calib", "{tmp}/none"], USER, "none", None),
    (
        "path-eval-data-missing",
        ["eval", "{model}", "--data", "{tmp}/none", "--task", "classification"],
        USER,
        "none",
        None,
    ),
    (
        "path-import-missing",
        ["import", "{tmp}/none.alls", "-f", "hailo", "--model", "{model}", "-o", "{tmp}/a.json"],
        USER,
        "none.alls",
        None,
    ),
    ("path-zoo-unknown", ["zoo", "fetch", "no-such-model"], USER, "no-such-model", None),
    # --- encodings -----------------------------------------------------------------------
    (
        "utf8-assignment",
        [*QUANTIZE, "--assignment", "{tmp}/a.json"],
        USER,
        "a.json",
        write("a.json", LATIN1),
    ),
    (
        "utf8-labels",
        [*EVAL, "--task", "classification", "--gt", "{tmp}/labels.txt"],
        USER,
        "labels.txt",
        write("labels.txt", LATIN1),
    ),
    ("utf8-spec", [*QUANTIZE, "--spec", "{tmp}/s.yaml"], USER, "s.yaml", write("s.yaml", LATIN1)),
    (
        "utf8-artifact",
        ["report", "{tmp}/r"],
        USER,
        "quantize.json",
        run_copy(lambda r: (r / "quantize.json").write_bytes(LATIN1), manifest=False),
    ),
    (
        "utf8-vendor-file",
        ["import", "{tmp}/v.alls", "-f", "hailo", "--model", "{model}", "-o", "{tmp}/a.json"],
        USER,
        "v.alls",
        write("v.alls", LATIN1),
    ),
    (
        "utf8-name-map",
        ["export", "{run}", "-f", "hailo", "-o", "{tmp}/o.alls", "--name-map", "{tmp}/n.json"],
        USER,
        "n.json",
        write("n.json", LATIN1),
    ),
    # --- JSON of the wrong shape -----------------------------------------------------------
    (
        "shape-assignment-list",
        [*QUANTIZE, "--assignment", "{tmp}/a.json"],
        USER,
        "a.json",
        write("a.json", "[1, 2]"),
    ),
    (
        "shape-assignment-layers-list",
        [*QUANTIZE, "--assignment", "{tmp}/a.json"],
        USER,
        "a.json",
        write("a.json", json.dumps({"target": "ort-cpu", "default": "a8_w8", "layers": ["x"]})),
    ),
    (
        "shape-assignment-unknown-mode",
        [*QUANTIZE, "--assignment", "{tmp}/a.json"],
        USER,
        "a.json",
        write(
            "a.json",
            json.dumps({"target": "ort-cpu", "default": "a8_w8", "layers": {"conv1": "a99_w99"}}),
        ),
    ),
    (
        "shape-artifact-list",
        ["report", "{tmp}/r"],
        USER,
        "plan.json",
        run_copy(lambda r: (r / "plan.json").write_text("[]"), manifest=False),
    ),
    (
        "shape-artifact-list-export",
        ["export", "{tmp}/r", "-f", "hailo", "-o", "{tmp}/o.alls"],
        USER,
        "plan.json",
        run_copy(lambda r: (r / "plan.json").write_text("[]"), manifest=False),
    ),
    (
        "shape-spec-list",
        [*QUANTIZE, "--spec", "{tmp}/s.yaml"],
        USER,
        "s.yaml",
        write("s.yaml", "- 1\n- 2\n"),
    ),
    (
        "shape-name-map-list",
        ["export", "{run}", "-f", "hailo", "-o", "{tmp}/o.alls", "--name-map", "{tmp}/n.json"],
        USER,
        "n.json",
        write("n.json", "[1]"),
    ),
    (
        "shape-cost-table",
        [
            "search",
            "{model}",
            "--calib",
            "{calib}",
            "-o",
            "{tmp}/s",
            "--cost",
            "imported",
            "--cost-table",
            "{tmp}/t.csv",
        ],
        USER,
        "t.csv",
        write("t.csv", "nothing,like,a\ncost,table,here\n"),
    ),
    # --- ground truth ----------------------------------------------------------------------
    (
        "gt-superscript-label",
        [*EVAL, "--task", "classification", "--gt", "{tmp}/labels.txt"],
        USER,
        "labels.txt",
        labels("".join(f"{i:03d}.npz\t\u00b2\n" for i in range(4))),
    ),
    (
        "gt-negative-label",
        [*EVAL, "--task", "classification", "--gt", "{tmp}/labels.txt"],
        USER,
        "-1",
        labels("".join(f"{i:03d}.npz\t-1\n" for i in range(4))),
    ),
    (
        "gt-no-tab",
        [*EVAL, "--task", "classification", "--gt", "{tmp}/labels.txt"],
        USER,
        "labels.txt",
        labels("000.npz 1\n"),
    ),
    (
        "gt-coco-no-file-name",
        [*EVAL, "--task", "detection", "--gt", "{tmp}/coco.json"],
        USER,
        "file_name",
        write(
            "coco.json", json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []})
        ),
    ),
    (
        "gt-coco-string-id",
        [*EVAL, "--task", "detection", "--gt", "{tmp}/coco.json"],
        USER,
        "'one'",
        write(
            "coco.json",
            json.dumps(
                {
                    "images": [{"id": "one", "file_name": "000.npz"}],
                    "annotations": [],
                    "categories": [],
                }
            ),
        ),
    ),
    (
        "gt-coco-not-utf8",
        [*EVAL, "--task", "detection", "--gt", "{tmp}/coco.json"],
        USER,
        "coco.json",
        write("coco.json", LATIN1),
    ),
    (
        "gt-coco-lists-are-dicts",
        [*EVAL, "--task", "detection", "--gt", "{tmp}/coco.json"],
        USER,
        "coco.json",
        write("coco.json", json.dumps({"images": {}, "annotations": {}, "categories": {}})),
    ),
    # --- numeric ranges ----------------------------------------------------------------------
    ("range-limit-zero", [*QUANTIZE, "--limit", "0"], USAGE, "--limit", None),
    ("range-limit-negative", [*QUANTIZE, "--limit", "-1"], USAGE, "--limit", None),
    ("range-percentile", [*QUANTIZE, "--percentile", "150"], USAGE, "--percentile", None),
    ("range-optimize-level", [*QUANTIZE, "--optimize", "7"], USAGE, "--optimize", None),
    (
        "range-eval-limit",
        [*EVAL, "--task", "classification", "--gt", "{labels}", "--limit", "0"],
        USAGE,
        "--limit",
        None,
    ),
    (
        "range-analyze-samples",
        ["analyze", "{model}", "--calib", "{calib}", "-o", "{tmp}/a", "--samples", "0"],
        USAGE,
        "--samples",
        None,
    ),
    (
        "range-search-samples",
        ["search", "{model}", "--calib", "{calib}", "-o", "{tmp}/s", "--samples", "-2"],
        USAGE,
        "--samples",
        None,
    ),
    (
        "range-search-eval-limit",
        ["search", "{model}", "--calib", "{calib}", "-o", "{tmp}/s", "--eval-limit", "0"],
        USAGE,
        "--eval-limit",
        None,
    ),
    (
        "range-search-task-without-data",
        ["search", "{model}", "--calib", "{calib}", "-o", "{tmp}/s", "--task", "classification"],
        USER,
        "--data",
        None,
    ),
    (
        "range-check-random-negative",
        ["check", "{model}", "--random", "-1"],
        USAGE,
        "--random",
        None,
    ),
    ("range-check-seed-negative", [*CHECK, "--seed", "-1"], USAGE, "--seed", None),
    (
        "range-data-make-count",
        ["data", "make", "pages", "-n", "0", "-o", "{tmp}/d"],
        USAGE,
        "--count",
        None,
    ),
    (
        "range-demo-count",
        ["demo", "-o", "{tmp}/d", "--calib-count", "0"],
        USAGE,
        "--calib-count",
        None,
    ),
    (
        "range-input-shape-huge",
        ["inspect", "{model}", "--input-shape", "x:1,3,100000,100000"],
        USAGE,
        "--input-shape",
        None,
    ),
    (
        "range-input-shape-zero",
        ["inspect", "{model}", "--input-shape", "x:0,3,8,8"],
        USAGE,
        "--input-shape",
        None,
    ),
    # --- dtypes, devices, model files ---------------------------------------------------------
    (
        "dtype-int64-npz",
        ["quantize", "{model}", "--calib", "{tmp}/c", "-o", "{tmp}/out"],
        USER,
        "int64",
        npz_calib("int64"),
    ),
    (
        "dtype-bool-npz",
        ["quantize", "{model}", "--calib", "{tmp}/c", "-o", "{tmp}/out"],
        USER,
        "bool",
        npz_calib("bool"),
    ),
    (
        "dtype-int64-eval-data",
        ["eval", "{model}", "--data", "{tmp}/c", "--task", "distance"],
        USER,
        "int64",
        npz_calib("int64"),
    ),
    (
        "dtype-bool-analyze-data",
        ["analyze", "{model}", "--calib", "{calib}", "--data", "{tmp}/c", "-o", "{tmp}/a"],
        USER,
        "bool",
        npz_calib("bool"),
    ),
    (
        "dtype-empty-npy",
        ["quantize", "{model}", "--calib", "{tmp}/c", "-o", "{tmp}/out"],
        USER,
        "000.npy",
        write("c/000.npy", b""),
    ),
    (
        "artifact-manifest-damaged",
        ["report", "{tmp}/r"],
        USER,
        "run.json",
        run_copy(lambda r: (r / "run.json").write_text("{{{")),
    ),
    ("device-unknown", [*CHECK, "--device", "tpu"], USAGE, "--device", None),
    ("device-bad-cuda-index", [*CHECK, "--device", "cuda:x"], USAGE, "--device", None),
    ("opset-99", ["inspect", "{tmp}/o.onnx"], USER, "opset 99", model_file("o.onnx", opset_99)),
    ("external-missing", ["inspect", "{tmp}/m/ext.onnx"], USER, "gone.bin", external("gone.bin")),
    (
        "external-outside",
        ["inspect", "{tmp}/m/ext.onnx"],
        USER,
        "../secret.bin",
        external("../secret.bin"),
    ),
    (
        "image-decompression-bomb",
        ["quantize", "{model}", "--calib", "{tmp}/img", "-o", "{tmp}/out"],
        USER,
        "bomb.png",
        write("img/bomb.png", png_header(40000, 40000)),
    ),
    # --- plug-ins -------------------------------------------------------------------------
    (
        "plugin-factory-raises",
        [*EVAL, "--task", "{tmp}/p.py:make_raises"],
        USER,
        "p.py:",
        write("p.py", PLUGIN),
    ),
    (
        "plugin-update-raises",
        [*EVAL, "--task", "{tmp}/p.py:make_update"],
        USER,
        "p.py:",
        write("p.py", PLUGIN),
    ),
    ("plugin-nan", [*EVAL, "--task", "{tmp}/p.py:make_nan"], USER, "NaN", write("p.py", PLUGIN)),
]


@pytest.mark.parametrize(
    ("argv", "code", "needle", "setup"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input(
    argv: list[str],
    code: int,
    needle: str,
    setup: Setup,
    world: World,
    quantized: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if setup is not None:
        setup(workdir, world)
    before, shared = tree(workdir), tree(world.root)
    line = answer_shape(
        invoke(capsys, *(a.format(tmp=workdir, **world.paths()) for a in argv)), code, needle
    )
    assert line.strip() != "error:"
    assert tree(workdir) == before, "a failed command wrote files"
    assert tree(world.root) == shared, "a failed command changed the shared run folder"


def test_cases_cover_every_command() -> None:
    """A new command needs its bad-input case here (version and profiles take no input)."""
    from typer.main import get_command

    from quantlens.cli import app

    group = get_command(app)
    assert isinstance(group, click_group)
    registered = set(group.commands) - {"version", "profiles"}
    assert registered <= {case[1][0] for case in CASES}


def test_markup_in_node_names_prints_as_text(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = conv_bn_model(unnamed=False)
    model.graph.node[0].name = "conv[/x][bold]"
    onnx.save(model, workdir / "m[y]z.onnx")
    answer = invoke(capsys, "inspect", str(workdir / "m[y]z.onnx"))
    assert answer.code == 0, answer.err
    assert "conv[/x][bold]" in answer.out and "m[y]z.onnx" in answer.out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(
    world: World, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = invoke(capsys, "check", str(world.model), "--random", "1", "--device", "cuda")
    answer_shape(answer, USER, "--device cuda")
    assert tree(workdir) == {}
