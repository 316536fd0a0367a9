"""``newsrec train``: fit one recommender on the prepared data, keep the best dev checkpoint, export it.

The run directory ``<train.output_dir>/<model.name>`` is written through a :class:`ResumableDir`: checkpoints
land in ``.partial-<name>/checkpoints`` (every ``checkpoint_every_n_steps`` steps, every epoch, and the best dev
AUC), a re-run after ``kill -9`` resumes from the newest one mid-epoch, and the finished directory holds
``model.safetensors``, ``metrics.json``, ``prediction.txt``, ``summary.json`` and the manifest. Checkpoints are
read weights-only (tensors and plain containers, never code); an unreadable one restarts the run afresh.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_model

from newsrec_dist.config import ModelConfig, TrainConfig, as_object, masked, to_container
from newsrec_dist.checkpoints import load_weights
from newsrec_dist.eval.evaluate import EvalData, evaluate_scores, load_eval_data, per_impression_metrics
from newsrec_dist.eval.impressions import ClickCounter, ImpressionSet, load_impressions
from newsrec_dist.eval.metrics import write_prediction_file
from newsrec_dist.eval.significance import write_per_impression
from newsrec_dist.io import Manifest, ResumableDir, artifact_fingerprint, atomic_write_text, read_manifest, sha256_file
from newsrec_dist.models.recommender import Recommender
from newsrec_dist.models.scorers import RANKING_SCORERS
from newsrec_dist.progress import ProgressFactory, no_progress
from newsrec_dist.train.features import Features, news_features, user_features
from newsrec_dist.train.module import RecommenderModule
from newsrec_dist.train.samples import PopularNews, SplitArrays, TrainBatches
from newsrec_dist.train.scoring import score_split
from newsrec_dist.train.tracking import run_loggers

CHECKPOINTS = "checkpoints"
BEST = "best"
EPOCHS_FILE = "epochs.json"
RESUMES_FILE = "resumed_from.txt"  # one line per resumed fit: the checkpoint it continued from
RANKING_KEYS = ("auc", "mrr", "ndcg@5", "ndcg@10")
# settings that change how fast or where a run goes, not what it computes
RUNTIME_KEYS = ("models", "progress", "threads", "output_dir", "eval_batch_impressions", "ray", "trials", "tracking")


@dataclass
class TrainRun:
    cfg: DictConfig
    model: ModelConfig
    train: TrainConfig
    prepared: Path
    final: Path
    inputs: dict[str, str]
    config: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return Manifest(stage="train", inputs=self.inputs, config=self.config).fingerprint()


def _input_fingerprints(cfg: DictConfig, model: ModelConfig, train: TrainConfig) -> dict[str, str]:
    inputs = {"prepared": artifact_fingerprint(Path(cfg.data.prepared_dir))}
    for view in model.news.views:
        for source in view.sources:
            inputs[f"vectors:{source}"] = artifact_fingerprint(Path(source))
        if view.kind == "vectors" and view.sources:
            keywords = Path(model.news.keywords_path)
            if keywords.is_file():
                inputs["keywords"] = sha256_file(keywords)
    if model.news.table:
        inputs["news"] = sha256_file(Path(model.news.table))
    if model.interest.enabled and model.interest.profiles_path is not None:
        inputs["profiles"] = sha256_file(Path(model.interest.profiles_path))
    if model.kind == "graph_cf" and model.graph.profile.vectors:
        inputs["item_profiles"] = artifact_fingerprint(Path(model.graph.profile.vectors))
    return inputs


def plan(cfg: DictConfig) -> TrainRun:
    model, train = as_object(cfg.model), as_object(cfg.train)
    # the run's name labels it and is not part of what it computes: two ablation arms that are one run share it
    config = {"model": {k: v for k, v in to_container(cfg.model).items() if k != "name"},
              "train": {k: v for k, v in to_container(cfg.train).items() if k not in RUNTIME_KEYS},
              "eval": {"cold_history_max": cfg.eval.cold_history_max, "diversity_k": cfg.eval.diversity_k,
                       **({"topk": list(cfg.eval.topk), "topk_pool": cfg.eval.topk_pool}
                          if cfg.model.kind == "graph_cf" else {})}}
    return TrainRun(cfg=cfg, model=model, train=train, prepared=Path(cfg.data.prepared_dir),
                    final=Path(train.output_dir) / model.name, inputs=_input_fingerprints(cfg, model, train),
                    config=config)


@dataclass
class TrainData:
    features: Features
    train: SplitArrays
    dev: SplitArrays
    dev_eval: EvalData
    popular: PopularNews | None


def _user_rows(impressions: ImpressionSet, rows: dict[str, int]) -> np.ndarray:
    keys = pa.array(list(rows), pa.string())
    return pc.index_in(impressions.user_id, value_set=keys).fill_null(-1).to_numpy() + 1


def load_train_data(run: TrainRun, progress: ProgressFactory = no_progress) -> TrainData:
    cfg = run.cfg
    labeled = [split for split in cfg.data.splits if split != "test"]
    dev_eval = load_eval_data(run.prepared, run.train.eval_split, labeled)
    # int32 news codes: the training split is the largest array held (its keys are built in int64: samples.py)
    train_impressions = load_impressions(run.prepared, "train", dev_eval.catalog, codes=np.int32)
    train_users = set(train_impressions.user_id.unique().to_pylist())
    user_ids = sorted(train_users | set(dev_eval.impressions.user_id.unique().to_pylist()))
    users, user_coverage = user_features(user_ids, np.asarray([user in train_users for user in user_ids]),
                                         run.model.interest)
    news, coverage = news_features(dev_eval.catalog, run.prepared, run.model, run.train.seed, progress)
    rows = {user: row for row, user in enumerate(user_ids, start=1)}
    popular = None
    if run.train.sampler.kind == "popk":
        items, times = train_impressions.clicks()
        popular = PopularNews(ClickCounter(items, times), dev_eval.catalog.size, train_impressions.time,
                              run.train.sampler)
    return TrainData(features=Features(news, users, rows, coverage | user_coverage),
                     train=SplitArrays(train_impressions, _user_rows(train_impressions, rows)),
                     dev=SplitArrays(dev_eval.impressions, _user_rows(dev_eval.impressions, rows)),
                     dev_eval=dev_eval, popular=popular)


def build_model(run: TrainRun, data: TrainData) -> Recommender:
    torch.manual_seed(run.train.seed)
    return Recommender(run.model, data.features.news, data.features.users, run.train.max_history)


def evaluate(model: Recommender, run: TrainRun, data: TrainData, device: torch.device) -> tuple[dict[str, Any], np.ndarray]:
    scores = score_split(model, data.dev, data.features.news.rows, run.train.max_history,
                         run.train.eval_batch_impressions, device)
    return evaluate_scores(data.dev_eval, scores, run.cfg.eval.cold_history_max, run.cfg.eval.diversity_k), scores


class ImpressionTask:
    """What the shared trainer needs from impression models: data, model, batches, evaluation, export."""

    monitor, logged, unit = "auc", RANKING_KEYS, "impressions"

    def load(self, run: TrainRun, progress: ProgressFactory) -> TrainData:
        return load_train_data(run, progress)

    def build(self, run: TrainRun, data: TrainData) -> Recommender:
        return build_model(run, data)

    def batches(self, run: TrainRun, data: TrainData, rank: int, world_size: int) -> TrainBatches:
        cfg = run.train
        return TrainBatches(data.train, cfg.negatives, cfg.sampler, data.popular, cfg.batch_size, cfg.max_history,
                            cfg.seed, rank, world_size)

    def evaluate(self, model: Recommender, run: TrainRun, data: TrainData, device: torch.device
                 ) -> tuple[dict[str, Any], np.ndarray]:
        return evaluate(model, run, data, device)

    def export(self, directory: Path, model: Recommender, run: TrainRun, data: TrainData, scores: np.ndarray
               ) -> dict[str, Any]:
        impressions = data.dev.impressions
        write_prediction_file(directory / "prediction.txt", impressions.impression_id, scores, impressions.offsets)
        # what the report's paired tests compare between arms (the same dev impressions in every arm)
        write_per_impression(directory, impressions.impression_id,
                             per_impression_metrics(data.dev_eval, scores, run.cfg.eval.diversity_k)[0])
        return {"coverage": data.features.coverage, "eval_rows": data.dev.impressions.size}

    def rows(self, data: TrainData) -> dict[str, int]:
        return {"train_impressions": data.train.impressions.size, "eval_impressions": data.dev.impressions.size}


def task_for(run: TrainRun) -> Any:
    """The model kind's task (``model.kind``): impressions or graph_cf."""
    if run.model.kind == "impressions":
        return ImpressionTask()
    if run.model.kind == "graph_cf":
        from newsrec_dist.train.graph_cf import GraphTask

        return GraphTask(list(run.cfg.eval.topk), run.cfg.eval.topk_pool)
    raise ValueError(f"model.kind must be impressions or graph_cf, got {run.model.kind!r}")


