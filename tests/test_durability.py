"""Crash safety of artifact writes (fsync around every rename), recovery from torn progress, checkpoint and
manifest files, and the run lock that keeps two runs off one work directory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from newsrec_dist.cli import app
from newsrec_dist.io import (
    MANIFEST_NAME, PROGRESS_NAME, RUN_LOCK_ENV, RUN_LOCK_INFO, Manifest, ResumableDir, RunLockedError, atomic_dir,
    atomic_write_text, is_up_to_date, read_manifest, run_lock,
)

REPO = Path(__file__).resolve().parents[1]
# A second process taking the lock through the same function (argv[1]: the work dir).
TAKE_LOCK = ("import sys\nfrom newsrec_dist.io import run_lock\n"
             "with run_lock(sys.argv[1]):\n    print('ran', flush=True)\n")
HOLD_LOCK = TAKE_LOCK + "    sys.stdin.read()\n"


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every fsync (by the path its descriptor names) and every rename, in the order they happen."""
    seen: list[tuple[str, ...]] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        seen.append(("rename", str(source), str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(os, "rename", record_replace)
    return seen


def _renamed_into(events: list[tuple[str, ...]], final: Path) -> int:
    return next(i for i, event in enumerate(events) if event[0] == "rename" and event[2] == str(final))


def _synced(events: list[tuple[str, ...]], path: str | Path) -> list[int]:
    return [i for i, event in enumerate(events) if event == ("fsync", str(path))]


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_atomic_dir_syncs_contents_before_the_rename_and_the_parent_after(
        tmp_path: Path, events: list[tuple[str, ...]], existing: bool) -> None:
    final = tmp_path / "artifact"
    if existing:
        (final / "old").mkdir(parents=True)
    with atomic_dir(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.txt").write_text("a")
        (tmp / "sub" / "b.txt").write_text("b")
    rename = _renamed_into(events, final)
    for path in (tmp / "a.txt", tmp / "sub" / "b.txt", tmp / "sub", tmp):
        assert any(i < rename for i in _synced(events, path)), f"{path} not synced before the rename: {events}"
    assert _synced(events, tmp / "sub" / "b.txt")[0] < _synced(events, tmp / "sub")[0] < _synced(events, tmp)[0]
    assert any(i > rename for i in _synced(events, tmp_path)), f"parent not synced after the rename: {events}"
    assert (final / "sub" / "b.txt").read_text() == "b" and not (final / "old").exists()


def test_atomic_write_text_syncs_the_file_before_the_rename_and_the_parent_after(
        tmp_path: Path, events: list[tuple[str, ...]]) -> None:
    path = tmp_path / "manifest.json"
    atomic_write_text(path, "{}")
    rename = _renamed_into(events, path)
    tmp = events[rename][1]
    assert any(i < rename for i in _synced(events, tmp))
    assert any(i > rename for i in _synced(events, tmp_path))


def test_progress_is_saved_only_after_the_work_it_counts_is_synced(
        tmp_path: Path, events: list[tuple[str, ...]]) -> None:
    work = ResumableDir(tmp_path / "out", "fp")
    (work.path / "part-1.parquet").write_bytes(b"rows")
    work.save({"parts": 1})
    assert _synced(events, work.path / "part-1.parquet")[0] < _renamed_into(events, work.path / PROGRESS_NAME)
    work.publish()
    assert any(i > _renamed_into(events, tmp_path / "out") for i in _synced(events, tmp_path))


@pytest.mark.parametrize("text", ['{"fingerprint": "fp", "state": {"do', "\x00\x00\x00garbage", "[1, 2]",
                                  '{"fingerprint": "fp", "state": 3}', ""],
                         ids=["truncated", "garbage", "not-an-object", "bad-state", "empty"])
def test_unreadable_progress_starts_afresh_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str) -> None:
    work = ResumableDir(tmp_path / "out", "fp")
    work.save({"done": 3})
    (work.path / "part-1.parquet").write_bytes(b"rows")
    (work.path / PROGRESS_NAME).write_text(text)
    with caplog.at_level(logging.WARNING, logger="newsrec_dist.io"):
        again = ResumableDir(tmp_path / "out", "fp")
    assert again.state == {} and list(again.path.iterdir()) == []
    assert str(work.path / PROGRESS_NAME) in caplog.text and "afresh" in caplog.text


def test_readable_progress_still_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ResumableDir(tmp_path / "out", "fp").save({"done": 3})
    assert ResumableDir(tmp_path / "out", "fp").state == {"done": 3}
    assert ResumableDir(tmp_path / "out", "other").state == {}
    assert not caplog.records


def test_torn_checkpoint_restarts_the_unit_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch = pytest.importorskip("torch")
    work = ResumableDir(tmp_path / "out", "fp")
    checkpoint = work.path / "checkpoint.pt"
    torch.save({"epoch": 3}, checkpoint)
    work.save({"epochs_done": 3})
    assert work.restore(checkpoint, torch.load) == {"epoch": 3}
    checkpoint.write_bytes(checkpoint.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="newsrec_dist.io"):
        assert work.restore(checkpoint, torch.load) is None
    assert str(checkpoint) in caplog.text
    assert work.state == {} and list(work.path.iterdir()) == []
    assert ResumableDir(tmp_path / "out", "fp").state == {}  # the next run starts afresh too


def test_unreadable_manifest_reruns_the_stage_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Manifest(stage="eval", inputs={}, config={}).write(tmp_path)
    assert read_manifest(tmp_path)["stage"] == "eval"
    (tmp_path / "manifest.json").write_text('{"stage": "ev')
    with caplog.at_level(logging.WARNING, logger="newsrec_dist.io"):
        assert read_manifest(tmp_path) is None
    assert str(tmp_path / "manifest.json") in caplog.text


def _other_run(work_dir: Path) -> subprocess.CompletedProcess[str]:
    """A run started from another shell: it does not inherit this process's hold on the lock."""
    env = {key: value for key, value in os.environ.items() if key != RUN_LOCK_ENV}
    return subprocess.run([sys.executable, "-c", TAKE_LOCK, str(work_dir)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_second_run_fails_at_once_naming_the_first_and_runs_after_release(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        second = _other_run(tmp_path)
        assert second.returncode != 0 and "ran" not in second.stdout
        assert "RunLockedError" in second.stderr and f"pid {os.getpid()} on " in second.stderr
        assert "paths.work_dir" in second.stderr
    assert not (tmp_path / RUN_LOCK_INFO).exists()
    after = _other_run(tmp_path)
    assert after.returncode == 0 and after.stdout == "ran\n", after.stderr


def _holder(work_dir: Path) -> subprocess.Popen[str]:
    """Another run that holds the lock until its stdin closes."""
    env = {key: value for key, value in os.environ.items() if key != RUN_LOCK_ENV}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_dir)], cwd=REPO, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "ran\n"
    return holder


def test_a_killed_run_leaves_no_lock_behind(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on "):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()  # SIGKILL: no finally, no release in the holder
        holder.wait()
    with run_lock(tmp_path):  # the kernel dropped the dead holder's flock
        assert json.loads((tmp_path / RUN_LOCK_INFO).read_text())["pid"] == os.getpid()


def test_processes_the_run_starts_pass_through(tmp_path: Path) -> None:
    with run_lock(tmp_path):  # e.g. Lightning's DDP re-running `newsrec run` once per rank
        child = subprocess.run([sys.executable, "-c", TAKE_LOCK, str(tmp_path)], cwd=REPO, capture_output=True,
                               text=True, timeout=60)
        assert child.returncode == 0 and child.stdout == "ran\n", child.stderr
    assert RUN_LOCK_ENV not in os.environ


@pytest.fixture
def held_by_another(tmp_path: Path) -> Iterator[int]:
    holder = _holder(tmp_path)
    try:
        yield holder.pid
    finally:
        holder.communicate("", timeout=30)


def test_newsrec_run_on_a_busy_work_dir_fails_naming_the_holder(tmp_path: Path, held_by_another: int) -> None:
    result = CliRunner().invoke(app, ["run", f"paths.work_dir={tmp_path}", "stages=[report]"])
    assert result.exit_code == 2, result.output
    assert f"pid {held_by_another} on " in " ".join(result.output.split())
    assert not (tmp_path / "report.md").exists()


def test_manifest_masks_secrets_but_fingerprints_them(tmp_path: Path) -> None:
    secret = {"spark": {"conf": {"spark.authenticate.secret": "s3cr3t", "spark.sql.shuffle.partitions": "4"}}}
    Manifest(stage="graphs", inputs={}, config=secret).write(tmp_path)
    written = (tmp_path / MANIFEST_NAME).read_text()
    assert "s3cr3t" not in written and '"spark.sql.shuffle.partitions": "4"' in written
    assert is_up_to_date(tmp_path, "graphs", {}, secret)  # masking the file does not make the artifact stale
    changed = {"spark": {"conf": {**secret["spark"]["conf"], "spark.authenticate.secret": "other"}}}
    assert not is_up_to_date(tmp_path, "graphs", {}, changed)
