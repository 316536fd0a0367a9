"""Local backend: the stage runs as a detached background process on this machine, logging to a file."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil

from newsrec_dist.cluster.jobs import CANCELLED, RUNNING, UNKNOWN, JobRecord, exit_state


def _cancel_marker(record: JobRecord) -> Path:
    return Path(record.log).with_suffix(".cancelled")


def submit(record: JobRecord, workdir: Path, env: dict[str, str]) -> str:
    """Start ``record.command`` in its own session; a bash wrapper writes the exit status when it ends."""
    wrapper = f'{record.command}; echo $? > "$NEWSREC_EXIT_FILE"'
    with open(record.log, "ab") as log:
        child = subprocess.Popen(["bash", "-c", wrapper], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 env={**os.environ, **env, "NEWSREC_EXIT_FILE": str(record.exit_file)})
    return str(child.pid)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def status(record: JobRecord) -> str:
    if _cancel_marker(record).exists():
        return CANCELLED
    finished = exit_state(record)
    if finished:
        return finished
    return RUNNING if _alive(int(record.native_id)) else UNKNOWN


def cancel(record: JobRecord) -> None:
    _cancel_marker(record).touch()
    try:
        os.killpg(int(record.native_id), signal.SIGTERM)
    except ProcessLookupError:
        pass