@dataclass(frozen=True)
class Evaluated:
    """One dev evaluation of the weights at ``step``: what ``finish`` reuses when the best checkpoint is those."""

    step: int
    results: dict[str, Any]
    scores: Any
    seconds: float


class TrainingRecord(pl.Callback):
    """Dev metrics after every epoch (logged as ``val_*`` for the best checkpoint) and training throughput.
    ``best`` keeps the evaluation of the best epoch seen in this process, as ``ModelCheckpoint`` picks it (strictly
    better), so that ``finish`` does not evaluate the same weights again (MIND-large: 8 min for NRMS, 17 for DIN)."""

    def __init__(self, task: Any, run: TrainRun, data: Any, work: Path) -> None:
        self.task, self.run, self.data, self.path = task, run, data, work / EPOCHS_FILE
        self.epochs: list[dict[str, Any]] = []
        self.best: Evaluated | None = None
        self._samples, self._seconds, self._started = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._seconds += time.perf_counter() - self._started
        self._samples += len(batch["users"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started = time.perf_counter()
        results, scores = self.task.evaluate(pl_module.model, self.run, self.data, pl_module.device)
        seconds = time.perf_counter() - started
        monitored = float(results["all"][self.task.monitor])
        if self.best is None or monitored > float(self.best.results["all"][self.task.monitor]):
            self.best = Evaluated(trainer.global_step, results, scores, seconds)
        values = {f"val_{key}": float(results["all"][key]) for key in self.task.logged}
        pl_module.log_dict(values, sync_dist=False)
        loss = trainer.callback_metrics.get("train_loss")
        self.epochs.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                            "train_loss": float(loss) if loss is not None else None,
                            "samples_per_second": self._samples * trainer.world_size / max(self._seconds, 1e-9),
                            "eval_seconds": seconds, **values})
        self._samples, self._seconds = 0, 0.0
        if trainer.is_global_zero:
            atomic_write_text(self.path, json.dumps(self.epochs, indent=2))

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs = list(state_dict["epochs"])


