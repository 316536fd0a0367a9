"""Node2Vec on the co-occurrence graphs: weighted walks, link AUC on planted data, keyed outputs,
resume after kill -9, and every graph as a Ray task on a real local Ray."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import Planted
from planted import SMALL_NODE2VEC
from safetensors.torch import load_file

from newsrec_dist.config import Node2VecConfig, RayConfig
from newsrec_dist.embed.link_eval import link_auc, split_edges
from newsrec_dist.embed.node2vec import CHECKPOINT, build_model, edge_copies, train_graph, walk_edge_index
from newsrec_dist.embed.node2vec_stage import embed_graphs
from newsrec_dist.embed.vectors import EMBEDDINGS_SAFETENSORS, read_vectors
from newsrec_dist.graphs.artifact import edge_table, node_keys

SMALL = SMALL_NODE2VEC


def test_edge_copies_and_walk_edge_index() -> None:
    weight = np.array([1, 3, 20])
    assert edge_copies(weight, "none", 8).tolist() == [1, 1, 1]
    assert edge_copies(weight, "multiplicity", 8).tolist() == [1, 3, 8]
    assert edge_copies(weight, "log1p", 8).tolist() == [1, 2, 5]
    with pytest.raises(ValueError, match="edge_weights"):
        edge_copies(weight, "sqrt", 8)
    edges = pa.table({"src": [0, 1], "dst": [1, 2], "weight": [2, 1]})
    index = walk_edge_index(edges, replace(SMALL, edge_weights="multiplicity", min_weight=1))
    assert sorted(map(tuple, index.T.tolist())) == [(0, 1), (0, 1), (1, 0), (1, 0), (1, 2), (2, 1)]
    assert walk_edge_index(edges, replace(SMALL, min_weight=2, edge_weights="none")).T.tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize(("p", "q", "mode", "heavy_share"), [(1.0, 1.0, "multiplicity", 7 / 8), (0.5, 2.0, "multiplicity", 7 / 8),
                                                         (1.0, 1.0, "log1p", 3 / 4)])
def test_walks_follow_edge_weights(p: float, q: float, mode: str, heavy_share: float) -> None:
    """Star 0-1 (weight 7), 0-2 (weight 1): the first step from 0 picks 1 about 7 times in 8 by multiplicity, 3 in
    4 by log weights (1 + floor(log2 7) = 3 copies against 1)."""
    edges = pa.table({"src": [0, 0], "dst": [1, 2], "weight": [7, 1]})
    cfg = replace(SMALL, walk_length=2, context_size=2, p=p, q=q, edge_weights=mode)
    model = build_model(walk_edge_index(edges, cfg), 3, cfg)
    torch.manual_seed(0)
    walks = model.random_walk_fn(model.rowptr, model.col, torch.zeros(20_000, dtype=torch.long), 1, p, q)
    walks = walks[0] if isinstance(walks, tuple) else walks
    share_heavy = (walks[:, 1] == 1).float().mean().item()
    assert abs(share_heavy - heavy_share) < 0.02
    unweighted = build_model(walk_edge_index(edges, replace(SMALL, edge_weights="none")), 3, SMALL)
    walks = unweighted.random_walk_fn(unweighted.rowptr, unweighted.col, torch.zeros(20_000, dtype=torch.long), 1,
                                      1.0, 1.0)
    walks = walks[0] if isinstance(walks, tuple) else walks
    assert abs((walks[:, 1] == 1).float().mean().item() - 0.5) < 0.02


def holdout_graphs(graphs: Path, tmp_path: Path, graph: str) -> tuple[Path, pa.Table, pa.Table]:
    """A copy of the graphs artifact whose ``graph`` lacks 10% of its edges (returned as held-out)."""
    copy = tmp_path / "graphs-holdout"
    shutil.copytree(graphs, copy)
    full = pq.read_table(graphs / graph)
    train, held_out = split_edges(full, held_out=0.1, seed=3)
    shutil.rmtree(copy / graph)
    (copy / graph).mkdir(parents=True)
    pq.write_table(train, copy / graph / "part-0.parquet")
    return copy, held_out, full


def test_link_auc_on_planted_news_graph(tiny_graphs: Path, tmp_path: Path) -> None:
    """Held-out co-click edges outscore random pairs; PyG's own N(0, 1) start does worse on the same budget."""
    graphs, held_out, full = holdout_graphs(tiny_graphs, tmp_path, "news/w=2")
    assert held_out.num_rows > 200
    auc = {}
    for init_std in (0.1, None):
        out = tmp_path / f"n2v-{init_std}"
        summary = train_graph(graphs, "news/w=2", out, replace(SMALL, epochs=5, init_std=init_std))
        keys, vectors = read_vectors(out / "news" / "w=2")
        assert keys.tolist() == node_keys(graphs, "news/w=2").tolist()
        assert summary["losses"][-1] < summary["losses"][0]
        auc[init_std] = link_auc(vectors, held_out, full, seed=0)
    assert auc[0.1] >= 0.8, auc
    assert auc[0.1] > auc[None] + 0.05, auc


