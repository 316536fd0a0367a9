"""Download and unpack the official MIND zips (``newsrec data download``).

The zips are fetched from URLs in ``conf/data/mind.yaml`` (they have moved before, so every URL
is configurable), written to ``<name>.part`` and resumed with HTTP ``Range`` after an interrupted
transfer, verified against the pinned size and sha256, then renamed into place. Only a verified
file ever carries the final name, so a present final file means "done" and re-runs are offline.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from newsrec_dist import __version__
from newsrec_dist.io import atomic_dir, sha256_file

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".sha256"
EXTRACT_MARKER = ".extracted.json"
REQUIRED_FILES = ("news.tsv", "behaviors.tsv")
_USER_AGENT = f"newsrec-dist/{__version__}"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes\s+\*/(\d+)")


class DownloadError(RuntimeError):
    """A download or unpack step failed; the message says what to do about it."""


class UnsafeArchiveError(DownloadError):
    """A zip member would be written outside the destination (zip slip)."""


class _PartTooLong(Exception):
    """416 whose reported file size disagrees with the part: the part is not a prefix of it."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file; ``size``/``sha256`` are ``None`` when nobody has pinned them yet."""

    name: str
    url: str
    size: int | None
    sha256: str | None


# --------------------------------------------------------------------------- config -> files


def resolve_remote_files(
    dataset: str, splits: Sequence[str], files_cfg: Mapping[str, Any], base_url: str
) -> list[RemoteFile]:
    """Turn the ``data.download.files`` config into one :class:`RemoteFile` per requested split."""
    if dataset not in files_cfg:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(sorted(files_cfg))}")
    per_split = files_cfg[dataset]
    if not splits:
        raise ValueError(f"no split requested for {dataset}; valid splits: {', '.join(per_split)}")
    unknown = [split for split in splits if split not in per_split]
    if unknown:
        raise ValueError(
            f"unknown split(s) {', '.join(map(repr, unknown))} for {dataset}; "
            f"valid splits: {', '.join(per_split)}"
        )
    return [_remote_from_entry(f"{dataset}/{split}", per_split[split], base_url) for split in splits]


def _remote_from_entry(where: str, entry: Mapping[str, Any], base_url: str) -> RemoteFile:
    name = entry.get("file")
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"{where}: 'file' must be a plain file name, got {name!r}")
    url = entry.get("url") or f"{base_url.rstrip('/')}/{name}"
    size = entry.get("size")
    sha = entry.get("sha256")
    if size is not None and int(size) < 0:
        raise ValueError(f"{where}: size must be >= 0, got {size!r}")
    if sha is not None:
        sha = str(sha).strip().lower()
        if not _SHA256_RE.fullmatch(sha):
            raise ValueError(f"{where}: sha256 must be 64 hex characters, got {entry.get('sha256')!r}")
    return RemoteFile(name=name, url=url, size=None if size is None else int(size), sha256=sha)


# --------------------------------------------------------------------------- fetch


