"""Run folders stay whole under kills, races and tampering.

Kills are injected deterministically at each write boundary: in-process by replacing
`quantlens.artifacts.write_boundary` with one that raises `Killed` (a BaseException the command
does not clean up after, as with SIGKILL), and once for real in a child process through
`QUANTLENS_KILL_AFTER_WRITES`. After a kill, the next command that opens the folder must find
the old run or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import quantlens.artifacts as artifacts
from quantlens.artifacts import file_mode
from quantlens.artifacts.journal import JOURNAL, mixed_files, read_manifest, tracked_files
from tests.badinput.conftest import World, answer_shape, invoke, tree

NEW_RUN = ["--method", "minmax"]  # what makes the second run differ from the first


class Killed(BaseException):
    """The process ends here: no handler runs (unlike an Exception)."""


def quantize_args(world: World, folder: Path, *extra: str) -> list[str]:
    return ["quantize", str(world.model), "--calib", str(world.calib), "-o", str(folder), *extra]


def kill_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    count = [0]

    def boundary(path: Path) -> None:
        count[0] += 1
        if count[0] >= writes:
            raise Killed(str(path))

    monkeypatch.setattr(artifacts, "write_boundary", boundary)


def is_whole_new(folder: Path) -> bool:
    """Every file vouched for by the manifest of the latest command, which was the new run."""
    manifest = read_manifest(folder)
    files = sorted(tracked_files(folder))
    method = json.loads((folder / "quantize.json").read_text())["method"]
    listed = manifest is not None and set(files) <= set(manifest.files)
    return listed and not mixed_files(folder, files) and method == "minmax"


def test_a_kill_at_any_write_leaves_the_old_run_or_the_new(
    world: World,
    quantized: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = workdir / "run"
    old = tree(quantized)
    outcomes = []
    for writes in range(1, 40):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(quantized, folder)
        kill_after(monkeypatch, writes)
        try:
            invoke(capsys, *quantize_args(world, folder, *NEW_RUN))
        except Killed:
            killed = True
        else:
            killed = False
        monkeypatch.undo()
        assert killed or (folder / JOURNAL).exists() is False
        if killed:
            assert (folder / JOURNAL).exists()  # the killed run left its journal
        # The next command to open the folder finishes the job (report takes the lock too).
        answer = invoke(capsys, "report", str(folder), "-o", str(workdir / "r.html"))
        assert answer.code == 0, answer.err
        state = "old" if _runs_files(folder) == _runs_files_of(old) else "new"
        if state == "new":
            assert is_whole_new(folder), f"kill after {writes} writes left a mixed folder"
        outcomes.append(state)
        if not killed:
            break
    assert not killed, "the run never finished: raise the boundary count"
    # Every kill before the manifest left the old run, the one after it the new.
    first_new = outcomes.index("new")
    assert outcomes[:first_new] == ["old"] * first_new and first_new >= 8
    assert set(outcomes[first_new:]) == {"new"}


def _runs_files(folder: Path) -> dict[str, str]:
    return {k: v for k, v in tree(folder).items() if k in tracked_files(folder)}


def _runs_files_of(snapshot: dict[str, str]) -> dict[str, str]:
    return {
        k: v
        for k, v in snapshot.items()
        if not k.startswith(("calibration-cache", "search-cache")) and k != "run.json"
    }


def test_a_real_kill_between_calibration_and_its_key_loses_nothing(
    world: World, quantized: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's worst case: a kill after calibration.json, before calibration.key. The
    identical re-run must give the same numbers as a run that was never killed."""
    reference = workdir / "reference"
    assert invoke(capsys, *quantize_args(world, reference, *NEW_RUN)).code == 0
    expected = json.loads((reference / "quantize.json").read_text())["outputs"]

    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    old = _runs_files_of(tree(quantized))
    writes = _writes_until(world, workdir / "probe", "calibration.json")
    env = {**os.environ, "QUANTLENS_KILL_AFTER_WRITES": str(writes)}
    argv = quantize_args(world, folder, *NEW_RUN)
    killed = subprocess.run(
        [sys.executable, "-m", "quantlens", *argv], env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == 137
    assert (folder / "calibration.key").read_bytes() == (quantized / "calibration.key").read_bytes()
    report = invoke(capsys, "report", str(folder), "-o", str(workdir / "r.html"))
    assert report.code == 0
    assert _runs_files(folder) == old  # rolled back to the old run
    # ... and said so: which command stopped, and what the undo did.
    assert "warning: run folder" in report.err and "`quantize` stopped before" in report.err
    assert "files removed" in report.err.replace("\n", " ")

    assert invoke(capsys, *argv).code == 0
    again = json.loads((folder / "quantize.json").read_text())["outputs"]
    assert [o["float_vs_quantized"] for o in again] == [o["float_vs_quantized"] for o in expected]


def _writes_until(world: World, folder: Path, name: str) -> int:
    """How many writes a fresh minmax run makes up to and including `name` (counted, so the
    real kill lands on the intended boundary whatever the stage order)."""
    seen: list[str] = []
    original = artifacts.write_boundary
    artifacts.write_boundary = lambda path: seen.append(Path(path).name)  # type: ignore[assignment]
    try:
        from quantlens.cli import run

        assert run(quantize_args(world, folder, *NEW_RUN)) == 0
    finally:
        artifacts.write_boundary = original
    # The killed run reuses nothing, like this fresh one: its context is new to the folder.
    return seen.index(name) + 1


def test_a_failing_command_rolls_back_at_once(
    world: World,
    quantized: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from quantlens.errors import UserError

    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    before = _runs_files(folder)
    count = [0]

    def boundary(path: Path) -> None:
        count[0] += 1
        if count[0] == 5:
            raise UserError(f"no space left writing {path}", "free some space")

    monkeypatch.setattr(artifacts, "write_boundary", boundary)
    answer_shape(invoke(capsys, *quantize_args(world, folder, *NEW_RUN)), 1, "no space left")
    assert _runs_files(folder) == before
    assert not (folder / JOURNAL).exists()


def test_a_second_writer_is_told_who_holds_the_folder(
    world: World, quantized: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    before = tree(folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        line = answer_shape(invoke(capsys, *quantize_args(world, folder)), 1, "in use by")
        assert f"pid {holder.pid}" in line and "quantlens quantize" in line
        report = answer_shape(invoke(capsys, "report", str(folder)), 1, f"pid {holder.pid}")
        assert "wait" in report
    finally:
        holder.communicate("", timeout=30)
    after = tree(folder)
    assert after.pop(".quantlens.lock") and after == before  # only the holder's own lock file


_HOLD_LOCK = """
import fcntl, json, os, socket, sys
handle = open(os.path.join(sys.argv[1], ".quantlens.lock"), "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "command": "quantize", "since": 0}))
handle.flush()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_left_by_a_dead_process_is_taken_over(
    world: World, quantized: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = {"pid": int(dead.stdout), "host": os.uname().nodename, "command": "quantize"}
    (folder / ".quantlens.lock").write_text(json.dumps(stale))
    assert invoke(capsys, *quantize_args(world, folder)).code == 0
    assert not (folder / ".quantlens.lock").exists()


def test_reused_calibration_is_checked_against_its_content(
    world: World, quantized: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """calibration.json changed under an unchanged key (a killed older quantlens, an edit):
    its ranges must not be used."""
    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    shutil.rmtree(folder / "calibration-cache")  # only calibration.json could be reused
    stats = json.loads((folder / "calibration.json").read_text())
    for tensor in stats["tensors"].values():
        tensor["clip_min"], tensor["clip_max"] = -1e-3, 1e-3
    (folder / "calibration.json").write_text(json.dumps(stats))
    assert invoke(capsys, *quantize_args(world, folder)).code == 0
    report = json.loads((folder / "quantize.json").read_text())
    assert report["calibration_reused"] is False
    assert (folder / "calibration.json").read_bytes() == (
        quantized / "calibration.json"
    ).read_bytes()


def test_report_refuses_a_folder_that_mixes_runs(
    world: World, quantized: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = workdir / "other"
    assert invoke(capsys, *quantize_args(world, other, *NEW_RUN)).code == 0
    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    shutil.copy(other / "plan.json", folder / "plan.json")
    before = tree(folder)
    answer_shape(invoke(capsys, "report", str(folder)), 1, "plan.json")
    answer_shape(
        invoke(capsys, "export", str(folder), "-f", "ort", "-o", str(workdir / "o.json")),
        1,
        "mixes runs",
    )
    assert tree(folder) == before


def test_artifacts_get_the_umask_modes(quantized: Path) -> None:
    wanted = file_mode()
    modes = {name: path.stat().st_mode & 0o777 for name, path in tracked_files(quantized).items()}
    assert modes and set(modes.values()) == {wanted}, modes


def test_hostile_model_metadata_is_ignored(
    world: World, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx

    model = onnx.load(str(world.model))
    for key, value in {"names": "{1: 'a', 'x': 'b'}", "character": "[/x]\x00"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, workdir / "m.onnx")
    args = ["eval", str(workdir / "m.onnx"), "--data", str(world.calib)]
    answer = invoke(capsys, *args, "--task", "classification", "--gt", str(world.labels))
    assert answer.code == 0, answer.err


def test_search_resumes_over_a_damaged_cache(
    world: World, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill can tear nothing (cache entries are atomic), but a disk or a user can: damaged
    entries are measured again, never trusted and never a traceback."""
    folder = workdir / "run"
    args = ["search", str(world.model), "--calib", str(world.calib), "-o", str(folder)]
    assert invoke(capsys, *args).code == 0
    first = json.loads((folder / "search.json").read_text())
    # The plain all-int8 context's cache (a fixed all-int8 has its own, `<key>-fix<set>`).
    (cache,) = [p for p in (folder / "search-cache").iterdir() if "-fix" not in p.name]
    (cache / "noise.json").write_text('{"conv1": [1, 2]}')
    entry = next(p for p in cache.glob("*.json") if p.name != "noise.json")
    entry.write_bytes(b"\xff\xfe not json")
    assert invoke(capsys, *args, "--resume").code == 0
    again = json.loads((folder / "search.json").read_text())
    assert again["chosen"] == first["chosen"]


def test_eval_quantizing_here_writes_a_whole_run_folder(
    world: World, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(world.model), "--data", str(world.calib), "--task", "classification"]
    answer = invoke(capsys, *args, "--gt", str(world.labels), "--target", "ort-cpu")
    assert answer.code == 0, answer.err
    folder = workdir / "runs" / "eval"
    assert is_whole_search(folder)  # every file listed and vouched for


def test_a_read_only_folder_is_reported_as_it_is(
    quantized: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An archived folder cannot be locked (tests run as root, so the check is simulated)."""
    from quantlens.artifacts import journal

    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    real = os.access
    monkeypatch.setattr(
        journal.os, "access", lambda path, mode: mode != os.W_OK and real(path, mode)
    )
    answer = invoke(capsys, "report", str(folder), "-o", str(workdir / "r.html"))
    assert answer.code == 0, answer.err
    assert not (folder / ".quantlens.lock").exists() and not (folder / "report.html").exists()
    (folder / JOURNAL).mkdir()
    answer_shape(
        invoke(capsys, "report", str(folder), "-o", str(workdir / "r.html")), 1, "unfinished write"
    )


def test_a_killed_search_resumes_from_its_cache(
    world: World,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The run folder goes back to before the search, but its cache entries (outside the
    unit) stay, so `--resume` does not measure them again."""
    folder = workdir / "run"
    args = ["search", str(world.model), "--calib", str(world.calib), "-o", str(folder)]
    cached: list[Path] = []

    def boundary(path: Path) -> None:
        if "search-cache" in Path(path).parts:
            cached.append(Path(path))
            if len(cached) == 3:
                raise Killed(str(path))

    monkeypatch.setattr(artifacts, "write_boundary", boundary)
    with pytest.raises(Killed):
        invoke(capsys, *args)
    monkeypatch.undo()
    assert invoke(capsys, *args, "--resume").code == 0
    assert all(path.is_file() for path in cached)  # kept through the rollback and the resume
    assert is_whole_search(folder)


def is_whole_search(folder: Path) -> bool:
    manifest, files = read_manifest(folder), sorted(tracked_files(folder))
    listed = manifest is not None and set(files) <= set(manifest.files)
    return listed and not mixed_files(folder, files)


def test_written_files_follow_the_umask(workdir: Path) -> None:
    previous = os.umask(0o027)
    try:
        path = artifacts.write_text_atomic(workdir / "a.json", "{}")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_kill_during_recovery_is_recovered_next_time(
    world: World,
    quantized: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from quantlens.artifacts import journal

    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    old = _runs_files(folder)
    kill_after(monkeypatch, 6)  # the new run is half written
    with pytest.raises(Killed):
        invoke(capsys, *quantize_args(world, folder, *NEW_RUN))
    monkeypatch.undo()
    restored = [0]
    real_replace = os.replace

    def replace_then_die(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        restored[0] += 1
        if restored[0] == 2:
            raise Killed("during recovery")

    monkeypatch.setattr(journal.os, "replace", replace_then_die)
    with pytest.raises(Killed):
        journal.recover(folder)
    monkeypatch.undo()
    assert (folder / JOURNAL).exists()
    journal.recover(folder)
    assert _runs_files(folder) == old and not (folder / JOURNAL).exists()


def test_a_kill_while_the_journal_is_deleted_keeps_the_new_run(
    world: World,
    quantized: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After the commit the journal goes in one rename: a kill while its files are deleted
    must not read as an uncommitted journal with half a snapshot."""
    from quantlens.artifacts import journal

    folder = workdir / "run"
    shutil.copytree(quantized, folder)
    real_rmtree = shutil.rmtree

    def half_delete(path: str | Path, *args: object, **kwargs: object) -> None:
        path = Path(path)
        if path.name == f"{JOURNAL}.old" and path.exists():
            undo = path / "undo"
            for each in sorted(undo.iterdir())[:3]:
                each.unlink() if each.is_file() else real_rmtree(each)
            raise Killed("while deleting the journal")
        real_rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(journal.shutil, "rmtree", half_delete)
    with pytest.raises(Killed):
        invoke(capsys, *quantize_args(world, folder, *NEW_RUN))
    monkeypatch.undo()
    journal.recover(folder)
    assert is_whole_new(folder)