def test_outputs_keyed_zero_for_isolated_and_safetensors_equal(tiny_graphs: Path, tmp_path: Path) -> None:
    summary = train_graph(tiny_graphs, "intra_keyword", tmp_path, replace(SMALL, epochs=1))
    out = tmp_path / "intra_keyword"
    table = pq.read_table(out / "embeddings.parquet")
    keys, vectors = read_vectors(out)
    assert keys.tolist() == node_keys(tiny_graphs, "intra_keyword").tolist()
    has_edges = np.asarray(table["has_edges"].to_pylist())
    edges = edge_table(tiny_graphs, "intra_keyword")
    touched = np.zeros(len(keys), dtype=bool)
    touched[edges["src"].to_numpy()] = touched[edges["dst"].to_numpy()] = True
    assert has_edges.tolist() == touched.tolist() and summary["nodes_with_edges"] == touched.sum()
    assert not vectors[~has_edges].any() and np.linalg.norm(vectors[has_edges], axis=1).min() > 0
    assert np.array_equal(load_file(str(out / EMBEDDINGS_SAFETENSORS))["embeddings"].numpy(), vectors)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert train_graph(tiny_graphs, "intra_keyword", tmp_path, replace(SMALL, epochs=1)) == summary
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_bad_settings_give_clear_errors(tiny_graphs: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no graph 'news/w=9'.*news/w=2"):
        train_graph(tiny_graphs, "news/w=9", tmp_path, SMALL)
    with pytest.raises(ValueError, match="edge_weights"):
        train_graph(tiny_graphs, "news/w=2", tmp_path, replace(SMALL, edge_weights="sqrt"))
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last visible device, on any machine
    with pytest.raises(RuntimeError, match=f"node2vec.device={absent} but .* CUDA device"):
        train_graph(tiny_graphs, "news/w=2", tmp_path, replace(SMALL, device=absent))


def test_a_complete_graph_teaches_nothing_and_fails_loudly(tiny_graphs: Path, tmp_path: Path) -> None:
    """On a complete graph every node is every walk's context, so the loss stays at its untrained value (about
    2 ln 2): the stage refuses those vectors, keeps the trained epochs, and a rerun that accepts them does not
    train again. A real graph of the same data moves well past the threshold."""
    graphs = tmp_path / "graphs"
    shutil.copytree(tiny_graphs, graphs)
    pairs = [(a, b) for a in range(40) for b in range(a + 1, 40)]
    shutil.rmtree(graphs / "intra_keyword")
    (graphs / "intra_keyword").mkdir()
    pq.write_table(pa.table({"src": [a for a, _ in pairs], "dst": [b for _, b in pairs], "weight": [1] * len(pairs)}),
                   graphs / "intra_keyword" / "part-0.parquet")
    cfg = replace(SMALL, epochs=2)
    with pytest.raises(RuntimeError, match=r"intra_keyword: the loss stayed at .* within 1% of its untrained 1\.3"):
        train_graph(graphs, "intra_keyword", tmp_path / "out", cfg)
    summary = train_graph(graphs, "intra_keyword", tmp_path / "out", replace(cfg, min_loss_drop=0.0))
    assert summary["resumed_at_epoch"] == 2  # the trained epochs were kept: nothing ran again
    assert summary["losses"][-1] > 0.99 * summary["untrained_loss"]
    learned = train_graph(tiny_graphs, "news/w=2", tmp_path / "real", cfg)
    assert learned["losses"][-1] < 0.95 * learned["untrained_loss"]


RESUME_SETTINGS = {"embedding_dim": 32, "walk_length": 10, "context_size": 5, "walks_per_node": 4,
                   "batch_size": 256, "lr": 0.02, "epochs": 6}
TRAIN_IN_CHILD = ("import json, sys; from pathlib import Path; from newsrec_dist.config import Node2VecConfig; "
                  "from newsrec_dist.embed.node2vec import train_graph; "
                  "train_graph(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Node2VecConfig(**json.loads(sys.argv[4])))")


def test_resume_after_kill_equals_uninterrupted_run(tiny_graphs: Path, tmp_path: Path) -> None:
    killed_out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", TRAIN_IN_CHILD, str(tiny_graphs), "news/w=3", str(killed_out),
                              json.dumps(RESUME_SETTINGS)])
    progress = killed_out / "news" / ".partial-w=3" / ".progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["state"]["epochs_done"] >= 2:
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before_kill = json.loads(progress.read_text())["state"]["epochs_done"]
    cfg = Node2VecConfig(**RESUME_SETTINGS)
    assert 2 <= done_before_kill < cfg.epochs
    resumed = train_graph(tiny_graphs, "news/w=3", killed_out, cfg)
    assert resumed["resumed_at_epoch"] == done_before_kill
    straight = train_graph(tiny_graphs, "news/w=3", tmp_path / "straight", cfg)
    assert resumed["losses"] == pytest.approx(straight["losses"], rel=1e-6)
    _, resumed_vectors = read_vectors(killed_out / "news" / "w=3")
    _, straight_vectors = read_vectors(tmp_path / "straight" / "news" / "w=3")
    np.testing.assert_allclose(resumed_vectors, straight_vectors, rtol=1e-5, atol=1e-6)


