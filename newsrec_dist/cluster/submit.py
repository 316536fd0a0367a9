"""``newsrec submit``: send one stage (or the whole pipeline) to this machine, a Slurm cluster or a Ray cluster.

The job runs the same CLI verb with the same overrides; only where it runs changes. Its config is composed here
first, so a bad override or an impossible Slurm request fails before anything is submitted.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from newsrec_dist.cluster import local, ray_jobs, slurm
from newsrec_dist.cluster.jobs import FINISHED, JobRecord, load_record, new_job_id, save_record
from newsrec_dist.cluster.stages import LaunchPlan, cli_words, join_cluster_ray, launch_plan
from newsrec_dist.config import ClusterConfig, ConfigError, as_object

BACKENDS = {"local": local, "slurm": slurm, "ray": ray_jobs}
# Set in every job: no model hub at run time, logs written as they come.
JOB_ENV = {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def config_overrides(arguments: list[str]) -> list[str]:
    """The ``key=value`` arguments (a stage's other arguments, e.g. generation task names, pass through)."""
    return [argument for argument in arguments if "=" in argument and not argument.startswith("-")]


def _unset(words: list[str], arguments: list[str]) -> list[str]:
    """Service overrides the user did not set themselves (theirs win)."""
    given = {argument.split("=", 1)[0].lstrip("+~") for argument in config_overrides(arguments)}
    return [word for word in words if word.lstrip("'").split("=", 1)[0] not in given]


# The composed values a user checks before queueing hours of cluster time, per stage (dotted keys of the config).
SETTINGS_SHOWN = {
    "synth": ("data.synth.scale",), "prepare": (), "graphs": ("graphs.windows",),
    "node2vec": ("node2vec.graphs", "node2vec.epochs", "node2vec.walks_per_node", "node2vec.device"),
    "finetune": ("encoder.name", "encoder.finetune.steps", "encoder.finetune.batch_size", "encoder.device"),
    "embed": ("encoder.name", "encoder.embed.actors"),
    "glove": (),
    "generate": ("generate.tasks", "generate.backend.kind", "generate.task.max_news", "generate.task.max_users"),
    "train": ("model.name", "train.epochs", "train.max_steps", "train.batch_size", "train.devices", "train.strategy"),
    "eval": ("eval.baselines",),
    "pipeline": ("experiment_name", "stages", "train.models", "train.epochs", "train.max_steps", "train.batch_size",
                 "encoder.name", "encoder.finetune.steps", "node2vec.epochs", "generate.task.max_news"),
}


def settings_that_matter(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """Data, budget and the stage's own sizes (steps, epochs, batch, model) as composed."""
    keys = ("data.name", "budget", *SETTINGS_SHOWN.get(stage, ()))
    return {key: OmegaConf.select(cfg, key) for key in keys}


def jobs_dir(cfg: DictConfig) -> Path:
    return Path(cfg.cluster.jobs_dir).resolve()


def _submit_local(record: JobRecord, workdir: Path) -> None:
    record.command = shlex.join(cli_words(record.stage, record.arguments))
    record.native_id = local.submit(record, workdir, JOB_ENV)


def _submit_slurm(record: JobRecord, cluster: ClusterConfig, workdir: Path, plan: LaunchPlan) -> None:
    shape = slurm.check_request(cluster.slurm, plan)
    extra = _unset(slurm.stage_overrides(plan, cluster.slurm), record.arguments)
    record.command = " ".join([shlex.join(cli_words(record.stage, record.arguments, python="python")), *extra])
    script = Path(record.log).with_suffix(".sbatch")
    script.write_text(slurm.render(record, cluster.slurm, plan, shape, workdir, JOB_ENV))
    record.native_id = slurm.submit(script)


def _submit_ray(record: JobRecord, cluster: ClusterConfig, workdir: Path, work_dir: str) -> None:
    if not Path(work_dir).is_absolute():
        raise ConfigError(f"cluster=ray: paths.work_dir={work_dir} is relative, but a Ray job runs in a copy of "
                          "the working dir: give an absolute path on storage the cluster shares")
    record.address = cluster.ray.address
    arguments = [*_unset(join_cluster_ray(), record.arguments), *record.arguments]
    record.command = shlex.join(cli_words(record.stage, arguments, python="python"))
    record.native_id = ray_jobs.submit(record, cluster.ray, workdir, JOB_ENV)


def submit_stage(cfg: DictConfig, stage: str, arguments: list[str], workdir: Path | None = None) -> JobRecord:
    """Submit ``stage`` with ``arguments``; returns the saved job record (nothing is saved when it fails)."""
    cluster, workdir = as_object(cfg.cluster), (workdir or Path.cwd()).resolve()
    plan, directory = launch_plan(stage, cfg), jobs_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    job_id = new_job_id(stage)
    record = JobRecord(id=job_id, cluster=cluster.kind, stage=stage, arguments=list(arguments), command="",
                       log=str(directory / f"{job_id}.log"))
    if cluster.kind == "local":
        _submit_local(record, workdir)
    elif cluster.kind == "slurm":
        _submit_slurm(record, cluster, workdir, plan)
    elif cluster.kind == "ray":
        _submit_ray(record, cluster, workdir, cfg.paths.work_dir)
    else:
        raise ConfigError(f"cluster.kind: {cluster.kind!r} is not one of local, slurm, ray")
    save_record(directory, record)
    return record


def job_status(record: JobRecord) -> str:
    return BACKENDS[record.cluster].status(record)


def job_logs(record: JobRecord) -> str:
    if record.cluster == "ray":
        return ray_jobs.logs(record)
    log = Path(record.log)
    return log.read_text(errors="replace") if log.is_file() else ""


def cancel_job(record: JobRecord) -> None:
    BACKENDS[record.cluster].cancel(record)


def wait_for(record: JobRecord, timeout: float | None = None, poll: float = 2.0) -> str:
    """Poll until the job has finished; returns its final state (TimeoutError past ``timeout`` seconds)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (state := job_status(record)) not in FINISHED:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {record.id} still {state} after {timeout:.0f} s")
        time.sleep(poll)
    return state


def find_job(cfg: DictConfig, job_id: str) -> JobRecord:
    return load_record(jobs_dir(cfg), job_id)