def fetch(
    remote: RemoteFile,
    cache_dir: Path,
    *,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
) -> Path:
    """Download ``remote`` into ``cache_dir`` (resuming a ``.part``), verify it, return its path."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / remote.name
    if final.is_file():
        if _existing_file_ok(final, remote):
            return final
        log.warning("%s does not match its expected size/sha256; downloading it again", final)
        final.unlink()
    part = final.with_name(final.name + PART_SUFFIX)
    _transfer(remote, part, progress=progress, chunk_size=chunk_size, timeout=timeout)
    actual_sha = _verify_part(part, remote)
    if remote.size is None or remote.sha256 is None:
        _write_sidecar(final, actual_sha, part.stat().st_size)
        log.warning(
            "%s could not be verified (no size/sha256 pinned in the config); computed sha256=%s "
            "size=%d, recorded in %s: pin them in conf/data/mind.yaml",
            remote.name, actual_sha, part.stat().st_size, _sidecar_path(final),
        )
    os.replace(part, final)
    return final


def _existing_file_ok(final: Path, remote: RemoteFile) -> bool:
    """Check a finished file against the config, or the sidecar we recorded when nothing is pinned."""
    size, sha = remote.size, remote.sha256
    if size is None and sha is None:
        recorded = read_sidecar(_sidecar_path(final))
        if recorded is None:  # put there by hand or by an older run: trust the final name
            return True
        sha, size = recorded
    if size is not None and final.stat().st_size != size:
        return False
    return sha is None or sha256_file(final) == sha


def _transfer(remote: RemoteFile, part: Path, *, progress: bool, chunk_size: int, timeout: float) -> None:
    """Bring ``part`` to the full remote content, appending to what an earlier attempt left."""
    offset = part.stat().st_size if part.exists() else 0
    if remote.size is not None and offset > remote.size:  # stale leftover from another file
        part.unlink()
        offset = 0
    if remote.size is not None and offset == remote.size:
        return  # nothing left to fetch; verification decides whether the bytes are right
    try:
        response = _open(remote, offset, timeout)
    except _PartTooLong:  # the part cannot be a prefix of this file: start over
        part.unlink()
        response, offset = _open(remote, 0, timeout), 0
    if response is None:  # 416: the server says the part already holds the whole file
        return
    with response:
        start, total = _response_span(response, offset)
        if remote.size is not None and total is not None and total != remote.size:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{remote.url}: server reports {total} bytes but the config expects {remote.size}; "
                "the file changed upstream or the configured size is wrong"
            )
        if start == 0 and offset:
            log.info("%s: server ignored the Range request; restarting from byte 0", remote.name)
        with open(part, "r+b" if start else "wb") as sink:
            sink.seek(start)
            sink.truncate()
            _copy_body(response, sink, remote, start, total, progress=progress, chunk_size=chunk_size)


def _open(remote: RemoteFile, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """Send the (range) request; ``None`` means 416 with nothing left to fetch."""
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(remote.url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (URL is configured)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            match = _UNSATISFIED_RANGE_RE.fullmatch(err.headers.get("Content-Range", "").strip())
            err.close()
            if match is None or int(match.group(1)) == offset:
                return None
            raise _PartTooLong from err
        raise DownloadError(
            f"{remote.url}: HTTP {err.code} {err.reason}; if the file moved, override "
            "data.download.base_url or the file's url"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{remote.url}: cannot connect ({err}); re-run to retry") from err


def _response_span(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Byte position the body starts at, and the full file size when the server tells it."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != offset:
            raise DownloadError(
                f"{response.url}: unexpected Content-Range {response.headers.get('Content-Range')!r} "
                f"for a resume at byte {offset}"
            )
        total = match.group(3)
        return offset, None if total == "*" else int(total)
    # Plain 200: the whole file, whatever we asked for.
    return 0, None if length is None else int(length)


def _copy_body(
    response: http.client.HTTPResponse,
    sink: IO[bytes],
    remote: RemoteFile,
    start: int,
    total: int | None,
    *,
    progress: bool,
    chunk_size: int,
) -> None:
    """Stream the body to ``sink``; a short body is an interruption, kept for the next resume."""
    length = response.headers.get("Content-Length")
    expected = None if length is None else int(length)
    received = 0
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), disable=not progress,
    )
    with bar:
        task = bar.add_task(remote.name, total=total or remote.size, completed=start)
        try:
            while chunk := response.read(chunk_size):
                sink.write(chunk)
                received += len(chunk)
                bar.update(task, advance=len(chunk))
        except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
            raise _interrupted(remote, sink, start + received, err) from err
    # http.client returns b"" instead of raising when the peer closes before Content-Length.
    if expected is not None and received < expected:
        raise _interrupted(remote, sink, start + received, "connection closed early")


def _interrupted(remote: RemoteFile, sink: IO[bytes], have: int, why: object) -> DownloadError:
    sink.flush()
    return DownloadError(
        f"{remote.url}: transfer interrupted after {have} bytes ({why}); the partial file "
        f"{sink.name} is kept and re-running the same command resumes from there"
    )


def _verify_part(part: Path, remote: RemoteFile) -> str:
    """Check size, then sha256; on mismatch drop the part so the next run starts clean."""
    actual_size = part.stat().st_size
    if remote.size is not None and actual_size != remote.size:
        part.unlink()
        raise DownloadError(
            f"{remote.name}: size mismatch, expected {remote.size} bytes, got {actual_size}; "
            "the partial file was deleted"
        )
    actual_sha = sha256_file(part)
    if remote.sha256 is not None and actual_sha != remote.sha256:
        part.unlink()
        raise DownloadError(
            f"{remote.name}: sha256 mismatch, expected {remote.sha256}, got {actual_sha}; "
            "the partial file was deleted"
        )
    return actual_sha


def _sidecar_path(final: Path) -> Path:
    return final.with_name(final.name + SIDECAR_SUFFIX)


def _write_sidecar(final: Path, sha: str, size: int) -> None:
    # sha256sum-compatible ("sha256sum -c" accepts it), plus the size as a comment line.
    _sidecar_path(final).write_text(f"{sha}  {final.name}\n# size: {size}\n", encoding="utf-8")


def read_sidecar(path: Path) -> tuple[str, int | None] | None:
    """``(sha256, size)`` recorded by an unpinned download, or ``None`` when absent/unreadable."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    sha = lines[0].split()[0].lower() if lines and lines[0].split() else ""
    if not _SHA256_RE.fullmatch(sha):
        return None
    size = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.startswith("# size:")), None)
    return sha, size


