"""Artifact helpers: atomic directory writes, file hashing and stage manifests.

Every stage writes its output directory through :func:`atomic_dir` (temp dir + rename), so a
kill leaves either the previous complete artifact or nothing, and records a ``manifest.json``
that lets a re-run with the same inputs and config skip the stage. Every rename here goes through
:func:`_replace_durably`, which fsyncs before and after it, so this holds after a machine crash too.
:func:`run_lock` keeps a second ``newsrec run`` off a work directory that one is using.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from newsrec_dist import __version__

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = ".progress.json"
RUN_LOCK_NAME = ".newsrec-run.lock"
RUN_LOCK_INFO = ".newsrec-run.json"  # who holds the lock: pid, host, start time, command
RUN_LOCK_ENV = "NEWSREC_RUN_LOCK"  # set while a run holds the lock; the processes it starts inherit it
_HASH_CHUNK = 8 * 1024 * 1024
_MTIME_SLACK_NS = 2_000_000_000  # coarse file-system clocks (2 s on FAT) may date a file before the save began

log = logging.getLogger(__name__)
T = TypeVar("T")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (MIND-large files are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    repo_root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo_root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}"


# The subpackages whose code makes each stage's artifact (manifest stage names; generate-<task> → generate).
STAGE_CODE: dict[str, tuple[str, ...]] = {
    "synth": ("data",), "prepare": ("data",), "keywords": ("graphs",), "graphs": ("graphs",),
    "node2vec": ("embed",), "encoder": ("encoder",), "glove": ("encoder",), "generate": ("generate",),
    "train": ("train", "models", "eval"), "search": ("train", "models", "eval"), "eval": ("eval",),
}


@functools.cache
def code_fingerprint(stage: str) -> str:
    """Hash of the sources a stage runs: editing them re-runs the stage, editing anything else does not.

    Computed from the files (not git), so it holds in a Ray job's copy of the project without ``.git``.
    """
    package = Path(__file__).resolve().parent
    subpackages = STAGE_CODE.get(stage.split("-")[0])
    if subpackages is None:
        raise KeyError(f"stage {stage!r} has no entry in STAGE_CODE")
    digest = hashlib.sha256()
    for path in sorted(file for name in subpackages for file in (package / name).rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success it replaces ``final`` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_durably(tmp, final)


def _fsync(path: Path) -> None:
    """Flush one file or directory to disk (a directory's fsync makes its entries, i.e. renames, durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:  # a filesystem that cannot fsync (some FUSE mounts) says so; EIO and the like raise
        if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path, changed_since_ns: int = 0) -> None:
    """fsync a file, or every file and directory under ``root`` (children before their directory); files last
    written before ``changed_since_ns`` were synced by an earlier call and are skipped."""
    if not root.is_dir():
        _fsync(root)
        return
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink() and path.stat().st_mtime_ns >= changed_since_ns:
                _fsync(path)
        _fsync(Path(directory))


