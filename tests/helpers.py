"""Helpers shared by test modules (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable


def kill_when(command: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None,
              timeout: float = 300) -> None:
    """Start ``command`` in its own session and ``kill -9`` its process group once ``ready()`` holds.

    Fails (with the child's stderr) when the child exits first: the kill must land mid-run.
    """
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, child.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
