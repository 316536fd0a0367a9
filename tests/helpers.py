"""Helpers shared by test modules (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

# make test runs two tests at once (pytest-xdist, `-n 2`): each may use one core's worth of threads, so torch and
# llama.cpp do not oversubscribe the 2-core machine (oversubscribed, both slow down several-fold: ENVIRONMENT.md).
# Run alone (plain pytest, benchmarks/), a test may use both.
THREADS = 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2

# A command a test starts gets this long unless it names its own limit: far above any run's time here, far below
# the suite's pytest-timeout, so a hung child fails its test with its output instead of stalling CI.
COMMAND_TIMEOUT_S = 300


def run(command: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S, check: bool = False,
        **options) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in its own process group, text output captured: on a timeout or an error in the test the
    whole group is killed (Ray's and Spark's children included), not only the direct child. After a normal exit
    nothing is killed: a detached job the command started is the command's to manage."""
    child = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, **options)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except BaseException:
        _kill_group(child.pid)
        child.communicate()
        raise
    result = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_when(command: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None,
              timeout: float = COMMAND_TIMEOUT_S) -> None:
    """Start ``command`` in its own session and ``kill -9`` its process group once ``ready()`` holds.

    Fails (with the child's stderr) when the child exits first or ``ready()`` never held: the kill must land
    mid-run, at the point the test names.
    """
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not (held := ready()) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, child.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        assert held, f"not ready after {timeout} s: {command}"
    finally:
        _kill_group(child.pid)
        child.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def private_ray_dir(prefix: str = "ray-") -> Iterator[str]:
    """A Ray temp dir under /tmp (Ray's AF_UNIX socket paths must stay under 108 bytes). On leaving, whatever
    still runs from it (a Ray started by a killed or timed-out test) is killed and the dir removed."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        kill_processes_mentioning(path)
        shutil.rmtree(path, ignore_errors=True)


def processes_mentioning(text: str) -> list[psutil.Process]:
    return [process for process in psutil.process_iter(["cmdline"])
            if any(text in part for part in process.info["cmdline"] or [])]


def kill_processes_mentioning(text: str, rounds: int = 5) -> None:
    """SIGKILL what names ``text``; again while any remain (a dying raylet may have just spawned a worker)."""
    for _ in range(rounds):
        found = processes_mentioning(text)
        if not found:
            return
        for process in found:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(found, timeout=2)


class Planted:
    """Unpickling this calls ``Path(marker).touch()``: what a checkpoint planted by someone else could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return Path.touch, (self.marker,)
