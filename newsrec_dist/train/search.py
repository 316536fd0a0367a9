"""The ``search`` stage: hyper-parameter search over ``search.space`` as Ray Tune trials, ASHA stopping weak ones.

Each trial is an ordinary training run of ``search.model`` with one draw of settings (under
``<search.output_dir>/runs``); after every epoch it reports its dev metrics to Tune, and ASHA ends the trials that
fall behind at each rung. The best draw (by its best epoch's dev metric) is written to ``best.yaml`` as a presets
file (``presets``), every trial to ``trials.json``; the stage is skipped while its inputs and settings are unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from omegaconf import DictConfig, OmegaConf

from newsrec_dist.config import Distribution, SearchConfig, as_object, from_container, to_container, with_variant
from newsrec_dist.io import Manifest, artifact_fingerprint, atomic_write_text, read_manifest
from newsrec_dist.train.trials import fit_trials, trial_config, trial_threads

BEST_FILE = "best.yaml"
TRIALS_FILE = "trials.json"


class EpochReport(pl.Callback):
    """Hands each epoch's dev metrics to Tune: what ASHA compares at its rungs."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ray import tune

        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val_")}
        tune.report({**metrics, "epoch": trainer.current_epoch})


def _distribution(key: str, spec: Any) -> Any:
    from ray import tune

    if spec.kind == Distribution.choice:
        if not spec.values:
            raise ValueError(f"search.space.{key}: choice needs values")
        return tune.choice(list(spec.values))
    if spec.low is None or spec.high is None:
        raise ValueError(f"search.space.{key}: {spec.kind.value} needs low and high")
    sample = {Distribution.uniform: tune.uniform, Distribution.loguniform: tune.loguniform,
              Distribution.randint: tune.randint}[spec.kind]
    return sample(int(spec.low), int(spec.high)) if spec.kind == Distribution.randint else sample(spec.low, spec.high)


def _search_trial(config: dict[str, Any], base: dict[str, Any], keys: list[str], cwd: str, threads: int) -> None:
    from ray import tune

    from newsrec_dist.train.stage import train_model

    search = as_object(from_container(base).search)
    settings = {key: config[f"p{index}"] for index, key in enumerate(keys)}
    name = f"{search.model}.{tune.get_context().get_trial_id()}"
    cfg = with_variant(trial_config(base, cwd, threads), search.model,
                       {**settings, "model.name": name, "train.output_dir": str(Path(search.output_dir) / "runs")})
    train_model(cfg, observers=[EpochReport()])


def _manifest(cfg: DictConfig, base: Any, metric: str) -> Manifest:
    """What the search depends on: the data, the space and ASHA's settings, the searched model's base run config."""
    search = to_container(cfg.search)
    return Manifest(stage="search", inputs={"prepared": artifact_fingerprint(Path(cfg.data.prepared_dir))},
                    config={"search": {k: v for k, v in search.items() if k != "output_dir"}, "base": base.config,
                            "metric": metric})


def _trials(results: Any, keys: list[str], metric: str, runs: Path, model: str) -> list[dict[str, Any]]:
    """Every trial: its settings, the epochs it trained, its best dev metric, and whether ASHA stopped it (it
    neither finished, which publishes the run with its manifest, nor failed)."""
    trials = []
    for result in results:
        history, name = result.metrics_dataframe, f"{model}.{result.metrics.get('trial_id', '')}"
        reported = history is not None and metric in history
        finished = read_manifest(runs / name) is not None
        trials.append({"trial": name,
                       "settings": {key: result.config[f"p{index}"] for index, key in enumerate(keys)},
                       "epochs": int(history[metric].count()) if reported else 0,
                       "best": float(history[metric].max()) if reported else None, "finished": finished,
                       "stopped_by_asha": not finished and result.error is None,
                       "error": None if result.error is None else str(result.error)})
    return trials


def run_search(cfg: DictConfig) -> dict[str, Any]:
    """Search ``cfg.search.space``; returns the best trial (the one ``best.yaml`` holds)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    cfg = OmegaConf.merge(cfg, {"presets": []})  # a presets file may be this search's own best.yaml
    search: SearchConfig = as_object(cfg.search)
    from newsrec_dist.train.stage import plan, task_for

    base = plan(with_variant(cfg, search.model, {}))  # planned once: its input hashes read every vector file
    output, metric = Path(search.output_dir), f"val_{task_for(base).monitor}"
    manifest = _manifest(cfg, base, metric)
    existing = read_manifest(output)
    if existing is not None and existing.get("fingerprint") == manifest.fingerprint():
        return dict(existing["extra"])
    if not search.space:
        raise ValueError("search.space is empty: name the settings to search (dotted keys, as a variant's set)")
    keys = list(search.space)
    space = {f"p{index}": _distribution(key, spec) for index, (key, spec) in enumerate(search.space.items())}
    trials_cfg = as_object(cfg.train.trials)
    trainable = tune.with_parameters(_search_trial, base=to_container(cfg), keys=keys, cwd=os.getcwd(),
                                     threads=trial_threads(trials_cfg))
    # max_t one past the last epoch: ASHA stops a trial at max_t, which would cut a full run before its export
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs + 1,
                              grace_period=search.asha.grace_period, reduction_factor=search.asha.reduction_factor)
    results = fit_trials(trainable, space, trials_cfg, output / ".tune", "search", search.trials,
                         seed=search.seed, metric=metric, mode="max", num_samples=search.trials, scheduler=scheduler)
    trials = _trials(results, keys, metric, output / "runs", search.model)
    scored = [trial for trial in trials if trial["best"] is not None]
    if not scored:
        raise RuntimeError(f"no search trial reported {metric}: {[trial['error'] for trial in trials]}")
    best = max(scored, key=lambda trial: trial["best"])
    summary = {"model": search.model, "metric": metric, "value": best["best"], "trial": best["trial"],
               "settings": best["settings"]}
    atomic_write_text(output / BEST_FILE, "# the best draw of the search; apply it with presets=[this file]\n"
                      + yaml.safe_dump(summary, sort_keys=False))
    atomic_write_text(output / TRIALS_FILE, json.dumps(trials, indent=2))
    manifest.rows = {"trials": len(trials)}
    manifest.extra = summary
    manifest.write(output)
    return summary
