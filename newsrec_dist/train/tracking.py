"""Experiment tracking: the Lightning loggers a training run writes to.

The CSV log is always written (the report's loss curves read it); TensorBoard and MLflow are added by
``train.tracking.loggers``. Every run is tagged with what it is (experiment, ablation, arm, model, seed) and its
config hash (the run fingerprint: two runs with one hash computed the same thing), and its config goes in as
parameters (secrets masked). A resumed run logs into the same TensorBoard directory and the same MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger

from newsrec_dist.config import Tracker, TrackingConfig, masked

if TYPE_CHECKING:
    from newsrec_dist.train.stage import TrainRun

MLFLOW_RUN_FILE = "mlflow_run_id.txt"  # in the run directory: a resumed run continues its MLflow run


def mlflow_uri(tracking: TrackingConfig, output_dir: str) -> str:
    """The configured tracking URI, or an SQLite store beside the runs (MLflow 3 no longer writes file stores)."""
    return tracking.mlflow_uri or f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def prepare_mlflow(tracking: TrackingConfig, output_dir: str, experiment: str) -> None:
    """Create the store and the experiment once, before parallel trials would race to migrate one SQLite file."""
    if Tracker.mlflow not in tracking.loggers:
        return
    import mlflow

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(mlflow_uri(tracking, output_dir))
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment)


def run_tags(run: TrainRun) -> dict[str, str]:
    return {"experiment": run.cfg.experiment_name, "run": run.model.name, "seed": str(run.train.seed),
            "config_hash": run.fingerprint, **run.train.tracking.tags}


def _mlflow_logger(run: TrainRun, work: Path, tags: dict[str, str]) -> MLFlowLogger:
    record = work / MLFLOW_RUN_FILE
    logger = MLFlowLogger(experiment_name=run.cfg.experiment_name, run_name=run.model.name,
                          tracking_uri=mlflow_uri(run.train.tracking, run.train.output_dir), tags=tags,
                          run_id=record.read_text().strip() if record.is_file() else None)
    if logger.run_id is not None and not record.is_file():  # None on ranks other than 0: rank 0 records it
        record.write_text(logger.run_id)
    return logger


def run_loggers(run: TrainRun, work: Path) -> list[Logger]:
    """The CSV log in ``work/logs``, then the configured trackers, each given the run's tags and parameters."""
    tracking, tags = run.train.tracking, run_tags(run)
    loggers: list[Logger] = [CSVLogger(str(work), name="logs")]
    if Tracker.tensorboard in tracking.loggers:  # version "": one directory per run, a resume appends to it
        loggers.append(TensorBoardLogger(tracking.tensorboard_dir, name=run.model.name, version="",
                                         default_hp_metric=False))
    if Tracker.mlflow in tracking.loggers:
        loggers.append(_mlflow_logger(run, work, tags))
    parameters: dict[str, Any] = {**masked(run.config), "tags": tags}
    for logger in loggers[1:]:
        logger.log_hyperparams(parameters)
    return loggers
