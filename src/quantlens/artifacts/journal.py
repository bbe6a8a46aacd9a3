"""Run folders that are always whole: a command's writes commit as one unit.

A command that writes into a run folder does it inside `writing(folder, command)`:

1. it takes the folder's lock (one writer at a time, see `lock`);
2. it finishes whatever a killed writer left (`recover`);
3. it snapshots the folder: every file is hard-linked into `.quantlens-txn/undo/` (every write
   replaces a file through a rename, so the links keep the old contents at no copy cost; a
   writer that rewrote a file in place would change its snapshot too, so none may);
4. the command writes as it likes;
5. it commits: `run.json` (the manifest: every file's sha256 and the command that wrote it) is
   written last, carrying the transaction's id, and the journal is removed.

A kill before step 5's manifest reaches its name leaves the journal without a matching manifest:
the next command that opens the folder rolls back to the snapshot (the old run) and says so
(`notify`: the half-written files of a folder copied mid-write go too, never silently). A kill
after it leaves the new run, and the journal is just removed. A failure inside the command (an
error, Ctrl-C) rolls back at once. Caches (`calibration-cache`, `search-cache`) are outside
the unit: their entries are atomic, keyed by content and validated on read, and a killed or
failed search resumes from them (a failed first run in a new folder leaves only them).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from quantlens.artifacts import Artifact, write_text_atomic
from quantlens.artifacts import lock as run_lock
from quantlens.errors import UserError

JOURNAL = ".quantlens-txn"
MANIFEST = "run.json"
SEARCH_CACHE = "search-cache"
CACHE_DIRS = ("calibration-cache", SEARCH_CACHE)
_UNTRACKED = {
    JOURNAL,
    f"{JOURNAL}.new",
    f"{JOURNAL}.old",
    run_lock.LOCK_FILE,
    MANIFEST,
    *CACHE_DIRS,
}


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    command: str
    txn: str


class RunManifest(Artifact):
    """Which command wrote each file of the run folder, and its content hash."""

    kind = "run-manifest"
    txn: str = ""
    files: dict[str, FileEntry] = Field(default_factory=dict)


def tracked_files(folder: Path) -> dict[str, Path]:
    """The folder's files that belong to the run (relative POSIX name -> path)."""
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        if here == folder:
            dirs[:] = [d for d in dirs if d not in _UNTRACKED]
        for name in files:
            path = here / name
            rel = path.relative_to(folder).as_posix()
            if rel in _UNTRACKED or (name.startswith(".") and name.endswith(".tmp")):
                continue
            found[rel] = path
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> RunManifest | None:
    path = folder / MANIFEST
    return RunManifest.load(path) if path.is_file() else None


Notify = Callable[[str], None]


@contextmanager
def writing(folder: Path, command: str, notify: Notify | None = None) -> Iterator[Path]:
    """Run the body as one unit of writes into `folder` (see the module's docstring). A run
    that fails in a folder it created leaves no run behind (only its caches, once a search
    cached evaluations there). `notify` hears of a killed
    writer's leftovers undone on the way in (default: a warning)."""
    created = _make_folder(folder)
    # Not ours to remove if another writer locked it first (it found the folder we made).
    run_lock.acquire(folder, command)
    try:
        with _unit(folder, command, notify):
            yield folder
    except (Exception, KeyboardInterrupt):
        if created:  # removed while still held, so no writer can be inside
            _remove_all_but_caches(folder)
        raise
    finally:
        run_lock.release(folder)


@contextmanager
def reading(folder: Path, command: str, notify: Notify | None = None) -> Iterator[Path]:
    """`writing` for a command that mostly reads (`report`). A read-only folder (archived,
    shared) cannot be locked, but nobody can be writing it either: it is read as it is,
    unless a killed writer left it unfinished."""
    if os.access(folder, os.W_OK):
        with writing(folder, command, notify):
            yield folder
        return
    if _journal(folder).exists():
        raise UserError(
            f"run folder {folder} holds an unfinished write and is read-only",
            "make it writable and run the command again (that finishes or undoes the write)",
        )
    yield folder


