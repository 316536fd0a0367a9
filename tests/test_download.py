"""MIND download against a real HTTP server on 127.0.0.1 (no mocks): resume, verify, unzip."""

from __future__ import annotations

import hashlib
import logging
import random
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import run

from newsrec_dist.data.download import (
    EXTRACT_MARKER,
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    download_mind,
    extract,
    fetch,
    read_sidecar,
    resolve_remote_files,
)

CHUNK = 16 * 1024  # small chunks so an interrupted transfer stops mid-file


@dataclass
class ServerState:
    """What the test server serves, its failure switches, and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    ignore_range: bool = False
    drop_after: int | None = None  # send only this many body bytes, then close the connection
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_served: int = 0
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        state = self.server.state
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((name, range_header))
        data = state.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        if range_header and not state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start, status = int(match.group(1)), 206
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if state.drop_after is not None:
            body = body[: state.drop_after]
            self.close_connection = True
        self.wfile.write(body)
        with state.lock:
            state.bytes_served += len(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (keep test output quiet)
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture
def server() -> Iterator[ServerState]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState(base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def make_mind_zip(path: Path, *, with_news: bool = True) -> bytes:
    """A MIND-shaped zip; the incompressible embedding file makes it big enough to interrupt."""
    news = "N1\tsports\tsoccer\tCup final tonight\tTwo teams meet.\thttps://x/1\t[]\t[]\n" \
           "N2\tnews\tworld\tSummit ends\tLeaders agree.\thttps://x/2\t[]\t[]\n"
    behaviors = "1\tU1\t11/11/2019 9:05:58 AM\tN1\tN2-1 N1-0\n2\tU2\t11/12/2019 8:00:00 AM\t\tN1-1\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if with_news:
            archive.writestr("news.tsv", news)
        archive.writestr("behaviors.tsv", behaviors)
        archive.writestr("entity_embedding.vec", random.Random(0).randbytes(200_000))
        archive.writestr("relation_embedding.vec", "R1\t0.1\t0.2\n")
    return path.read_bytes()


@pytest.fixture
def mind_zip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_mind_zip(tmp_path_factory.mktemp("zips") / "built.zip")


def pinned(server: ServerState, name: str, data: bytes) -> RemoteFile:
    server.files[name] = data
    return RemoteFile(name, server.url(name), len(data), hashlib.sha256(data).hexdigest())


def files_cfg(data: bytes | None, name: str = "MINDdemo_train.zip") -> dict:
    size = None if data is None else len(data)
    sha = None if data is None else hashlib.sha256(data).hexdigest()
    return {
        "mind-demo": {"train": {"file": name, "url": None, "size": size, "sha256": sha}},
        "mind-large": {split: {"file": f"L_{split}.zip", "url": None, "size": None, "sha256": None}
                       for split in ("train", "dev", "test")},
    }


def test_plain_download_and_extract(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    server.files["MINDdemo_train.zip"] = mind_zip
    out = download_mind("mind-demo", ["train"], files_cfg(mind_zip), server.base_url,
                        tmp_path / "cache", tmp_path / "raw", progress=False)
    assert out == {"train": tmp_path / "raw" / "train"}
    cached = tmp_path / "cache" / "MINDdemo_train.zip"
    assert cached.read_bytes() == mind_zip
    assert not cached.with_name(cached.name + ".part").exists()
    names = {p.name for p in out["train"].iterdir()}
    assert {"news.tsv", "behaviors.tsv", "entity_embedding.vec", "relation_embedding.vec"} <= names
    assert (out["train"] / "news.tsv").read_text().startswith("N1\tsports")
    # Second run: file verified offline, extraction skipped thanks to the marker.
    before = len(server.requests)
    marker_mtime = (out["train"] / EXTRACT_MARKER).stat().st_mtime_ns
    download_mind("mind-demo", ["train"], files_cfg(mind_zip), server.base_url,
                  tmp_path / "cache", tmp_path / "raw", progress=False)
    assert len(server.requests) == before
    assert (out["train"] / EXTRACT_MARKER).stat().st_mtime_ns == marker_mtime


def test_interrupted_transfer_resumes(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    remote = pinned(server, "a.zip", mind_zip)
    part = tmp_path / "a.zip.part"
    server.drop_after = len(mind_zip) // 3
    with pytest.raises(DownloadError, match="re-running .* resumes"):
        fetch(remote, tmp_path, progress=False, chunk_size=CHUNK, timeout=5)
    assert part.stat().st_size == len(mind_zip) // 3
    assert not (tmp_path / "a.zip").exists()

    server.drop_after = None
    path = fetch(remote, tmp_path, progress=False, chunk_size=CHUNK, timeout=5)
    assert server.requests[-1] == ("a.zip", f"bytes={len(mind_zip) // 3}-")
    assert server.bytes_served < 2 * len(mind_zip)
    assert path.read_bytes() == mind_zip and not part.exists()


def test_server_ignoring_range_restarts(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    remote = pinned(server, "a.zip", mind_zip)
    server.drop_after = 1000
    with pytest.raises(DownloadError):
        fetch(remote, tmp_path, progress=False, chunk_size=CHUNK, timeout=5)
    server.drop_after, server.ignore_range = None, True
    path = fetch(remote, tmp_path, progress=True, chunk_size=CHUNK, timeout=5)  # bar path too
    assert server.requests[-1][1] == "bytes=1000-"  # asked to resume, got the whole file
    assert path.read_bytes() == mind_zip


def test_complete_part_answered_416(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    server.files["a.zip"] = mind_zip
    (tmp_path / "a.zip.part").write_bytes(mind_zip)
    remote = RemoteFile("a.zip", server.url("a.zip"), None, hashlib.sha256(mind_zip).hexdigest())
    path = fetch(remote, tmp_path, progress=False, timeout=5)
    assert server.requests == [("a.zip", f"bytes={len(mind_zip)}-")]
    assert server.bytes_served == 0 and path.read_bytes() == mind_zip


def test_part_longer_than_remote_restarts(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    server.files["a.zip"] = mind_zip
    (tmp_path / "a.zip.part").write_bytes(mind_zip + b"junk")
    path = fetch(RemoteFile("a.zip", server.url("a.zip"), None, None), tmp_path, progress=False, timeout=5)
    assert [rng for _, rng in server.requests] == [f"bytes={len(mind_zip) + 4}-", None]
    assert path.read_bytes() == mind_zip


def test_checksum_mismatch(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    server.files["a.zip"] = mind_zip
    wrong = RemoteFile("a.zip", server.url("a.zip"), len(mind_zip), "0" * 64)
    with pytest.raises(DownloadError, match=f"expected {'0' * 64}, got {hashlib.sha256(mind_zip).hexdigest()}"):
        fetch(wrong, tmp_path, progress=False, timeout=5)
    assert sorted(tmp_path.iterdir()) == []


def test_size_mismatch(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    server.files["a.zip"] = mind_zip
    sha = hashlib.sha256(mind_zip).hexdigest()
    # Server announces a different size: refused before the body is downloaded.
    with pytest.raises(DownloadError, match=f"{len(mind_zip)} bytes but the config expects {len(mind_zip) + 1}"):
        fetch(RemoteFile("a.zip", server.url("a.zip"), len(mind_zip) + 1, sha), tmp_path, progress=False)
    assert sorted(tmp_path.iterdir()) == []
    # A finished part that is shorter than pinned (server answers 416): checked after transfer.
    (tmp_path / "a.zip.part").write_bytes(mind_zip)
    with pytest.raises(DownloadError, match=f"expected {len(mind_zip) + 7} bytes, got {len(mind_zip)}"):
        fetch(RemoteFile("a.zip", server.url("a.zip"), len(mind_zip) + 7, sha), tmp_path, progress=False)
    assert sorted(tmp_path.iterdir()) == []


def test_unpinned_download_warns_and_writes_sidecar(
    server: ServerState, mind_zip: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.files["a.zip"] = mind_zip
    remote = RemoteFile("a.zip", server.url("a.zip"), None, None)
    with caplog.at_level(logging.WARNING, logger="newsrec_dist.data.download"):
        path = fetch(remote, tmp_path, progress=False, timeout=5)
    assert "could not be verified" in caplog.text
    assert path.read_bytes() == mind_zip
    sidecar = tmp_path / "a.zip.sha256"
    assert read_sidecar(sidecar) == (hashlib.sha256(mind_zip).hexdigest(), len(mind_zip))
    assert sidecar.read_text().startswith(f"{hashlib.sha256(mind_zip).hexdigest()}  a.zip\n")
    # Re-run is offline; a corrupted file no longer matches the sidecar and is fetched again.
    fetch(remote, tmp_path, progress=False, timeout=5)
    assert len(server.requests) == 1
    path.write_bytes(b"corrupt")
    assert fetch(remote, tmp_path, progress=False, timeout=5).read_bytes() == mind_zip
    assert len(server.requests) == 2


def test_already_downloaded_is_offline(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    (tmp_path / "a.zip").write_bytes(mind_zip)
    remote = RemoteFile("a.zip", server.url("a.zip"), len(mind_zip), hashlib.sha256(mind_zip).hexdigest())
    assert fetch(remote, tmp_path, progress=False) == tmp_path / "a.zip"
    assert server.requests == []


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil_abs.txt", "sub/../../evil.txt"])
def test_zip_slip_rejected(member: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("news.tsv", "N1\n")
        archive.writestr(member, "pwned")
    dest = tmp_path / "out" / "train"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract"):
        extract(bad, dest)
    assert not (tmp_path / "out").exists()  # validated before anything was created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]
    assert not Path("/tmp/evil_abs.txt").exists()


def test_extract_reextracts_when_zip_changes(tmp_path: Path) -> None:
    make_mind_zip(tmp_path / "one.zip")
    dest = tmp_path / "train"
    files = extract(tmp_path / "one.zip", dest)
    assert {p.name for p in files} == {"news.tsv", "behaviors.tsv", "entity_embedding.vec",
                                       "relation_embedding.vec"}
    (dest / "news.tsv").unlink()  # damaged extraction: marker no longer sufficient
    extract(tmp_path / "one.zip", dest)
    with zipfile.ZipFile(tmp_path / "one.zip") as archive:
        assert (dest / "news.tsv").read_bytes() == archive.read("news.tsv")
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as archive:
        archive.writestr("news.tsv", "only\n")
    assert [p.name for p in extract(tmp_path / "two.zip", dest)] == ["news.tsv"]
    assert sorted(p.name for p in dest.iterdir()) == [EXTRACT_MARKER, "news.tsv"]
    assert (dest / "news.tsv").read_text() == "only\n"


def test_missing_required_file(server: ServerState, tmp_path: Path) -> None:
    data = make_mind_zip(tmp_path / "nonews.zip", with_news=False)
    server.files["MINDdemo_train.zip"] = data
    with pytest.raises(DownloadError, match="missing news.tsv"):
        download_mind("mind-demo", ["train"], files_cfg(data), server.base_url,
                      tmp_path / "cache", tmp_path / "raw", progress=False)


def test_resolve_remote_files() -> None:
    cfg = files_cfg(None)
    cfg["mind-demo"]["train"]["url"] = "https://mirror.example/demo.zip"
    [demo] = resolve_remote_files("mind-demo", ["train"], cfg, "https://base.example/release/")
    assert demo == RemoteFile("MINDdemo_train.zip", "https://mirror.example/demo.zip", None, None)
    large = resolve_remote_files("mind-large", ["dev", "test"], cfg, "https://base.example/release/")
    assert [r.url for r in large] == ["https://base.example/release/L_dev.zip",
                                      "https://base.example/release/L_test.zip"]
    with pytest.raises(ValueError, match="unknown dataset 'mind-huge'.*mind-demo, mind-large"):
        resolve_remote_files("mind-huge", ["train"], cfg, "https://b")
    with pytest.raises(ValueError, match="unknown split.*'test'.*valid splits: train$"):
        resolve_remote_files("mind-demo", ["train", "test"], cfg, "https://b")
    cfg["mind-demo"]["train"]["sha256"] = "abc"
    with pytest.raises(ValueError, match="64 hex"):
        resolve_remote_files("mind-demo", ["train"], cfg, "https://b")


def _newsrec(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "newsrec_dist.cli", *args],
                          timeout=300)


def test_cli_download_then_prepare(server: ServerState, mind_zip: bytes, tmp_path: Path) -> None:
    """`newsrec data download` with config overrides, then `newsrec data prepare` on what it fetched."""
    server.files["MINDdemo_train.zip"] = mind_zip
    entry = "data.download.files.mind-demo.train"
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"

    def download(sha256: str, cache: Path) -> subprocess.CompletedProcess[str]:
        return _newsrec("data", "download", "--quiet", "--dataset", "mind-demo", "--split", "train",
                        f"{entry}.url={server.url('MINDdemo_train.zip')}", f"{entry}.size={len(mind_zip)}",
                        f"{entry}.sha256={sha256}", f"data.download.cache_dir={cache}", f"data.raw_dir={raw}")

    result = download(hashlib.sha256(mind_zip).hexdigest(), tmp_path / "cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (raw / "train" / "behaviors.tsv").is_file() and (tmp_path / "cache" / "MINDdemo_train.zip").is_file()
    prepare = _newsrec("data", "prepare", "--quiet", "--raw", str(raw), "--out", str(prepared), "data.splits=[train]")
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    assert "rows read 4 = kept 4 + rejected 0" in prepare.stdout
    bad = download("0" * 64, tmp_path / "cache2")
    assert bad.returncode == 2 and "sha256" in bad.stdout
