"""Node2Vec (torch-geometric) on one co-occurrence graph: resumable per epoch, keyed output.

PyG's walker (torch-cluster's ``random_walk``, or pyg-lib's where a cluster has it and p = q = 1)
samples a neighbour uniformly from the CSR row and ignores edge weights. Weights still shape the
walks here: with ``edge_weights: multiplicity`` an edge of weight w appears min(w, max_multiplicity)
times in the CSR, so uniform sampling over the row picks it in proportion to its (capped) weight;
``log1p`` uses 1 + floor(log2 w) copies, ``none`` one. torch-cluster's p/q rejection sampler draws
candidates the same way and tests neighbours by a linear scan, which duplicates do not disturb.

Each epoch draws its walks and batch order from ``seed + epoch``, so with p = q = 1 a run resumed
after a kill finishes with the same embeddings as one never interrupted (torch-cluster's p/q sampler
uses C ``rand()``, which no seed controls).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

# PyG 2.7 scripts a helper with torch.jit at import, which torch 2.15 flags as deprecated on every import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
from torch_geometric.nn import Node2Vec  # noqa: E402

from newsrec_dist.checkpoints import load_weights
from newsrec_dist.config import Node2VecConfig
from newsrec_dist.embed.vectors import write_vectors
from newsrec_dist.graphs.artifact import edge_table, node_keys
from newsrec_dist.io import Manifest, ResumableDir, artifact_fingerprint, is_up_to_date, read_manifest
from newsrec_dist.progress import Advance, ProgressFactory, no_progress

CHECKPOINT = "checkpoint.pt"
WEIGHT_MODES = ("none", "multiplicity", "log1p")
# Settings that change the embeddings; device, loader workers and Ray resources do not.
TRAINING_KEYS = ("init_std", "embedding_dim", "walk_length", "context_size", "walks_per_node", "p", "q",
                 "num_negative_samples", "epochs", "batch_size", "lr", "sparse", "edge_weights",
                 "max_multiplicity", "min_weight", "seed")


def edge_copies(weight: np.ndarray, mode: str, max_multiplicity: int) -> np.ndarray:
    """How many times each edge enters the walker's CSR (see module docstring)."""
    if mode == "none":
        return np.ones(len(weight), dtype=np.int64)
    if mode == "multiplicity":
        return np.minimum(weight, max_multiplicity).astype(np.int64)
    if mode == "log1p":
        return np.minimum(1 + np.floor(np.log2(np.maximum(weight, 1))), max_multiplicity).astype(np.int64)
    raise ValueError(f"node2vec.edge_weights must be one of {WEIGHT_MODES}, got {mode!r}")


def walk_edge_index(edges: pa.Table, cfg: Node2VecConfig) -> torch.Tensor:
    """Both directions of every edge with weight ≥ ``min_weight``, repeated per :func:`edge_copies`."""
    weight = edges["weight"].to_numpy()
    kept = weight >= cfg.min_weight
    copies = edge_copies(weight[kept], cfg.edge_weights, cfg.max_multiplicity)
    src = np.repeat(edges["src"].to_numpy()[kept], copies)
    dst = np.repeat(edges["dst"].to_numpy()[kept], copies)
    return torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]).astype(np.int64))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    visible = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and (device.index or 0) >= visible:
        raise RuntimeError(f"node2vec.device={name} but {visible} CUDA device(s) are visible; use device=cpu or auto")
    return device


def build_model(edge_index: torch.Tensor, num_nodes: int, cfg: Node2VecConfig) -> Node2Vec:
    """PyG's Node2Vec; with ``init_std`` its N(0, 1) initial embeddings are redrawn from N(0, init_std²).

    Unit-variance vectors start with dot products of variance ``embedding_dim``, so the sigmoid loss
    saturates and a few epochs barely move it; small vectors converge within the first epoch (link
    AUC on the planted test graph 0.62 → 0.94 after 5 epochs, see docs/node2vec.md).
    """
    if cfg.context_size > cfg.walk_length:
        raise ValueError(f"node2vec.context_size ({cfg.context_size}) must not exceed walk_length ({cfg.walk_length})")
    model = Node2Vec(edge_index, embedding_dim=cfg.embedding_dim, walk_length=cfg.walk_length,
                     context_size=cfg.context_size, walks_per_node=cfg.walks_per_node, p=cfg.p, q=cfg.q,
                     num_negative_samples=cfg.num_negative_samples, num_nodes=num_nodes, sparse=cfg.sparse)
    if cfg.init_std is not None:
        with torch.no_grad():
            model.embedding.weight.normal_(0.0, cfg.init_std)
    return model


