"""Ray Train adapter: the same ``fit`` on ``train.ray.workers`` DDP workers of a Ray cluster (local Ray here).

Workers share the run directory (a shared filesystem on clusters); rank 0 writes the checkpoints. The driver
then evaluates the best checkpoint exactly as a single-process run does.

Worker death: when a worker dies (``kill -9``, its node lost) or raises, Ray Train stops the whole worker group
and starts a new one, up to ``train.ray.max_failures`` times (``FailureConfig``). The new group runs ``_worker``
again, and ``fit`` resumes from the newest checkpoint in the run directory: the same files, and the same code
path, that resume a run after the driver itself was killed, so no reported Ray checkpoint (``ray.train.report``,
``ray.train.get_checkpoint``) is needed. Steps after that checkpoint are trained again, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from newsrec_dist.cluster.ray_session import ray_session
from newsrec_dist.config import to_container


def _worker(config: dict[str, Any]) -> None:
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    from newsrec_dist.config import from_container
    from newsrec_dist.train.stage import fit, plan

    if Path(config["cwd"]).is_dir():  # Ray starts workers elsewhere; relative paths mean the driver's directory
        os.chdir(config["cwd"])
    run = plan(from_container(config["cfg"]))
    fit(run, Path(config["work"]), strategy=RayDDPStrategy(), plugins=[RayLightningEnvironment()],
        prepare=prepare_trainer)


def fit_on_ray(run: Any, work: Path) -> None:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray_cfg = run.train.ray
    resources = {"CPU": ray_cfg.cpus_per_worker} | ({"GPU": 1} if ray_cfg.use_gpu else {})
    with ray_session(ray_cfg.ray):
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"cfg": to_container(run.cfg), "work": str(work.resolve()),
                               "cwd": os.getcwd()},
            scaling_config=ScalingConfig(num_workers=ray_cfg.workers, use_gpu=ray_cfg.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(storage_path=str((work / "ray").resolve()), name="train",
                                 failure_config=FailureConfig(max_failures=ray_cfg.max_failures)))
        trainer.fit()
