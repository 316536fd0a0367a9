"""Slurm backend: check the request against the cluster, render the sbatch script, submit, query, cancel.

The request is checked with ``scontrol`` before anything is submitted, so an unknown partition or a node shape
the partition does not have fails with a message naming the setting, not as a job stuck PENDING forever.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2

from newsrec_dist.cluster.jobs import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, JobRecord, exit_state
from newsrec_dist.cluster.stages import LaunchPlan, join_cluster_ray
from newsrec_dist.config import ConfigError, SlurmConfig

TEMPLATE = Path(__file__).resolve().parents[2] / "clusters" / "slurm" / "job.sbatch.j2"
STATES = {"PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_FED": PENDING,
          "REQUEUE_HOLD": PENDING, "RESV_DEL_HOLD": PENDING, "SUSPENDED": PENDING, "RUNNING": RUNNING,
          "COMPLETING": RUNNING, "STAGE_OUT": RUNNING, "COMPLETED": SUCCEEDED, "CANCELLED": CANCELLED,
          "FAILED": FAILED, "TIMEOUT": FAILED, "NODE_FAIL": FAILED, "OUT_OF_MEMORY": FAILED, "BOOT_FAIL": FAILED,
          "DEADLINE": FAILED, "PREEMPTED": PENDING}
_MEMORY_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


class SlurmError(RuntimeError):
    pass


def _scontrol(*arguments: str) -> str:
    done = subprocess.run(["scontrol", *arguments], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmError(f"scontrol {' '.join(arguments)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _records(text: str) -> list[dict[str, str]]:
    """``scontrol show ... -o`` output: one ``Key=Value`` line per entity."""
    return [dict(token.split("=", 1) for token in line.split() if "=" in token)
            for line in text.splitlines() if line.strip()]


def memory_mib(text: str) -> float:
    """sbatch memory syntax (``500``, ``8G``, ``16000M``) in MiB; a bare number is MiB, as in sbatch."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text.strip().upper())
    if not match:
        raise ConfigError(f"cluster.slurm.mem: {text!r} is not a memory size like 8G or 16000M")
    return float(match.group(1)) * _MEMORY_UNITS[match.group(2) or "M"]


