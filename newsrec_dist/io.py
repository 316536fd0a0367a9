"""Artifact helpers: atomic directory writes, file hashing and stage manifests.

Every stage writes its output directory through :func:`atomic_dir` (temp dir + rename), so a
kill leaves either the previous complete artifact or nothing, and records a ``manifest.json``
that lets a re-run with the same inputs and config skip the stage.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from newsrec_dist import __version__

if TYPE_CHECKING:
    import pyarrow as pa

MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = ".progress.json"
_HASH_CHUNK = 8 * 1024 * 1024


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
    "train": ("train", "models", "eval"), "eval": ("eval",),
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
    _replace_dir(tmp, final)


def _replace_dir(source: Path, final: Path) -> None:
    """Move a finished directory into place; readers see the old or the new one, never a mix."""
    if final.exists():
        trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        source.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        source.rename(final)


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
        self.state: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        progress = self.path / PROGRESS_NAME
        if progress.is_file():
            saved = json.loads(progress.read_text(encoding="utf-8"))
            if saved.get("fingerprint") == self.fingerprint:
                return dict(saved["state"])
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return {}

    def save(self, state: dict[str, Any]) -> None:
        self.state = state
        body = {"fingerprint": self.fingerprint, "state": state}
        atomic_write_text(self.path / PROGRESS_NAME, json.dumps(body, default=str))

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def publish(self) -> None:
        (self.path / PROGRESS_NAME).unlink(missing_ok=True)
        _replace_dir(self.path, self.final)


def write_part(directory: Path, table: pa.Table) -> Path:
    """Write one Parquet part of a resumable stage under a fresh name; a part is complete or absent."""
    import pyarrow.parquet as pq

    name = f"part-{uuid.uuid4().hex[:12]}.parquet"
    pq.write_table(table, Path(directory) / f".{name}.tmp")
    return (Path(directory) / f".{name}.tmp").rename(Path(directory) / name)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file via temp file + rename so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
        body = asdict(self) | {"fingerprint": self.fingerprint()}
        atomic_write_text(Path(directory) / MANIFEST_NAME, json.dumps(body, indent=2, default=str))


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


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