class _Stopped(Exception):
    pass


def _stopped_after_one_epoch(graphs: Path, out: Path, cfg: Node2VecConfig) -> Path:
    """Train until the first epoch's checkpoint and progress are saved, then stop as a kill would there."""

    @contextlib.contextmanager
    def stop_in_second_epoch(_label: str, total: int | None):  # noqa: ANN202
        seen = 0

        def advance(n: int) -> None:
            nonlocal seen
            seen += n
            if seen > total // cfg.epochs:  # the second epoch's first batch: epoch 1 is on disk
                raise _Stopped

        yield advance

    with pytest.raises(_Stopped):
        train_graph(graphs, "news/w=2", out, cfg, progress=stop_in_second_epoch)
    work = out / "news" / ".partial-w=2"
    assert json.loads((work / ".progress.json").read_text())["state"]["epochs_done"] == 1
    return work / CHECKPOINT


@pytest.mark.parametrize("damage", ["truncated", "planted pickle"])
def test_unreadable_checkpoint_restarts_the_graph_with_a_warning(damage: str, tiny_graphs: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A torn checkpoint, or one whose pickle would run code, is never applied (and the code never runs): the
    stage warns naming it and trains the graph from epoch 0, to the same vectors as an uninterrupted run."""
    cfg = replace(SMALL, epochs=2)
    checkpoint = _stopped_after_one_epoch(tiny_graphs, tmp_path / "out", cfg)
    marker = tmp_path / "pwned"
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    else:
        torch.save({"model": Planted(marker), "optimizer": {}}, checkpoint)
    with caplog.at_level(logging.WARNING, logger="newsrec_dist.io"):
        resumed = train_graph(tiny_graphs, "news/w=2", tmp_path / "out", cfg)
    assert not marker.exists()
    assert any(str(checkpoint) in record.getMessage() and "afresh" in record.getMessage() for record in caplog.records)
    assert resumed["resumed_at_epoch"] == 0 and len(resumed["losses"]) == cfg.epochs
    straight = train_graph(tiny_graphs, "news/w=2", tmp_path / "straight", cfg)
    assert resumed["losses"] == pytest.approx(straight["losses"], rel=1e-6)


def test_stage_trains_graphs_as_ray_tasks_then_skips_ray(tiny_graphs: Path, tmp_path: Path, ray_dir: str) -> None:
    import ray

    cfg = replace(SMALL, epochs=1, graphs=["news/w=2", "item_keyword/w=2"], graphs_dir=str(tiny_graphs),
                  output_dir=str(tmp_path / "n2v"), task_cpus=0.5,
                  ray=RayConfig(address="local", num_cpus=2, temp_dir=str(ray_dir)))
    summaries = embed_graphs(cfg, show_progress=False)
    assert set(summaries) == {"news/w=2", "item_keyword/w=2"}
    assert not ray.is_initialized()
    for graph in summaries:
        keys, vectors = read_vectors(tmp_path / "n2v" / graph)
        assert len(keys) == len(node_keys(tiny_graphs, graph)) and vectors.shape[1] == 32
    assert json.loads((tmp_path / "n2v" / "summary.json").read_text()) == summaries
    shutil.rmtree(ray_dir)
    assert embed_graphs(cfg, show_progress=False) == summaries
    assert not Path(ray_dir).exists()  # everything current: Ray was not started
    with pytest.raises(ValueError, match="news/w=7"):
        embed_graphs(replace(cfg, graphs=["news/w=7"]))
