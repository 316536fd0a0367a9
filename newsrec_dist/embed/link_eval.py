"""Link prediction check of graph embeddings: held-out edges should outscore random node pairs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import roc_auc_score


def split_edges(edges: pa.Table, held_out: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """(train, held-out) edge tables; held-out edges keep only those whose both endpoints still have
    training edges, since a node without edges gets no embedding."""
    rng = np.random.default_rng(seed)
    chosen = rng.random(edges.num_rows) < held_out
    train = edges.filter(pa.array(~chosen))
    connected = np.zeros(int(pc.max(edges["dst"]).as_py()) + 1, dtype=bool)  # dst > src
    connected[train["src"].to_numpy()] = True
    connected[train["dst"].to_numpy()] = True
    test = edges.filter(pa.array(chosen))
    usable = connected[test["src"].to_numpy()] & connected[test["dst"].to_numpy()]
    return train, test.filter(pa.array(usable))


def link_auc(vectors: np.ndarray, positives: pa.Table, all_edges: pa.Table, seed: int) -> float:
    """AUC of cosine similarity: ``positives`` against as many random pairs of embedded nodes that are
    not edges of ``all_edges``."""
    rng = np.random.default_rng(seed)
    embedded = np.flatnonzero(np.linalg.norm(vectors, axis=1) > 0)
    n = len(vectors)
    known = set((all_edges["src"].to_numpy() * n + all_edges["dst"].to_numpy()).tolist())
    negatives: list[tuple[int, int]] = []
    while len(negatives) < positives.num_rows:
        a, b = rng.choice(embedded, size=2, replace=False)
        low, high = min(a, b), max(a, b)
        if low * n + high not in known:
            negatives.append((low, high))
    pos_src, pos_dst = positives["src"].to_numpy(), positives["dst"].to_numpy()
    neg_src, neg_dst = np.array(negatives).T
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    scores = np.r_[(unit[pos_src] * unit[pos_dst]).sum(1), (unit[neg_src] * unit[neg_dst]).sum(1)]
    labels = np.r_[np.ones(len(pos_src)), np.zeros(len(neg_src))]
    return float(roc_auc_score(labels, scores))
