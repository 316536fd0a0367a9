"""The main job: run the configured stages in order, each skipped when its artifact is current.

Stages today: ``synth`` (or ``download`` for real MIND) → ``prepare`` → ``keywords`` → ``graphs`` →
``node2vec`` → ``finetune`` → ``embed`` → ``glove`` → ``generate`` → ``embed_profiles`` (PFR) → ``train`` (every model in
``train.models`` and every arm of ``ablations``) → ``eval`` → ``report``. Each stage's artifacts carry manifests
(config subset, input fingerprints, code hash), so an unchanged stage is skipped and a killed run resumes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from newsrec_dist.config import ConfigError, as_object, to_container
from newsrec_dist.io import MANIFEST_NAME, run_lock
from newsrec_dist.progress import progress_bar as _bars  # rich bars for in-process stages

console = Console()


@dataclass
class RunState:
    """What stages hand to later stages and to the report."""

    cfg: DictConfig
    timings: dict[str, float] = field(default_factory=dict)
    ran: dict[str, bool] = field(default_factory=dict)  # False: every artifact was current, nothing ran
    outputs: dict[str, Any] = field(default_factory=dict)


def stage_synth(state: RunState) -> None:
    from newsrec_dist.data.synth import generate

    state.outputs["synth"] = generate(as_object(state.cfg.data.synth), Path(state.cfg.data.raw_dir))


def stage_download(state: RunState) -> None:
    from newsrec_dist.data.download import download_mind

    data = state.cfg.data
    download_mind(data.name, list(data.splits), data.download.files, data.download.base_url,
                  Path(data.download.cache_dir), Path(data.raw_dir))


def stage_prepare(state: RunState) -> None:
    from newsrec_dist.data.prepare import prepare

    data = state.cfg.data
    result = prepare(Path(data.raw_dir), Path(data.prepared_dir), list(data.splits), strict=data.strict)
    state.outputs["prepare"] = result.summary


def stage_keywords(state: RunState) -> None:
    from newsrec_dist.graphs.build import build_keywords

    cfg = state.cfg
    build_keywords(Path(cfg.data.prepared_dir), Path(cfg.graphs.tfidf_dir), cfg.graphs.keywords_top_k)


def stage_graphs(state: RunState) -> None:
    from newsrec_dist.graphs.build import KEYWORDS_FILE, build_graphs

    cfg = state.cfg
    state.outputs["graphs"] = build_graphs(as_object(cfg.graphs), Path(cfg.data.prepared_dir),
                                           Path(cfg.graphs.keywords_path) / KEYWORDS_FILE,
                                           Path(cfg.graphs.output_dir))


def stage_node2vec(state: RunState) -> None:
    from newsrec_dist.embed.node2vec_stage import embed_graphs

    state.outputs["node2vec"] = embed_graphs(as_object(state.cfg.node2vec))


def stage_finetune(state: RunState) -> None:
    from newsrec_dist.encoder.finetune import finetune

    state.outputs["finetune"] = finetune(as_object(state.cfg.encoder), Path(state.cfg.data.prepared_dir), _bars)


def stage_embed(state: RunState) -> None:
    from newsrec_dist.encoder.embed import embed_news

    state.outputs["embed"] = embed_news(as_object(state.cfg.encoder), Path(state.cfg.data.prepared_dir), _bars)


def stage_embed_profiles(state: RunState) -> None:
    from newsrec_dist.encoder.embed import embed_profiles

    state.outputs["embed_profiles"] = embed_profiles(as_object(state.cfg.encoder), _bars)


def stage_glove(state: RunState) -> None:
    from newsrec_dist.encoder.glove import glove_embeddings

    cfg = state.cfg
    state.outputs["glove"] = glove_embeddings(Path(cfg.data.prepared_dir), Path(cfg.encoder.embeddings_dir), _bars)


def stage_generate(state: RunState) -> None:
    from newsrec_dist.generate.stage import run_generation

    cfg = state.cfg
    state.outputs["generate"] = run_generation(as_object(cfg.generate), Path(cfg.data.prepared_dir),
                                               list(cfg.data.splits), _bars)


@dataclass(frozen=True)
class TrainJob:
    """One training run of the train stage: a model of ``train.models`` or one arm of an ablation, at one seed."""

    name: str  # the run directory under ``train.output_dir``
    model: str
    settings: dict[str, Any]
    ablation: str | None = None
    variant: str | None = None
    seed: int | None = None  # None: ``train.seed`` as configured (no ``seeds`` list)


def _seeded(name: str, model: str, settings: dict[str, Any], seeds: list[int], ablation: str | None = None,
            variant: str | None = None) -> list[TrainJob]:
    """The run once per seed (``<name>.seed<N>`` with ``train.seed=N``), or once as configured without seeds."""
    if not seeds:
        return [TrainJob(name, model, {**settings, "model.name": name}, ablation, variant)]
    return [TrainJob(f"{name}.seed{seed}", model, {**settings, "model.name": f"{name}.seed{seed}", "train.seed": seed},
                     ablation, variant, seed) for seed in seeds]


def train_jobs(cfg: DictConfig) -> list[TrainJob]:
    """``train.models``, then every ablation variant (crossed with the ablation's ``models`` when it has them),
    each once per seed of ``seeds``."""
    seeds = list(cfg.seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    jobs = [job for name in cfg.train.models for job in _seeded(name, name, {}, seeds)]
    for ablation in cfg.ablations:
        for variant in ablation.variants:
            if ablation.models and variant.model:
                raise ValueError(f"ablation {ablation.name}: variant {variant.name} names a model, but the "
                                 f"ablation runs every variant with each of {list(ablation.models)}")
            for model in ablation.models or [variant.model or cfg.model.name]:
                name = f"{ablation.name}.{model}.{variant.name}" if ablation.models else f"{ablation.name}.{variant.name}"
                jobs += _seeded(name, model, {**ablation.set, **variant.set}, seeds, ablation.name, variant.name)
    return jobs


def _tags(job: TrainJob) -> dict[str, str]:
    """What a run is, for the experiment trackers (train.tracking): its model preset, ablation and arm."""
    return {"model": job.model, **({"ablation": job.ablation, "arm": str(job.variant)} if job.ablation else {})}


def stage_train(state: RunState) -> None:
    from newsrec_dist.config import with_variant
    from newsrec_dist.train.stage import plan, train_model
    from newsrec_dist.train.tracking import prepare_mlflow

    cfg = state.cfg
    jobs = train_jobs(cfg)
    runs = [plan(with_variant(cfg, job.model, {**job.settings, "train.tracking.tags": _tags(job)})) for job in jobs]
    first: dict[str, str] = {}  # run fingerprint → the first job with it: equal arms train once
    for job, run in zip(jobs, runs):
        first.setdefault(run.fingerprint, job.name)
    prepare_mlflow(as_object(cfg.train.tracking), cfg.train.output_dir, cfg.experiment_name)
    if cfg.train.trials.parallel > 1:
        _train_as_trials(cfg, {job.name: run for job, run in zip(jobs, runs) if first[run.fingerprint] == job.name})
    summaries: dict[str, Any] = {}
    arms: dict[str, list[dict[str, str]]] = {}
    for job, run in zip(jobs, runs):
        if first[run.fingerprint] != job.name:
            console.print(f"{job.name}: the same run as {first[run.fingerprint]}")
            summaries[job.name] = summaries[first[run.fingerprint]]
        else:  # after trials, every run is finished: this reads its manifest
            if cfg.train.trials.parallel <= 1:
                console.rule(f"train {job.name}")
            summaries[job.name] = train_model(run.cfg, _bars, run)
        if job.ablation is not None:
            arms.setdefault(job.ablation, []).append({"variant": job.variant, "model": job.model, "run": job.name,
                                                      "seed": job.seed})
    state.outputs["train"] = summaries
    state.outputs["model_runs"] = [job.name for job in jobs if job.ablation is None]
    state.outputs["ablations"] = arms


def _train_as_trials(cfg: DictConfig, runs: dict[str, Any]) -> None:
    """The distinct runs not finished yet, as parallel Ray Tune trials (train.trials)."""
    from newsrec_dist.train.stage import finished_summary
    from newsrec_dist.train.trials import run_trials

    if cfg.train.ray.enabled:
        raise ConfigError("train.trials.parallel > 1 trains each run as one trial; train.ray.enabled trains one run "
                          "on several workers: enable one of them")
    left = {name: run.cfg for name, run in runs.items() if finished_summary(run) is None}
    console.print(f"{len(runs) - len(left)} of {len(runs)} runs already trained")
    if left:
        run_trials(left, as_object(cfg.train.trials), Path(cfg.train.output_dir))


def stage_search(state: RunState) -> None:
    from newsrec_dist.train.search import run_search

    state.outputs["search"] = run_search(state.cfg)


def stage_eval(state: RunState) -> None:
    from newsrec_dist.eval.evaluate import run_baselines

    cfg = state.cfg
    labeled = [split for split in cfg.data.splits if split != "test"]
    state.outputs["eval"] = run_baselines(
        Path(cfg.data.prepared_dir), Path(cfg.eval.output_dir), list(cfg.eval.baselines), cfg.eval.split,
        labeled, cfg.eval.cold_history_max, cfg.eval.diversity_k, cfg.seed, cfg.eval.write_prediction_file,
        Path(cfg.eval.oracle_dir))


def stage_report(state: RunState) -> None:
    from newsrec_dist.eval.report import write_report

    state.outputs["report"] = str(write_report(state.cfg, state.outputs, state.timings, state.ran))


STAGES: dict[str, Callable[[RunState], None]] = {
    "synth": stage_synth,
    "download": stage_download,
    "prepare": stage_prepare,
    "keywords": stage_keywords,
    "graphs": stage_graphs,
    "node2vec": stage_node2vec,
    "finetune": stage_finetune,
    "embed": stage_embed,
    "glove": stage_glove,
    "generate": stage_generate,
    "embed_profiles": stage_embed_profiles,
    "search": stage_search,
    "train": stage_train,
    "eval": stage_eval,
    "report": stage_report,
}


def stage_outputs(cfg: DictConfig, name: str) -> list[Path]:
    """The artifact directories a stage writes (their manifests say whether it is current)."""
    from newsrec_dist.encoder.embed import embedding_name, profiles_name
    from newsrec_dist.encoder.glove import NAME as GLOVE

    outputs = {
        "synth": [cfg.data.raw_dir], "download": [cfg.data.raw_dir], "prepare": [cfg.data.prepared_dir],
        "keywords": [cfg.graphs.tfidf_dir], "graphs": [cfg.graphs.output_dir],
        "node2vec": [cfg.node2vec.output_dir], "finetune": [cfg.encoder.output_dir],
        "embed": [Path(cfg.encoder.embeddings_dir) / embedding_name(as_object(cfg.encoder))],
        "glove": [Path(cfg.encoder.embeddings_dir) / GLOVE], "generate": [cfg.generate.output_dir],
        "embed_profiles": [Path(cfg.encoder.embeddings_dir) / profiles_name(as_object(cfg.encoder))],
        "search": [cfg.search.output_dir], "train": [cfg.train.output_dir], "eval": [cfg.eval.output_dir], "report": [],
    }
    return [Path(path) for path in outputs[name]]


def force_rerun(cfg: DictConfig, names: list[str]) -> None:
    """Make these stages run again: drop their manifests and any partial (resumable) work."""
    for name in names:
        for path in stage_outputs(cfg, name):
            for stale in [path.parent / f".partial-{path.name}", *path.glob("**/.partial-*")]:
                shutil.rmtree(stale, ignore_errors=True)
            for manifest in path.glob(f"**/{MANIFEST_NAME}"):
                manifest.unlink()


def _wrote_artifact(cfg: DictConfig, name: str, since: float) -> bool:
    return any(manifest.stat().st_mtime >= since for path in stage_outputs(cfg, name)
               for manifest in path.glob(f"**/{MANIFEST_NAME}"))


def run_pipeline(cfg: DictConfig, from_stage: str | None = None) -> RunState:
    """Run ``cfg.stages`` in order, each skipped when its artifacts are current; ``from_stage`` and every stage
    after it run again. Unknown stage names fail before anything runs; so does a second run on the same
    ``paths.work_dir`` (:func:`run_lock`), before it touches any artifact."""
    stages = list(cfg.stages)
    unknown = [name for name in stages if name not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known stages: {list(STAGES)}")
    if from_stage is not None and from_stage not in stages:
        raise ValueError(f"--from {from_stage}: not a stage of this run; its stages: {stages}")
    from newsrec_dist.cluster.ray_session import one_ray_per_run  # here: importing the pipeline stays light

    with run_lock(Path(cfg.paths.work_dir)):
        if from_stage is not None:
            force_rerun(cfg, stages[stages.index(from_stage):])
        state = RunState(cfg=cfg)
        state.outputs["config"] = to_container(cfg)
        with one_ray_per_run():
            for name in stages:
                _run_stage(state, name)
    return state


def _run_stage(state: RunState, name: str) -> None:
    console.rule(f"[bold]stage {name}")
    started_wall, started = time.time(), time.perf_counter()
    STAGES[name](state)
    state.timings[name] = time.perf_counter() - started
    state.ran[name] = name == "report" or _wrote_artifact(state.cfg, name, started_wall - 1)
    verdict = "done" if state.ran[name] else "up to date, skipped"
    console.print(f"stage {name} {verdict} in {state.timings[name]:.1f} s")