@contextmanager
def _unit(folder: Path, command: str, notify: Notify | None) -> Iterator[None]:
    if _nested(folder):  # a flow's inner stage: the outer command owns the unit
        yield
        return
    undone = recover(folder)
    if undone is not None:
        (notify or _warn)(undone)
    txn = _begin(folder, command)
    _ACTIVE[folder.resolve()] = txn
    try:
        yield
    except (Exception, KeyboardInterrupt):
        _rollback(folder)
        raise
    finally:
        _ACTIVE.pop(folder.resolve(), None)
    _commit(folder, txn, command)


F = TypeVar("F", bound=Callable[..., Any])


def stage(command: str) -> Callable[[F], F]:
    """Decorate a stage `fn(path, opts, ...)` that writes into `opts.run_dir`: called from the
    library, it runs as one unit under the folder's lock as a command does (inside a command,
    which already holds the unit, it changes nothing)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def run(path: Any, opts: Any, *args: Any, **kwargs: Any) -> Any:
            with writing(Path(opts.run_dir), command):
                return fn(path, opts, *args, **kwargs)

        return cast(F, run)

    return decorate


# Transactions open in this process: resolved folder -> id.
_ACTIVE: dict[Path, str] = {}


def _nested(folder: Path) -> bool:
    return folder.resolve() in _ACTIVE


def in_transaction(folder: Path) -> bool:
    return _nested(folder)


def _journal(folder: Path) -> Path:
    return folder / JOURNAL


def _make_folder(folder: Path) -> bool:
    """Create the run folder; True when it did not exist (so a failed first run leaves none)."""
    if folder.is_dir():
        return False
    if folder.exists():
        raise UserError(f"run folder {folder} is a file", "pass a folder with -o")
    try:
        folder.mkdir(parents=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise UserError(
            f"cannot create run folder {folder}: a parent is not a folder", "pass a folder with -o"
        ) from exc
    except OSError as exc:
        raise UserError(
            f"cannot create run folder {folder}: {exc.strerror}", "pass a folder you can write"
        ) from exc
    return True


def _remove_all_but_caches(folder: Path) -> None:
    """What a failed first run leaves: no run, but its filled caches once the search cache
    holds evaluations (a search that failed after half an hour resumes from them with
    `--resume`; one whose export failed keeps more, see `flows.search_model`); otherwise
    nothing (bad input fails before that and leaves no file)."""
    kept = {d for d in CACHE_DIRS if any(p.is_file() for p in (folder / d).rglob("*"))}
    if SEARCH_CACHE not in kept:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for child in folder.iterdir():
        if child.name in kept or child.name == run_lock.LOCK_FILE:  # the lock: released after
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def _begin(folder: Path, command: str) -> str:
    """Snapshot the folder into the journal; the journal appears (renamed) only when whole."""
    txn = uuid.uuid4().hex
    staging = folder / f"{JOURNAL}.new"
    shutil.rmtree(staging, ignore_errors=True)  # a snapshot killed half-way
    undo = staging / "undo"
    undo.mkdir(parents=True)
    for rel, path in tracked_files(folder).items():
        copy = undo / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(path, copy)
    (staging / "id").write_text(txn)
    (staging / "command").write_text(command)  # named when a recovery undoes this write
    os.replace(staging, _journal(folder))
    return txn


def _drop_journal(folder: Path) -> None:
    """Remove the journal in one step (a rename), then delete it: a journal half deleted by a
    kill would read as an uncommitted one with a partial snapshot."""
    trash = folder / f"{JOURNAL}.old"
    shutil.rmtree(trash, ignore_errors=True)
    if _journal(folder).exists():
        os.replace(_journal(folder), trash)
    shutil.rmtree(trash, ignore_errors=True)


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copy2(source, target)


def recover(folder: Path) -> str | None:
    """Finish what a killed writer left: its new run when its manifest landed, else the old
    run. Every step can be repeated, so a kill during recovery is recovered next time. Says
    (one line) what was undone when it put the old run back; None otherwise."""
    journal = _journal(folder)
    shutil.rmtree(folder / f"{JOURNAL}.new", ignore_errors=True)
    shutil.rmtree(folder / f"{JOURNAL}.old", ignore_errors=True)
    for stray in folder.rglob(".*.tmp"):  # temporary files of writes a kill cut short
        if JOURNAL not in stray.parts:
            stray.unlink(missing_ok=True)
    if not journal.is_dir():
        return None
    txn, command = _journal_text(journal, "id"), _journal_text(journal, "command")
    manifest = folder / MANIFEST
    committed = manifest.is_file() and txn and _manifest_txn(manifest) == txn
    undone = None
    if not committed:
        removed, restored = _rollback(folder)
        undone = (
            f"run folder {folder}: {f'`{command}`' if command else 'a command'} stopped before "
            f"it finished writing it (killed, or the folder was copied mid-write); undone to the "
            f"folder's last whole run ({removed} files removed, {restored} restored)"
        )
    _drop_journal(folder)
    return undone


def _journal_text(journal: Path, name: str) -> str:
    try:
        return (journal / name).read_text().strip()
    except OSError:  # a journal written before the file existed, or damaged
        return ""


def _manifest_txn(path: Path) -> str:
    try:
        return RunManifest.load(path).txn
    except UserError:
        return ""


def _rollback(folder: Path) -> tuple[int, int]:
    """Put the snapshot back: files the run added go, files it replaced or removed return.
    Returns how many files went and how many came back."""
    undo = _journal(folder) / "undo"
    old = {p.relative_to(undo).as_posix(): p for p in undo.rglob("*") if not p.is_dir()}
    removed = restored = 0
    for rel, path in tracked_files(folder).items():
        if rel not in old:
            path.unlink(missing_ok=True)
            removed += 1
    for rel, saved in old.items():
        target = folder / rel
        if target.exists() and os.path.samefile(saved, target):
            continue
        restored += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        # Linked, not moved: the snapshot stays whole until the end, so a kill in the middle
        # of a rollback leaves a journal the next recovery replays in full.
        _link_or_copy(saved, target.with_name(f".{target.name}.restore.tmp"))
        os.replace(target.with_name(f".{target.name}.restore.tmp"), target)
    _drop_new_dirs(folder, undo)
    _drop_journal(folder)
    return removed, restored


def _drop_new_dirs(folder: Path, undo: Path) -> None:
    """Remove the empty folders the run created (those the snapshot lacks)."""
    for root, _dirs, _files in os.walk(folder, topdown=False):
        here = Path(root)
        rel = here.relative_to(folder)
        if here == folder or rel.parts[0] in _UNTRACKED:
            continue
        if not any(here.iterdir()) and not (undo / rel).is_dir():
            here.rmdir()


def _commit(folder: Path, txn: str, command: str) -> None:
    """Record what changed in the manifest (the commit point), then drop the journal."""
    undo = _journal(folder) / "undo"
    try:
        manifest = read_manifest(folder)
    except UserError:  # damaged: start a new one, vouching for the files as they are now
        manifest, undo = None, folder / f"{JOURNAL}.none"
    entries = dict(manifest.files) if manifest is not None else {}
    current = tracked_files(folder)
    for rel in list(entries):
        if rel not in current:
            del entries[rel]
    for rel, path in current.items():
        saved = undo / rel
        unchanged = saved.exists() and os.path.samefile(saved, path)
        if unchanged and rel in entries:
            continue
        entries[rel] = FileEntry(sha256=sha256_of(path), command=command, txn=txn)
    write_text_atomic(
        folder / MANIFEST,
        RunManifest(txn=txn, files=dict(sorted(entries.items()))).to_json() + "\n",
    )
    _drop_journal(folder)


def mixed_files(folder: Path, names: list[str]) -> list[str]:
    """Of `names` (files of the folder), those the manifest contradicts: changed after the
    command that wrote them (another run's copy, an edit, a write that bypassed the lock).
    Files it does not list (written by the library outside a unit, or before manifests) are
    not judged."""
    try:
        manifest = read_manifest(folder)
    except UserError as exc:
        raise UserError(
            f"run folder {folder}: its manifest {MANIFEST} is damaged ({exc.problem})",
            "re-run the commands into a fresh folder with -o",
        ) from exc
    if manifest is None:
        return []
    wrong = []
    for name in names:
        path = folder / name
        entry = manifest.files.get(name)
        if path.is_file() and entry is not None and entry.sha256 != sha256_of(path):
            wrong.append(name)
    return wrong