class BatchesDataModule(pl.LightningDataModule):
    """Hands each rank its shard of the training batches (ranks are known only once the strategy is up)."""

    def __init__(self, task: Any, run: TrainRun, data: Any) -> None:
        super().__init__()
        self.task, self.run, self.data = task, run, data

    def train_dataloader(self) -> Any:
        return self.task.batches(self.run, self.data, self.trainer.global_rank, self.trainer.world_size)


STEP_PATTERN = re.compile(r"step=(\d+)")


class StepBoundedProgressBar(TQDMProgressBar):
    """The epoch's bar counts the batches that will run: ``max_steps`` may end the run inside the epoch (Lightning
    bounds the total only when ``max_epochs`` is -1), so its total and ETA are the remaining steps."""

    @property
    def total_train_batches(self) -> int | float:
        batches, max_steps = self.trainer.num_training_batches, self.trainer.max_steps
        return min(batches, max_steps - self.trainer.global_step) if max_steps and max_steps > 0 else batches


def early_stopping(cfg: TrainConfig, monitor: str) -> list[EarlyStopping]:
    """Stop once the dev metric has not improved for ``patience`` epochs (checked after each epoch's evaluation;
    its state rides in the checkpoints, so a resumed run keeps counting)."""
    if cfg.early_stopping.patience is None:
        return []
    return [EarlyStopping(f"val_{monitor}", min_delta=cfg.early_stopping.min_delta,
                          patience=cfg.early_stopping.patience, mode="max", check_on_train_epoch_end=True)]