def make_optimizer(model: Node2Vec, cfg: Node2VecConfig) -> torch.optim.Optimizer:
    if cfg.sparse:
        return torch.optim.SparseAdam(list(model.parameters()), lr=cfg.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def train_epoch(model: Node2Vec, start_nodes: torch.Tensor, optimizer: torch.optim.Optimizer, device: torch.device,
                cfg: Node2VecConfig, advance: Advance) -> float:
    """One pass over ``start_nodes`` (the nodes with edges); returns the mean batch loss.

    The loss is summed on the device and read once per epoch: a per-batch ``.item()`` would stall a
    GPU on every step.
    """
    loader = torch.utils.data.DataLoader(start_nodes.tolist(), batch_size=cfg.batch_size, shuffle=True,
                                         collate_fn=model.sample, num_workers=cfg.loader_workers)
    model.train()
    total, batches = torch.zeros((), device=device), 0
    for positive, negative in loader:
        optimizer.zero_grad()
        loss = model.loss(positive.to(device), negative.to(device))
        loss.backward()
        optimizer.step()
        total += loss.detach()
        batches += 1
        advance(1)
    return float(total) / max(batches, 1)


UNTRAINED_BATCHES = 20


@torch.no_grad()
def untrained_loss(model: Node2Vec, start_nodes: torch.Tensor, device: torch.device, cfg: Node2VecConfig) -> float:
    """The loss before any step, over the first batches of walks (the yardstick of :func:`check_learned`)."""
    loader = torch.utils.data.DataLoader(start_nodes.tolist(), batch_size=cfg.batch_size, shuffle=True,
                                         collate_fn=model.sample)
    losses = [float(model.loss(positive.to(device), negative.to(device)))
              for _, (positive, negative) in zip(range(UNTRAINED_BATCHES), loader)]
    return float(np.mean(losses))


def check_learned(graph: str, untrained: float, losses: list[float], min_drop: float) -> None:
    """Fail when training left the loss within ``min_drop`` of its untrained value: the vectors are noise (a
    near-complete graph, where every walk's context is every node, does this)."""
    if losses and losses[-1] > (1.0 - min_drop) * untrained:
        raise RuntimeError(
            f"node2vec {graph}: the loss stayed at {losses[-1]:.4f} after {len(losses)} epoch(s), within "
            f"{min_drop:.0%} of its untrained {untrained:.4f}: its vectors learned nothing. Prune the graph "
            "(graphs.top_k / graphs.keyword_graph_top_k / graphs.min_weight), train longer (node2vec.epochs), "
            "or set node2vec.min_loss_drop=0 to accept it")


def _save_checkpoint(model: Node2Vec, optimizer: torch.optim.Optimizer, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, path)


def _read_checkpoint(path: Path, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, optimiser) state of a checkpoint; raises on a torn, foreign or malformed one (nothing applied yet)."""
    state = load_weights(path, map_location=device)
    return dict(state["model"]), dict(state["optimizer"])


def training_config(cfg: Node2VecConfig) -> dict[str, Any]:
    settings = asdict(cfg)
    return {key: settings[key] for key in TRAINING_KEYS}


def _identity(graphs_dir: Path, graph: str, cfg: Node2VecConfig) -> tuple[dict[str, str], dict[str, Any]]:
    return {"graphs": artifact_fingerprint(graphs_dir), "graph": graph}, training_config(cfg)


def finished_summary(graphs_dir: Path, graph: str, out_dir: Path, cfg: Node2VecConfig) -> dict[str, Any] | None:
    """The summary of an up-to-date embedding of ``graph``, or None when it must be (re)trained."""
    final = Path(out_dir) / graph
    if is_up_to_date(final, "node2vec", *_identity(graphs_dir, graph, cfg)):
        return dict(read_manifest(final)["extra"])
    return None


def train_graph(graphs_dir: Path, graph: str, out_dir: Path, cfg: Node2VecConfig,
                progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Embed one graph into ``out_dir/<graph>``; a no-op when done, continues a killed run."""
    finished = finished_summary(graphs_dir, graph, out_dir, cfg)
    if finished is not None:
        return finished
    inputs, config = _identity(graphs_dir, graph, cfg)
    final = Path(out_dir) / graph
    edge_copies(np.ones(1), cfg.edge_weights, cfg.max_multiplicity)  # reject a bad mode before any work
    keys = node_keys(graphs_dir, graph)
    edge_index = walk_edge_index(edge_table(graphs_dir, graph), cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(edge_index, len(keys), cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    start_nodes = torch.from_numpy(np.flatnonzero(np.diff(model.rowptr.numpy())))
    if not len(start_nodes):
        raise ValueError(f"{Path(graphs_dir) / graph}: the graph has no edges, nothing to embed (a window w pairs "
                         f"each click with the next w-1, so w=1 gives none); drop it from node2vec.graphs")
    work = ResumableDir(final, Manifest(stage="node2vec", inputs=inputs, config=config).fingerprint())
    done = int(work.state.get("epochs_done", 0))
    losses = list(work.state.get("losses", []))
    # an unreadable checkpoint (torn, or not one we wrote) warns and empties the work dir: start from epoch 0
    saved = work.restore(work.path / CHECKPOINT, lambda path: _read_checkpoint(path, device)) if done else None
    if saved is not None:
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        untrained = float(work.state["untrained_loss"])
    else:
        done, losses = 0, []
        untrained = untrained_loss(model, start_nodes, device, cfg)
    batches = -(-len(start_nodes) // cfg.batch_size)
    started = time.perf_counter()
    with progress(f"node2vec {graph}", batches * (cfg.epochs - done)) as advance:
        for epoch in range(done, cfg.epochs):
            torch.manual_seed(cfg.seed + epoch)
            losses.append(train_epoch(model, start_nodes, optimizer, device, cfg, advance))
            _save_checkpoint(model, optimizer, work.path / CHECKPOINT)
            work.save({"epochs_done": epoch + 1, "losses": losses, "untrained_loss": untrained})
    seconds = time.perf_counter() - started
    check_learned(graph, untrained, losses, cfg.min_loss_drop)
    summary = {"graph": graph, "nodes": len(keys), "nodes_with_edges": len(start_nodes),
               "walk_edges": int(edge_index.shape[1]), "epochs": cfg.epochs, "resumed_at_epoch": done,
               "untrained_loss": untrained, "losses": losses, "train_seconds": seconds,
               "walks_per_second": (cfg.epochs - done) * len(start_nodes) * cfg.walks_per_node / max(seconds, 1e-9)}
    _write_embeddings(model, keys, start_nodes, work.path)
    (work.path / CHECKPOINT).unlink(missing_ok=True)
    Manifest(stage="node2vec", inputs=inputs, config=config, rows={"embeddings": len(keys)},
             extra=summary).write(work.path)
    work.publish()
    return summary


def _write_embeddings(model: Node2Vec, keys: np.ndarray, trained: torch.Tensor, directory: Path) -> None:
    """Keyed vectors with a ``has_edges`` column; nodes without edges (never trained) are zeros."""
    vectors = model.embedding.weight.detach().cpu().float().numpy()
    has_edges = np.zeros(len(keys), dtype=bool)
    has_edges[trained.numpy()] = True
    vectors[~has_edges] = 0.0
    write_vectors(directory, keys.tolist(), vectors, {"has_edges": has_edges})
