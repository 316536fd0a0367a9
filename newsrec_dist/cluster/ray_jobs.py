"""Ray backend: the Ray Jobs API of any Ray cluster (``ray up``, KubeRay, Ray-on-Slurm) by its address."""

from __future__ import annotations

from pathlib import Path

from newsrec_dist.cluster.jobs import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, JobRecord
from newsrec_dist.config import RayJobsConfig

STATES = {"PENDING": PENDING, "RUNNING": RUNNING, "SUCCEEDED": SUCCEEDED, "FAILED": FAILED, "STOPPED": CANCELLED}


def _client(address: str):  # noqa: ANN202 - ray's JobSubmissionClient, imported late (slow import)
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def runtime_env(cfg: RayJobsConfig, workdir: Path, env: dict[str, str]) -> dict:
    runtime: dict = {"env_vars": {**env, **cfg.env_vars}}
    if cfg.working_dir is not None:
        runtime.update(working_dir=str((workdir / cfg.working_dir).resolve()), excludes=list(cfg.excludes))
    if cfg.pip:
        runtime["pip"] = list(cfg.pip)
    return runtime


def submit(record: JobRecord, cfg: RayJobsConfig, workdir: Path, env: dict[str, str]) -> str:
    return _client(cfg.address).submit_job(
        entrypoint=record.command, submission_id=record.id, runtime_env=runtime_env(cfg, workdir, env),
        entrypoint_num_cpus=cfg.entrypoint_num_cpus, entrypoint_num_gpus=cfg.entrypoint_num_gpus,
        metadata={"stage": record.stage, "submitted_by": "newsrec"})


def status(record: JobRecord) -> str:
    return STATES.get(str(_client(record.address).get_job_status(record.native_id).value), UNKNOWN)


def logs(record: JobRecord) -> str:
    return _client(record.address).get_job_logs(record.native_id)


def cancel(record: JobRecord) -> None:
    _client(record.address).stop_job(record.native_id)
