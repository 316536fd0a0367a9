"""Job records: one JSON file per submission under ``cluster.jobs_dir``, so status/logs/cancel find any job again."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from newsrec_dist.config import masked_command
from newsrec_dist.io import atomic_write_text

# Every backend's states map onto these.
PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, UNKNOWN = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN")
FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED})


JOB_ID = re.compile(r"[a-z0-9_]+-\d{8}-\d{6}-[0-9a-f]{4}")


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
    """The record as JSON, secrets in its arguments and command masked (the job itself got them unmasked)."""
    jobs_dir.mkdir(parents=True, exist_ok=True)
    path = jobs_dir / f"{record.id}.json"
    saved = replace(record, arguments=[masked_command(word) for word in record.arguments],
                    command=masked_command(record.command))
    atomic_write_text(path, json.dumps(asdict(saved), indent=2))
    return path


def load_record(jobs_dir: Path, job_id: str) -> JobRecord:
    if not JOB_ID.fullmatch(job_id):  # a job id names a file in jobs_dir, never a path out of it
        raise JobNotFound(f"{job_id!r} is not a job id (<stage>-<date>-<time>-<hex>)")
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
