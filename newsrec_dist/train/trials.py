"""An experiment's runs as parallel Ray Tune trials (``train.trials.parallel`` > 1).

Why Ray Tune: it is Ray's library for many independent trainings on one cluster. It places each trial where its
resources (``train.trials.cpus``/``gpus``) are free, caps how many run at once, retries a failed trial
(``FailureConfig``), and the hyper-parameter search runs on the same Tuner with a scheduler. Plain Ray tasks would
give placement only. Tune's own experiment checkpoint is not what resumes a grid: each trial is one
``train_model`` run, whose manifest says it is finished and whose checkpoints resume it, so the driver submits only
the unfinished runs, and a trial retried after a failure continues from its last checkpoint. Trials run in Ray
worker processes: the runs' directories (``train.output_dir``) must be on storage every node sees, as for Ray Train.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from newsrec_dist.cluster.ray_session import ray_session
from newsrec_dist.config import TrialsConfig, from_container, to_container

TUNE_DIR = ".tune"  # under train.output_dir: Tune's trial logs and experiment state


def trial_config(container: dict[str, Any], cwd: str, threads: int) -> DictConfig:
    """A run's config inside a trial's process (Tune starts it in its own directory: relative paths mean the
    driver's); torch threads follow the trial's CPUs unless the config names them."""
    if Path(cwd).is_dir():
        os.chdir(cwd)
    cfg = from_container(container)
    if cfg.train.threads is None:
        cfg.train.threads = threads
    return cfg


def _trial(config: dict[str, Any], configs: dict[str, dict[str, Any]], cwd: str, threads: int) -> None:
    from ray import tune

    from newsrec_dist.train.stage import train_model

    summary = train_model(trial_config(configs[config["run"]], cwd, threads))
    overall = summary.get("metrics", {}).get("all", {})
    tune.report({key: float(value) for key, value in overall.items() if isinstance(value, (int, float))})


def _progress(total: int) -> Any:
    from ray import tune

    class TrialProgress(tune.Callback):
        """One line per trial that ends, with how many have."""

        def __init__(self) -> None:
            self.ended = 0

        def _line(self, trial: Any, outcome: str) -> None:
            self.ended += 1
            print(f"trial {trial.config.get('run', trial.trial_id)} {outcome} ({self.ended}/{total})", flush=True)

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._line(trial, "finished")

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self._line(trial, "failed")

    return TrialProgress()


def fit_trials(trainable: Any, param_space: dict[str, Any], settings: TrialsConfig, storage: Path, name: str,
               total: int, seed: int = 0, **tune_config: Any) -> Any:
    """Run ``trainable`` over ``param_space`` as Ray Tune trials with the resources, concurrency and retries of
    ``settings`` (``seed``: the random draws'); returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    # the cap goes to the generator: given a generator, Tune does not apply TuneConfig.max_concurrent_trials to it
    # (checked with Ray 2.60: four trials ran at once under a cap of one)
    generator = BasicVariantGenerator(random_state=seed, max_concurrent=settings.parallel)
    resources = {"cpu": settings.cpus} | ({"gpu": settings.gpus} if settings.gpus else {})
    # reuse_actors: a trial's worker process serves the next trial (Tune did not by default here), so only the
    # first trial per slot pays the imports and start-up (~8 s on 2 cores; a micro run's second round 15 s -> 6 s)
    with ray_session(settings.ray):
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources), param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=generator, reuse_actors=True, **tune_config),
            run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                                      callbacks=[_progress(total)]))
        print(f"{total} Ray Tune trials, at most {settings.parallel} at once", flush=True)
        return tuner.fit()


def trial_threads(settings: TrialsConfig) -> int:
    return max(1, int(settings.cpus))


def run_trials(runs: dict[str, DictConfig], settings: TrialsConfig, output_dir: Path) -> None:
    """Train every run of ``runs`` (name → its config) as one trial, at most ``settings.parallel`` at once; an error
    names every trial that failed, after the others have finished."""
    from ray import tune

    trainable = tune.with_parameters(_trial, configs={name: to_container(cfg) for name, cfg in runs.items()},
                                     cwd=os.getcwd(), threads=trial_threads(settings))
    results = fit_trials(trainable, {"run": tune.grid_search(list(runs))}, settings, output_dir / TUNE_DIR, "trials",
                         len(runs))
    failed = {result.config["run"]: result.error for result in results if result.error is not None}
    if failed:
        details = "\n".join(f"  {name}: {error}" for name, error in sorted(failed.items()))
        raise RuntimeError(f"{len(failed)} of {len(runs)} trials failed (logs under {output_dir / TUNE_DIR}):\n"
                           f"{details}")