def _replace_durably(source: Path, final: Path) -> None:
    """Rename a finished file or directory onto ``final``: readers see the old or the new one, never a mix,
    and that survives a machine crash, not only a kill.

    Without the first fsync the rename can reach the disk before the data (after a crash: a complete-looking
    artifact of empty or torn files); without the second the rename itself can be lost.
    """
    source, final = Path(source), Path(final)
    _fsync_tree(source)
    old = None
    if source.is_dir() and final.exists():  # a rename cannot replace a non-empty directory: move it aside
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
    os.replace(source, final)
    _fsync(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class ResumableDir:
    """Work directory of a long stage that survives ``kill -9``: ``.partial-<name>`` beside the output.

    The stage saves its progress (any JSON) after each finished unit of work; a re-run with the same
    fingerprint gets the saved progress back and continues, a different fingerprint starts afresh.
    :meth:`publish` moves the finished directory into place.
    """

    def __init__(self, final: Path, fingerprint: str) -> None:
        self.final = Path(final)
        self.path = self.final.parent / f".partial-{self.final.name}"
        self.fingerprint = fingerprint
        self._synced_ns = 0  # files written before this were synced by an earlier save
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        saved = self._saved_state()
        if saved is not None:
            return saved
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return {}

    def _saved_state(self) -> dict[str, Any] | None:
        """The saved state when it is this fingerprint's; None for none, another's, or an unreadable file."""
        progress = self.path / PROGRESS_NAME
        if not progress.is_file():
            return None
        try:
            saved = json.loads(progress.read_text(encoding="utf-8"))
            return dict(saved["state"]) if saved.get("fingerprint") == self.fingerprint else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # torn, garbage, wrong shape
            log.warning("%s is unreadable (%s); starting this unit of work afresh", progress, error)
            return None

    def save(self, state: dict[str, Any]) -> None:
        """Record progress once the work it counts is on disk: saved progress never outlives its files."""
        self.state = state
        # only what changed since the last save: a stage saving after each of thousands of parts (synth, prepare
        # at MIND-large) would otherwise fsync every earlier part again each time
        started = time.time_ns()
        _fsync_tree(self.path, self._synced_ns)
        self._synced_ns = started - _MTIME_SLACK_NS
        body = {"fingerprint": self.fingerprint, "state": state}
        atomic_write_text(self.path / PROGRESS_NAME, json.dumps(body, default=str))

    def restore(self, path: Path, load: Callable[[Path], T]) -> T | None:
        """``load(path)`` of a checkpoint of this work; when it is unreadable, warn naming it, start afresh
        (empty directory, empty state) and return None, so the caller redoes the unit instead of crashing."""
        try:
            return load(path)
        except Exception as error:  # noqa: BLE001  any loader's error (zip, pickle, JSON, EOF) means a torn file
            log.warning("%s is unreadable (%s: %s); starting this unit of work afresh", path,
                        type(error).__name__, error)
            self.discard()
            self.path.mkdir(parents=True)
            self.state = {}
            return None

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def publish(self) -> None:
        (self.path / PROGRESS_NAME).unlink(missing_ok=True)
        _replace_durably(self.path, self.final)


def write_part(directory: Path, table: pa.Table) -> Path:
    """Write one Parquet part of a resumable stage under a fresh name; a part is complete or absent."""
    import pyarrow.parquet as pq

    name = f"part-{uuid.uuid4().hex[:12]}.parquet"
    pq.write_table(table, Path(directory) / f".{name}.tmp")
    _replace_durably(Path(directory) / f".{name}.tmp", Path(directory) / name)
    return Path(directory) / name


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via temp file + rename so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    _replace_durably(tmp, path)


@dataclass
class Manifest:
    """What produced an artifact: enough to decide whether re-running the stage is a no-op."""

    stage: str
    inputs: dict[str, str]
    config: dict[str, Any]
    rows: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    code_version: str = field(default_factory=code_version)
    created_unix: float = field(default_factory=time.time)

    def fingerprint(self) -> str:
        """Hash of stage, inputs, config and the stage's code: equal fingerprints mean equal outputs."""
        payload = json.dumps([self.stage, self.inputs, self.config, code_fingerprint(self.stage)], sort_keys=True,
                             default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def write(self, directory: Path) -> None:
        """The manifest as JSON, secrets in its config masked (the fingerprint still holds the real values)."""
        from newsrec_dist.config import masked  # here: config pulls in Hydra, most readers of io need none of it

        body = asdict(self) | {"config": masked(self.config), "fingerprint": self.fingerprint()}
        atomic_write_text(Path(directory) / MANIFEST_NAME, json.dumps(body, indent=2, default=str))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The artifact's manifest; None when it has none or an unreadable one (its stage then runs again)."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        log.warning("%s is unreadable (%s); its stage will run again", path, error)
        return None


def artifact_fingerprint(directory: Path) -> str:
    """The fingerprint of a finished artifact, the input identity of the stages that read it."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"{directory}: no manifest.json; run the stage that makes it first")
    return str(manifest["fingerprint"])


def is_up_to_date(directory: Path, stage: str, inputs: Mapping[str, str], config: Mapping[str, Any]) -> bool:
    """True when ``directory`` holds a complete artifact made from these inputs and config."""
    existing = read_manifest(directory)
    if existing is None:
        return False
    wanted = Manifest(stage=stage, inputs=dict(inputs), config=dict(config))
    return existing.get("fingerprint") == wanted.fingerprint()


class RunLockedError(RuntimeError):
    """Another run holds the work directory."""


@contextlib.contextmanager
def run_lock(work_dir: Path) -> Iterator[None]:
    """Hold ``work_dir`` for one run: a second run on it fails at once with a message naming the first.

    The lock is an flock (``filelock``), which the kernel drops when its process dies, even by ``kill -9`` or a
    crash: a dead run's lock file blocks nothing. (Where a filesystem has no flock, filelock falls back to a lock
    file that it breaks once its owner's pid is gone.) Processes the run starts inherit ``RUN_LOCK_ENV`` and pass
    through: Lightning's DDP re-runs the same command once per rank.
    """
    from filelock import FileLock, Timeout

    path = Path(work_dir).resolve() / RUN_LOCK_NAME
    if os.environ.get(RUN_LOCK_ENV) == str(path):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLockedError(f"{path.parent} is in use by another run ({_holder(path)}); wait for it to end or "
                             "give this run another paths.work_dir") from None
    try:
        atomic_write_text(path.with_name(RUN_LOCK_INFO), json.dumps(_this_process()))
        os.environ[RUN_LOCK_ENV] = str(path)
        yield
    finally:
        os.environ.pop(RUN_LOCK_ENV, None)
        path.with_name(RUN_LOCK_INFO).unlink(missing_ok=True)  # before the release: never the next holder's
        lock.release()


def _this_process() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def _holder(lock: Path) -> str:
    """The lock holder in words, from the info file it wrote after taking the lock."""
    try:
        info = json.loads(lock.with_name(RUN_LOCK_INFO).read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):  # it has the lock but has not written the file yet
        return f"its details are not in {lock.with_name(RUN_LOCK_INFO)} yet"
