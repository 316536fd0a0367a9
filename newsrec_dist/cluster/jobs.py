"""Job records: one JSON file per submission under ``cluster.jobs_dir``, so status/logs/cancel find any job again."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from newsrec_dist.io import atomic_write_text

# Every backend's states map onto these.
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, UNKNOWN = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN")
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})


class JobNotFound(LookupError):
    pass


@dataclass
class JobRecord:
    id: str
    cluster: str  # local | slurm | ray
    stage: str
    arguments: list[str]
    command: str  # what the job runs, as a shell command line
    log: str  # local and Slurm: the log file; Ray: the cluster keeps the logs
    native_id: str = ""  # pid, Slurm job id or Ray submission id
    address: str | None = None  # Ray Jobs API address
    submitted_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def exit_file(self) -> Path:
        """Written by the job when its command ends (local and Slurm): the exit status."""
        return Path(self.log).with_suffix(".exit")


def new_job_id(stage: str) -> str:
    return f"{stage}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def save_record(jobs_dir: Path, record: JobRecord) -> Path:
    jobs_dir.mkdir(parents=True, exist_ok=True)
    path = jobs_dir / f"{record.id}.json"
    atomic_write_text(path, json.dumps(asdict(record), indent=2))
    return path


def load_record(jobs_dir: Path, job_id: str) -> JobRecord:
    path = jobs_dir / f"{job_id}.json"
    if not path.is_file():
        known = sorted(p.stem for p in jobs_dir.glob("*.json")) if jobs_dir.is_dir() else []
        hint = f"; jobs there: {', '.join(known[-5:])}" if known else ""
        raise JobNotFound(f"no job {job_id!r} in {jobs_dir}{hint}")
    return _read(path)


def _read(path: Path) -> JobRecord:
    return JobRecord(**json.loads(path.read_text()))


def list_records(jobs_dir: Path) -> list[JobRecord]:
    paths = sorted(jobs_dir.glob("*.json"), key=lambda p: p.stat().st_mtime) if jobs_dir.is_dir() else []
    return [_read(path) for path in paths]


def exit_state(record: JobRecord) -> str | None:
    """SUCCEEDED/FAILED from the exit file the job wrote, None while there is none."""
    if not record.exit_file.is_file():
        return None
    return SUCCEEDED if record.exit_file.read_text().strip() == "0" else FAILED