def newest_checkpoint(directory: Path) -> Path | None:
    """The checkpoint with the highest step (periodic and epoch checkpoints share the naming)."""
    found = [(int(m.group(1)), path) for path in directory.glob("*.ckpt") if (m := STEP_PATTERN.search(path.name))]
    return max(found)[1] if found else None


def restore_checkpoints(work: ResumableDir) -> None:
    """Read every checkpoint a resumed run loads (``fit`` the newest, ``finish`` the best and the newest)
    weights-only, as Lightning is told to: a torn one, or one whose pickle holds more than tensors and plain
    containers, warns naming it and empties the work directory, so the run trains afresh instead of failing."""
    for path in sorted((work.path / CHECKPOINTS).glob("*.ckpt")):
        if work.restore(path, load_weights) is None:
            return


def fit(run: TrainRun, work: Path, strategy: Any = None, plugins: list[Any] | None = None,
        prepare: Callable[[pl.Trainer], pl.Trainer] | None = None, data: Any = None,
        observers: list[pl.Callback] | None = None) -> pl.Trainer:
    """Train (resuming from ``work/checkpoints`` when it holds a checkpoint); the same code on every rank.
    ``observers``: callbacks that read each epoch's dev metrics (after they are logged), e.g. a search's report."""
    cfg, task = run.train, task_for(run)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = data or task.load(run, no_progress)
    module = RecommenderModule(task.build(run, data), cfg)
    checkpoints = work / CHECKPOINTS
    callbacks = [
        ModelCheckpoint(checkpoints, "{epoch}-{step}", every_n_train_steps=cfg.checkpoint_every_n_steps, save_top_k=1),
        ModelCheckpoint(checkpoints, "{epoch}-{step}", every_n_epochs=1, save_top_k=1, save_on_train_epoch_end=True),
        ModelCheckpoint(checkpoints, BEST, monitor=f"val_{task.monitor}", mode="max", save_top_k=1,
                        save_on_train_epoch_end=True),
        TrainingRecord(task, run, data, work),  # before EarlyStopping: it logs the dev metric that one reads
        *(observers or []),
        *early_stopping(cfg, task.monitor),
        *([StepBoundedProgressBar()] if cfg.progress else []),
    ]
    trainer = pl.Trainer(
        # an injected strategy (Ray Train) owns the process layout: one device per worker
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, accelerator=cfg.accelerator,
        devices="auto" if strategy is not None else cfg.devices,
        num_nodes=cfg.num_nodes, strategy=strategy or cfg.strategy, precision=cfg.precision, plugins=plugins,
        deterministic=cfg.deterministic,
        callbacks=callbacks, default_root_dir=str(work), logger=run_loggers(run, work),
        enable_progress_bar=cfg.progress, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        log_every_n_steps=10)
    if prepare is not None:
        trainer = prepare(trainer)
    resume = newest_checkpoint(checkpoints)
    if resume is not None and trainer.is_global_zero:
        print(f"resuming from checkpoint {resume.name}", file=sys.stderr, flush=True)
        with open(work / RESUMES_FILE, "a") as record:
            record.write(resume.name + "\n")
    trainer.fit(module, datamodule=BatchesDataModule(task, run, data), ckpt_path=resume, weights_only=True)
    return trainer


def _stopped_early(checkpoint: dict[str, Any]) -> bool:
    """Whether early stopping ended the run (Lightning keeps its state in the checkpoint's callbacks)."""
    return any(key.startswith("EarlyStopping") and state.get("stopped_epoch", 0) > 0
               for key, state in checkpoint.get("callbacks", {}).items())


def _resumes(work: Path) -> list[str]:
    path = work / RESUMES_FILE
    return path.read_text().split() if path.is_file() else []