# --------------------------------------------------------------------------- extract


def extract(zip_path: Path, dest_dir: Path) -> list[Path]:
    """Unzip into ``dest_dir`` (replacing it atomically); a no-op when already unpacked from this zip."""
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    zip_sha = sha256_file(zip_path)
    done = _already_extracted(dest_dir, zip_sha)
    if done is not None:
        return done
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{zip_path} is not a valid zip ({err}); delete it and re-run") from err
    with archive:
        # Validate every member before writing anything, so a bad archive leaves no trace.
        members = [(info, _safe_member(info.filename, zip_path)) for info in archive.infolist()]
        files = [rel for info, rel in members if not info.is_dir()]
        with atomic_dir(dest_dir) as tmp:
            for info, rel in members:
                target = tmp.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            marker = {"zip": zip_path.name, "sha256": zip_sha, "files": [rel.as_posix() for rel in files]}
            (tmp / EXTRACT_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    return [dest_dir.joinpath(*rel.parts) for rel in files]


def _safe_member(name: str, zip_path: Path) -> PurePosixPath:
    """Relative path for a member, refusing anything that could land outside the destination."""
    rel = PurePosixPath(name.replace("\\", "/"))  # zips made on Windows may use backslashes
    drive = re.match(r"[A-Za-z]:", name) is not None
    if rel.is_absolute() or drive or ".." in rel.parts or not rel.parts:
        raise UnsafeArchiveError(
            f"{zip_path}: refusing to extract member {name!r} (absolute path or '..' would escape "
            "the destination); the archive is not a genuine MIND zip"
        )
    return rel


def _already_extracted(dest_dir: Path, zip_sha: str) -> list[Path] | None:
    marker_path = dest_dir / EXTRACT_MARKER
    if not marker_path.is_file():
        return None
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("sha256") != zip_sha:
        return None
    paths = [dest_dir.joinpath(*PurePosixPath(rel).parts) for rel in marker.get("files", [])]
    return paths if all(path.is_file() for path in paths) else None


# --------------------------------------------------------------------------- orchestration


def download_mind(
    dataset: str,
    splits: Sequence[str],
    files_cfg: Mapping[str, Any],
    base_url: str,
    cache_dir: Path,
    raw_dir: Path,
    progress: bool = True,
) -> dict[str, Path]:
    """Fetch and unpack each split's zip into ``raw_dir/<split>/``; returns split -> directory."""
    remotes = resolve_remote_files(dataset, splits, files_cfg, base_url)
    out: dict[str, Path] = {}
    for split, remote in zip(splits, remotes):
        zip_path = fetch(remote, Path(cache_dir), progress=progress)
        split_dir = Path(raw_dir) / split
        extract(zip_path, split_dir)
        missing = [name for name in REQUIRED_FILES if not (split_dir / name).is_file()]
        if missing:
            found = sorted(p.name for p in split_dir.iterdir() if p.name != EXTRACT_MARKER)
            raise DownloadError(
                f"{remote.name}: expected {', '.join(REQUIRED_FILES)} at the top level of the zip, "
                f"missing {', '.join(missing)} (found: {', '.join(found) or 'nothing'})"
            )
        out[split] = split_dir
    return out
