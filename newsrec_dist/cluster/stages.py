"""What a submitted stage runs and which services it needs inside its allocation.

One table serves every backend: the command is always ``python -m newsrec_dist.cli <verb> <args>``; Slurm reads
the needs (a Ray cluster, a Spark master, one process per GPU) to start services and launch ranks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from omegaconf import DictConfig

from newsrec_dist.config import ConfigError

# Every Ray-using stage's RayConfig: pointed at the cluster's Ray ("auto" reads RAY_ADDRESS) when one is there.
RAY_ADDRESS_KEYS = ("node2vec.ray.address", "encoder.embed.ray.address", "generate.ray.address",
                    "train.ray.ray.address", "train.trials.ray.address")


@dataclass(frozen=True)
class Stage:
    verb: tuple[str, ...]
    ray: bool = False  # uses Ray (tasks, Ray Data actors)
    spark: bool = False  # a Spark application
    ranks: bool = False  # one process per GPU (DeepSpeed / Lightning DDP read Slurm's ranks)
    quiet_flag: bool = True  # the verb takes --quiet (no progress bars in log files)


STAGES: dict[str, Stage] = {
    "synth": Stage(("data", "synth")),
    "prepare": Stage(("data", "prepare")),
    "graphs": Stage(("graphs", "build"), spark=True, quiet_flag=False),
    "node2vec": Stage(("node2vec", "train"), ray=True),
    "finetune": Stage(("encoder", "finetune"), ranks=True),
    "embed": Stage(("encoder", "embed"), ray=True),
    "glove": Stage(("encoder", "glove")),
    "generate": Stage(("generate",), ray=True),
    "train": Stage(("train",), ranks=True),
    "eval": Stage(("eval",), quiet_flag=False),
    "pipeline": Stage(("run",), ray=True, spark=True, quiet_flag=False),
}


@dataclass(frozen=True)
class LaunchPlan:
    """How one submission runs: its services and its process layout."""

    stage: str
    ray: bool
    spark: bool
    ranks: bool


def stage_named(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}: one of {', '.join(STAGES)}")
    return STAGES[name]


def launch_plan(name: str, cfg: DictConfig) -> LaunchPlan:
    """Training with ``train=ray`` runs Ray Train workers (one task per node); otherwise Lightning takes ranks."""
    stage = stage_named(name)
    ray_train = name == "train" and bool(cfg.train.ray.enabled)
    return LaunchPlan(stage=name, ray=stage.ray or ray_train, spark=stage.spark, ranks=stage.ranks and not ray_train)


def cli_words(name: str, arguments: list[str], python: str = sys.executable) -> list[str]:
    """The stage's command line: the package CLI with the user's arguments (tasks, key=value overrides)."""
    stage = stage_named(name)
    quiet = ["--quiet"] if stage.quiet_flag else []
    return [python, "-m", "newsrec_dist.cli", *stage.verb, *quiet, *arguments]


def join_cluster_ray() -> list[str]:
    """Overrides that make every Ray-using stage join the cluster it runs on (``auto`` reads RAY_ADDRESS)."""
    return [f"{key}=auto" for key in RAY_ADDRESS_KEYS]
