"""Real clusters on this machine for the submission tests: a single-node Slurm and a two-node Ray cluster.

Slurm: Debian's ``slurm-wlm`` + ``munge`` (installed by ``make test``), daemons started in the background with
every state, spool, pid and log file under one directory; clients find it through ``SLURM_CONF``. munged runs as
the munge user, so its directory lives directly under /tmp (pytest's tmp dirs are root-only).
Ray: ``ray start --head`` plus one worker node, both on 127.0.0.1, dashboard (the Jobs API) on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helpers import free_port, kill_processes_mentioning

SLURM_DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            detail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s\n{detail}")
        time.sleep(0.3)


@dataclass
class LocalSlurm:
    root: Path
    conf: Path
    partition: str
    env: dict[str, str]


def _slurm_conf(root: Path, munge_socket: Path, node: str, cpus: int, memory_mib: int) -> str:
    return "\n".join([
        "ClusterName=newsrec-test", f"SlurmctldHost={node}", f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        f"AuthInfo=socket={munge_socket}", f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none", "MailProg=/bin/true", "ReturnToService=2", "MinJobAge=3600",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "KillWait=5",
        f"NodeName={node} CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=02:00:00 State=UP", ""])


def _start_munge(directory: Path) -> subprocess.Popen:
    shutil.chown(directory, "munge", "munge")
    directory.chmod(0o755)  # munged requires every user to be able to reach its socket
    key = directory / "munge.key"
    subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create", f"--keyfile={key}"], check=True)
    return subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "--foreground", f"--key-file={key}",
                             f"--socket={directory / 'munge.socket'}", f"--pid-file={directory / 'munged.pid'}",
                             f"--log-file={directory / 'munged.log'}", f"--seed-file={directory / 'munge.seed'}"])


def _node_idle(env: dict[str, str]) -> bool:
    shown = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return shown.returncode == 0 and shown.stdout.strip() == "idle"


@contextmanager
def local_slurm(root: Path) -> Iterator[LocalSlurm]:
    """Start munged, slurmctld and slurmd for one node (this host, 2 CPUs, 16 GB); stop them afterwards."""
    missing = [name for name in SLURM_DAEMONS if shutil.which(name) is None]
    if missing:
        raise RuntimeError(f"Slurm is not installed ({', '.join(missing)} missing): run `make slurm` "
                           "(apt-get install slurm-wlm munge) first")
    munge_dir = Path(tempfile.mkdtemp(prefix="munge-", dir="/tmp"))
    for name in ("state", "spool"):
        (root / name).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, munge_dir / "munge.socket", socket.gethostname(), 2, 16000))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = [_start_munge(munge_dir)]
    try:
        wait_until(lambda: (munge_dir / "munge.socket").exists(), 20, "munged", munge_dir / "munged.log")
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([daemon, "-D"], env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        wait_until(lambda: _node_idle(env), 60, "slurm node", root / "slurmctld.log")
        yield LocalSlurm(root=root, conf=conf, partition="debug", env=env)
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True)
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
        for daemon in reversed(daemons):
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
        subprocess.run(["pkill", "-f", f"munged.*{munge_dir}"], capture_output=True)
        shutil.rmtree(munge_dir, ignore_errors=True)


@dataclass
class LocalRay:
    address: str  # the Jobs API (dashboard) address
    gcs: str
    temp_dir: str  # both nodes' processes name it


def _ray(*arguments: str) -> list[str]:
    return [str(Path(sys.executable).parent / "ray"), *arguments]


@contextmanager
def local_ray_cluster(worker_cpus: int = 1) -> Iterator[LocalRay]:
    """A head node and one worker node (one CPU each unless told), both on 127.0.0.1."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # AF_UNIX paths must stay under 107 bytes
    port, dashboard = free_port(), free_port()
    # nodes of a real cluster run in the project's environment: `python` in a job is this venv's
    env = {**os.environ,  # with the tests' Ray token (conftest)
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    # Every node's agent (which the Jobs API submits through) listens on 52365 unless told: another Ray on this
    # machine (the other test worker's, a Slurm job's) may hold it, so each node gets free ports of its own.
    agent = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
             "--metrics-export-port"]
    subprocess.run(_ray("start", "--head", f"--port={port}", f"--dashboard-port={dashboard}",
                        "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={temp_dir}",
                        "--num-cpus=1", *_free_ports(agent), *common), env=env, check=True, capture_output=True)
    try:
        subprocess.run(_ray("start", f"--address=127.0.0.1:{port}", f"--num-cpus={worker_cpus}", *_free_ports(agent),
                            *common), env=env, check=True, capture_output=True)
        yield LocalRay(address=f"http://127.0.0.1:{dashboard}", gcs=f"127.0.0.1:{port}", temp_dir=temp_dir)
    finally:
        # not `ray stop`: it stops every Ray on the machine, other tests' too; both nodes' processes name the
        # head's temp dir
        kill_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _free_ports(options: list[str]) -> list[str]:
    return [f"{option}={free_port()}" for option in options]
