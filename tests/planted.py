"""Planted-interest data and the small training settings that tests and benchmarks/train_learnability.py share
(imported as `planted`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import THREADS

from newsrec_dist.config import GraphsConfig, Node2VecConfig, SparkConfig, SynthConfig, load_config
from newsrec_dist.data.prepare import prepare
from newsrec_dist.data.synth import generate
from newsrec_dist.embed.node2vec import train_graph
from newsrec_dist.encoder.glove import glove_embeddings
from newsrec_dist.eval.evaluate import run_baselines
from newsrec_dist.graphs.build import build_graphs, build_keywords
from newsrec_dist.train.stage import train_model

# Small and quick, the same code as the defaults: CPU, one process, a few epochs.
FAST = ["model.news.dim=64", "model.news.heads=4", "model.user.heads=4", "model.news.attention_dim=32",
        "train.max_history=20", "train.batch_size=32", "train.epochs=2", "train.max_steps=-1", "train.progress=false",
        f"train.threads={THREADS}"]
# Learnability floors, against the data's own ceiling: a model must reach this share of the generator's oracle
# lift over random (the true utilities' AUC) and beat the popularity baseline by POPULARITY_MARGIN.
ORACLE_SHARE = 0.35
POPULARITY_MARGIN = 0.05

LEARNERS = [("nrms", ()), ("naml", ()), ("lstur", ()), ("lstur", ("model.user.lstur_mode=con",)), ("bst", ()),
            ("din", ()), ("dcn", ()), ("pnn", ())]

# The resume tests' run (kill -9 in tests/test_train.py, a Slurm requeue in tests/test_submit.py): both compare
# with one uninterrupted run of these settings (the `lstur_straight` fixture).
LSTUR_RESUME = ("model=lstur", "train.epochs=2", "train.checkpoint_every_n_steps=7")


def make_planted(root: Path, conformity_share: float = 0.0) -> Path:
    """A tiny catalog with more impressions and a clear interest signal: what a model must learn within minutes
    (no conformist impressions unless asked: they are popularity noise to a content model). The baselines' and
    the oracle's dev metrics go to ``root/eval`` (read by :func:`floor`)."""
    generate(SynthConfig(scale="tiny", n_impressions=5000, affinity_weight=10.0, conformity_share=conformity_share),
             root / "raw", show_progress=False)
    prepare(root / "raw", root / "prepared", ["train", "dev"], show_progress=False)
    run_baselines(root / "prepared", root / "eval", ["random", "popularity", "category_profile", "oracle"], "dev",
                  ["train", "dev"], 3, 10, 0, False, root / "raw" / "oracle")
    return root / "prepared"


def baseline_auc(prepared: Path) -> dict[str, float]:
    """Dev AUC of the baselines and the oracle on the planted data (written by :func:`make_planted`)."""
    payload = json.loads((prepared.parent / "eval" / "metrics.json").read_text())
    return {name: groups["all"]["auc"] for name, groups in payload["models"].items()}


def floor(prepared: Path) -> float:
    """The dev AUC a model must reach on the planted data: ORACLE_SHARE of the oracle's lift, and the popularity
    baseline plus POPULARITY_MARGIN."""
    auc = baseline_auc(prepared)
    return max(0.5 + ORACLE_SHARE * (auc["oracle"] - 0.5), auc["popularity"] + POPULARITY_MARGIN)


def oracle_share(prepared: Path, model_auc: float) -> float:
    return (model_auc - 0.5) / (baseline_auc(prepared)["oracle"] - 0.5)


def overrides(prepared: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.prepared_dir={prepared}", f"train.output_dir={out}", f"paths.work_dir={out.parent}", *FAST, *extra]


def train(prepared: Path, out: Path, *extra: str) -> dict:
    return train_model(load_config(overrides(prepared, out, *extra)))


# Node2Vec sized for tests (seconds on 2 cores on the tiny graphs): tests/test_node2vec.py and LECOP's graph view.
SMALL_NODE2VEC = Node2VecConfig(embedding_dim=32, walk_length=10, context_size=5, walks_per_node=4, epochs=3,
                                batch_size=128, lr=0.02)

# Smaller still, as command-line overrides (one graph, one epoch): the submission and bench tests' Node2Vec jobs.
# They test where and how fast a job runs, not what it learns: one epoch of 2 walks a node moves the loss less
# than the stage's 1 % check asks (test_node2vec.py tests that check), so it is off here.
NODE2VEC = ["node2vec.graphs=['news/w=2']", "node2vec.embedding_dim=16", "node2vec.walk_length=8",
            "node2vec.context_size=4", "node2vec.walks_per_node=2", "node2vec.epochs=1", "node2vec.task_cpus=1",
            "node2vec.min_loss_drop=0"]


def lecop_overrides(prepared: Path, workdir: Path, spark: SparkConfig | None = None) -> list[str]:
    """LECOP on GloVe news vectors + real Node2Vec vectors of the data's news co-click graph (w=2), both made by
    their stages' code (the LLM encoder's vectors run in the demo and in tests/test_encoder.py)."""
    glove = glove_embeddings(prepared, workdir / "embeddings")
    keywords = build_keywords(prepared, workdir / "keywords", top_k=4)
    build_graphs(GraphsConfig(windows=[2], spark=spark or SparkConfig()), prepared, keywords, workdir / "graphs")
    train_graph(workdir / "graphs", "news/w=2", workdir / "node2vec", SMALL_NODE2VEC)
    graph = workdir / "node2vec" / "news" / "w=2"
    # quoted: the graph's directory name holds '='
    return ["model=lecop", f"model.news.views.0.sources=['{workdir / 'embeddings' / glove['name']}','{graph}']"]
