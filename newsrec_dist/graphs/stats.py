"""Graph statistics for reports and POPK: degree distribution, connected components, PageRank.

Computed on the driver with scipy from the written edge tables (MIND-large graphs hold a few million
edges, well within driver memory). GraphFrames would compute the same on the cluster, but its jar is
not served by this environment's Maven mirror (see docs/graphs.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from scipy import sparse
from scipy.sparse.csgraph import connected_components

DAMPING = 0.85


def adjacency(edges: pa.Table, n_nodes: int) -> sparse.csr_matrix:
    """Symmetric weighted adjacency from ``src, dst, weight`` (node ids)."""
    src, dst = edges["src"].to_numpy(), edges["dst"].to_numpy()
    weight = edges["weight"].to_numpy().astype(np.float64)
    rows, cols = np.concatenate([src, dst]), np.concatenate([dst, src])
    return sparse.csr_matrix((np.concatenate([weight, weight]), (rows, cols)), shape=(n_nodes, n_nodes))


def pagerank(matrix: sparse.csr_matrix, iterations: int) -> np.ndarray:
    """Weighted PageRank by power iteration; dangling nodes spread their rank uniformly."""
    n = matrix.shape[0]
    out_weight = np.asarray(matrix.sum(axis=1)).ravel()
    transition = sparse.diags(np.divide(1.0, out_weight, out=np.zeros(n), where=out_weight > 0)) @ matrix
    rank = np.full(n, 1.0 / n)
    dangling = out_weight == 0
    for _ in range(iterations):
        rank = (1 - DAMPING) / n + DAMPING * (transition.T @ rank + rank[dangling].sum() / n)
    return rank / rank.sum()


def graph_stats(edges: pa.Table, keys: np.ndarray, pagerank_iterations: int, top: int = 10) -> dict[str, Any]:
    """Summary of one graph: sizes, degree quantiles, components, PageRank leaders."""
    matrix = adjacency(edges, len(keys))
    degree = np.diff(matrix.indptr)
    connected = degree > 0
    n_components, labels = connected_components(matrix, directed=False)
    component_sizes = np.bincount(labels[connected]) if connected.any() else np.zeros(0, np.int64)
    rank = pagerank(matrix, pagerank_iterations)
    leaders = np.argsort(-rank, kind="stable")[:top]
    quantiles = np.quantile(degree[connected], [0.5, 0.9, 0.99]) if connected.any() else np.zeros(3)
    return {
        "nodes": int(len(keys)),
        "nodes_with_edges": int(connected.sum()),
        "edges": int(edges.num_rows),
        "total_weight": int(edges["weight"].to_numpy().sum()) if edges.num_rows else 0,
        "degree": {"mean": float(degree[connected].mean()) if connected.any() else 0.0,
                   "p50": float(quantiles[0]), "p90": float(quantiles[1]), "p99": float(quantiles[2]),
                   "max": int(degree.max(initial=0))},
        "components": int((component_sizes > 0).sum()),
        "largest_component": int(component_sizes.max(initial=0)),
        "isolated_nodes": int((~connected).sum()),
        "pagerank_top": [{"key": str(keys[i]), "pagerank": float(rank[i])} for i in leaders if connected[i]],
    }
