"""The main job: run the configured stages in order, each skipped when its artifact is current.

Stages today: ``synth`` (or ``download`` for real MIND) → ``prepare`` → ``keywords`` → ``graphs`` →
``node2vec`` → ``finetune`` → ``embed`` → ``glove`` → ``generate`` → ``train`` (every model in
``train.models``) → ``eval`` → ``report``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from newsrec_dist.config import as_object, to_container
from newsrec_dist.progress import progress_bar as _bars  # rich bars for in-process stages

console = Console()


@dataclass
class RunState:
    """What stages hand to later stages and to the report."""

    cfg: DictConfig
    timings: dict[str, float] = field(default_factory=dict)
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
    build_keywords(Path(cfg.data.prepared_dir), Path(cfg.graphs.keywords_path), cfg.graphs.keywords_top_k)


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


def stage_glove(state: RunState) -> None:
    from newsrec_dist.encoder.glove import glove_embeddings

    cfg = state.cfg
    state.outputs["glove"] = glove_embeddings(Path(cfg.data.prepared_dir), Path(cfg.encoder.embeddings_dir), _bars)


def stage_generate(state: RunState) -> None:
    from newsrec_dist.generate.stage import run_generation

    cfg = state.cfg
    state.outputs["generate"] = run_generation(as_object(cfg.generate), Path(cfg.data.prepared_dir),
                                               list(cfg.data.splits), _bars)


def stage_train(state: RunState) -> None:
    from newsrec_dist.config import with_model
    from newsrec_dist.train.stage import train_model

    state.outputs["train"] = {name: train_model(with_model(state.cfg, name), _bars) for name in state.cfg.train.models}


def stage_eval(state: RunState) -> None:
    from newsrec_dist.eval.evaluate import run_baselines

    cfg = state.cfg
    labeled = [split for split in cfg.data.splits if split != "test"]
    state.outputs["eval"] = run_baselines(
        Path(cfg.data.prepared_dir), Path(cfg.eval.output_dir), list(cfg.eval.baselines), cfg.eval.split,
        labeled, cfg.eval.cold_history_max, cfg.eval.diversity_k, cfg.seed, cfg.eval.write_prediction_file)


def stage_report(state: RunState) -> None:
    from newsrec_dist.eval.report import write_report

    state.outputs["report"] = str(write_report(state.cfg, state.outputs, state.timings))


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
    "train": stage_train,
    "eval": stage_eval,
    "report": stage_report,
}


def run_pipeline(cfg: DictConfig) -> RunState:
    """Run ``cfg.stages`` in order with timings; unknown stage names fail before anything runs."""
    unknown = [name for name in cfg.stages if name not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known stages: {list(STAGES)}")
    state = RunState(cfg=cfg)
    state.outputs["config"] = to_container(cfg)
    for name in cfg.stages:
        console.rule(f"[bold]stage {name}")
        started = time.perf_counter()
        STAGES[name](state)
        state.timings[name] = time.perf_counter() - started
        console.print(f"stage {name} done in {state.timings[name]:.1f} s")
    return state