def finish(run: TrainRun, work: ResumableDir, progress: ProgressFactory = no_progress, data: Any = None,
           evaluated: Evaluated | None = None, load_seconds: float = 0.0) -> dict[str, Any]:
    """Reload the best checkpoint, evaluate it on the dev split, export weights and publish the run.
    ``evaluated``: the training's own evaluation of the best epoch, used when it is the chosen checkpoint's step;
    ``load_seconds``: how long loading ``data`` (features and batches' arrays) took the caller."""
    task = task_for(run)
    checkpoints = work.path / CHECKPOINTS
    best = checkpoints / f"{BEST}.ckpt"
    chosen = best if best.is_file() else newest_checkpoint(checkpoints)
    if chosen is None:
        raise RuntimeError(f"{checkpoints}: training wrote no checkpoint")
    checkpoint = load_weights(chosen)
    if data is None:
        started = time.perf_counter()
        data = task.load(run, progress)
        load_seconds = time.perf_counter() - started
    model = task.build(run, data)
    model.load_state_dict({key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()})
    device = torch.device("cuda" if run.train.accelerator == "gpu" and torch.cuda.is_available() else "cpu")
    if evaluated is not None and evaluated.step == int(checkpoint["global_step"]):
        results, scores, eval_seconds = evaluated.results, evaluated.scores, evaluated.seconds
    else:
        started = time.perf_counter()
        results, scores = task.evaluate(model.to(device), run, data, device)
        eval_seconds = time.perf_counter() - started
    exported = task.export(work.path, model, run, data, scores)
    save_model(model.cpu(), str(work.path / "model.safetensors"))
    last = load_weights(newest_checkpoint(checkpoints))
    summary = {"model": run.model.name, "kind": run.model.kind, "checkpoint": chosen.name,
               "ranking": run.model.kind == "impressions" and run.model.scorer.kind in RANKING_SCORERS,
               "best_epoch": int(checkpoint["epoch"]), "steps": int(last["global_step"]),
               "max_epochs": run.train.epochs, "stopped_early": _stopped_early(last),
               "resumed_from": _resumes(work.path), "epochs": json.loads((work.path / EPOCHS_FILE).read_text()),
               "parameters": sum(p.numel() for p in model.parameters()), **exported, "eval_unit": task.unit,
               "load_seconds": load_seconds, "eval_seconds": eval_seconds,
               "eval_rows_per_second": exported["eval_rows"] / max(eval_seconds, 1e-9), "metrics": results}
    atomic_write_text(work.path / "metrics.json", json.dumps(results, indent=2))
    atomic_write_text(work.path / "summary.json", json.dumps(summary, indent=2, default=float))
    atomic_write_text(work.path / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(masked(run.config))))
    Manifest(stage="train", inputs=run.inputs, config=run.config, rows=task.rows(data), extra=summary).write(work.path)
    work.publish()
    return summary


def finished_summary(run: TrainRun) -> dict[str, Any] | None:
    """The summary of this run when its directory holds it finished (same inputs and config), else None."""
    existing = read_manifest(run.final)
    if existing is not None and existing.get("fingerprint") == run.fingerprint:
        return dict(existing["extra"])
    return None


def train_model(cfg: DictConfig, progress: ProgressFactory = no_progress, run: TrainRun | None = None,
                observers: list[pl.Callback] | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` (or reuse a finished run with the same inputs and config); returns its summary.
    ``run``: ``plan(cfg)`` when the caller already made it (its input hashes are not computed twice);
    ``observers``: see :func:`fit` (in-process runs only)."""
    run = run or plan(cfg)
    finished = finished_summary(run)
    if finished is not None:
        return finished
    work = ResumableDir(run.final, run.fingerprint)
    restore_checkpoints(work)  # before any rank or Ray worker resumes from one
    if not work.state:  # record the fingerprint now: a re-run after a kill keeps the checkpoints and resumes
        work.save({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if run.train.ray.enabled:
        from newsrec_dist.train.ray_train import fit_on_ray

        fit_on_ray(run, work.path)
        return finish(run, work, progress)
    # one load serves fit and finish (PLM-NR's frozen layers run over every news item once, not twice)
    started = time.perf_counter()
    data = task_for(run).load(run, progress)
    load_seconds = time.perf_counter() - started
    trainer = fit(run, work.path, data=data, observers=observers)
    if trainer.global_rank != 0:
        return {}
    record = next(callback for callback in trainer.callbacks if isinstance(callback, TrainingRecord))
    return finish(run, work, progress, data, record.best, load_seconds)