def minutes(text: str) -> float:
    """Slurm time syntax (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in minutes; UNLIMITED is inf."""
    if text.upper() in {"UNLIMITED", "INFINITE"}:
        return float("inf")
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"cluster.slurm.time: {text!r} is not a Slurm time like 01:00:00 or 2-00:00:00")
    days, first, second, third = (int(part) if part else None for part in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 1440 + first * 60 + (second or 0) + (third or 0) / 60
    if third is not None:  # HH:MM:SS
        return first * 60 + second + third / 60
    return first + (second or 0) / 60  # MM[:SS]


def _gpus(gres: str) -> int:
    return sum(int(count) for count in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", gres or ""))


@dataclass(frozen=True)
class Shape:
    """What one node must hold for this job."""

    tasks_per_node: int
    cpus_per_task: int
    mem_mib: float
    gpus: int


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _single_line(name: str, value: object) -> None:
    """Every value lands in the job script, most in ``#SBATCH`` comments: a line break (or any control
    character) would start a new shell command there, which quoting cannot prevent."""
    if value is not None and _CONTROL.search(str(value)):
        raise ConfigError(f"{name}: {value!r} must be a single line without control characters")


def _one_line_settings(slurm: SlurmConfig) -> None:
    named = {"partition": slurm.partition, "account": slurm.account, "qos": slurm.qos, "mem": slurm.mem,
             "time": slurm.time, "spark": slurm.spark,
             **{f"sbatch_options[{index}]": option for index, option in enumerate(slurm.sbatch_options)},
             **{f"setup[{index}]": line for index, line in enumerate(slurm.setup)}}
    for name, value in named.items():
        _single_line(f"cluster.slurm.{name}", value)


def _sbatch_path(name: str, path: str) -> str:
    """A path for an ``#SBATCH`` line, double-quoted (sbatch's own parser reads the quotes; a shell never sees it)."""
    _single_line(name, path)
    if '"' in path:
        raise ConfigError(f"{name}: {path!r} must not contain a double quote (it lands in an #SBATCH line)")
    return f'"{path}"'


def _checked_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"job environment: {name!r} is not a variable name")
        _single_line(f"job environment {name}", value)
    return env


def job_shape(slurm: SlurmConfig, plan: LaunchPlan) -> Shape:
    _one_line_settings(slurm)
    tasks = max(slurm.gpus_per_node, 1) if plan.ranks else 1
    if slurm.nodes < 1 or slurm.cpus_per_task < 1 or slurm.gpus_per_node < 0:
        raise ConfigError("cluster.slurm: nodes and cpus_per_task must be ≥ 1 and gpus_per_node ≥ 0")
    return Shape(tasks, slurm.cpus_per_task, memory_mib(slurm.mem), slurm.gpus_per_node)


def _partition(name: str | None) -> dict[str, str]:
    partitions = _records(_scontrol("show", "partition", "-o"))
    names = [part["PartitionName"] for part in partitions]
    chosen = [part for part in partitions
              if part["PartitionName"] == name or (name is None and part.get("Default") == "YES")]
    if not chosen:
        wanted = f"partition {name!r} does not exist" if name else "the cluster has no default partition"
        raise ConfigError(f"cluster.slurm.partition: {wanted} (partitions: {', '.join(names) or 'none'})")
    return chosen[0]


def check_request(slurm: SlurmConfig, plan: LaunchPlan) -> Shape:
    """Fail before submission when no ``nodes`` nodes of the partition can hold the job."""
    shape = job_shape(slurm, plan)
    partition = _partition(slurm.partition)
    label = f"partition {partition['PartitionName']!r}"
    if partition.get("State", "UP") != "UP":
        raise ConfigError(f"cluster.slurm.partition: {label} is {partition['State']}")
    if minutes(slurm.time) > minutes(partition.get("MaxTime", "UNLIMITED")):
        raise ConfigError(f"cluster.slurm.time={slurm.time} exceeds {label}'s MaxTime {partition['MaxTime']}")
    nodes = _records(_scontrol("show", "node", "-o", partition["Nodes"]))
    fitting = [node for node in nodes
               if int(node["CPUTot"]) >= shape.tasks_per_node * shape.cpus_per_task
               and float(node["RealMemory"]) >= shape.mem_mib and _gpus(node.get("Gres", "")) >= shape.gpus]
    if len(fitting) < slurm.nodes:
        largest = max(nodes, key=lambda node: (int(node["CPUTot"]), float(node["RealMemory"])))
        raise ConfigError(
            f"cluster.slurm: {slurm.nodes} node(s) with {shape.tasks_per_node}×{shape.cpus_per_task} CPUs, "
            f"{slurm.mem} memory and {shape.gpus} GPUs requested, {label} has {len(fitting)} such node(s) of "
            f"{len(nodes)} (largest: {largest['CPUTot']} CPUs, {largest['RealMemory']} MiB, "
            f"{_gpus(largest.get('Gres', ''))} GPUs)")
    return shape


def stage_overrides(plan: LaunchPlan, slurm: SlurmConfig) -> list[str]:
    """Overrides pointing the stage at the services the script starts (shell words: "$VAR" expands there)."""
    words = join_cluster_ray() if plan.ray else []
    if plan.spark:
        master = '"$SPARK_MASTER"' if slurm.spark == "standalone" else shlex.quote(slurm.spark)
        words.append(f"graphs.spark.master={master}")
        if slurm.nodes > 1:  # executors on other nodes must reach the driver
            words.append(shlex.quote("graphs.spark.conf={spark.driver.bindAddress:null,spark.driver.host:null}"))
    if plan.ranks and plan.stage == "train":
        words.append(f"train.num_nodes={slurm.nodes}")
    return words


def _shell(value: str) -> str:
    return shlex.quote(str(value))


def render(record: JobRecord, slurm: SlurmConfig, plan: LaunchPlan, shape: Shape, workdir: Path,
           env: dict[str, str]) -> str:
    """The job script; every value is checked to be one line and quoted where a shell or sbatch reads it."""
    _one_line_settings(slurm)
    _single_line("job command", record.command)
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    environment.filters["shell"] = _shell
    template = environment.from_string(TEMPLATE.read_text())
    worker_mib = int(shape.mem_mib * 0.75)  # the rest: the driver and the OS
    return template.render(stage=record.stage, job_name=f"newsrec-{record.stage}", slurm=slurm, plan=plan,
                           tasks_per_node=shape.tasks_per_node, cpus_per_task=shape.cpus_per_task,
                           log=_sbatch_path("cluster.jobs_dir (job log)", record.log),
                           exit_file=str(record.exit_file), jobs_dir=str(Path(record.log).parent),
                           workdir=_sbatch_path("job working directory", str(workdir)),
                           env=_checked_env(env), command=record.command,
                           spark_standalone=plan.spark and slurm.spark == "standalone",
                           spark_worker_memory=f"{worker_mib}m")


def submit(script: Path) -> str:
    done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmError(f"sbatch {script}: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def status(record: JobRecord) -> str:
    try:
        job = _records(_scontrol("show", "job", "-o", record.native_id))[0]
    except SlurmError:  # aged out of slurmctld: the exit file the script wrote tells
        return exit_state(record) or UNKNOWN
    return STATES.get(job.get("JobState", ""), UNKNOWN)


def cancel(record: JobRecord) -> None:
    done = subprocess.run(["scancel", record.native_id], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlurmError(f"scancel {record.native_id}: {done.stderr.strip()}")
