"""Reading a graphs artifact (layout in ``graphs/build.py``) without Spark: edge tables and node keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from newsrec_dist.io import read_manifest

KEYWORD_GRAPHS = ("intra_keyword", "item_keyword")  # graph kinds whose nodes are keywords


def available_graphs(graphs_dir: Path) -> list[str]:
    manifest = read_manifest(graphs_dir)
    if manifest is None:
        raise FileNotFoundError(f"{graphs_dir}: no manifest.json; run `newsrec graphs build` first")
    return [name for name in manifest["rows"] if "nodes" not in name.split("/")]


def node_keys(graphs_dir: Path, graph: str) -> np.ndarray:
    """Keys by node id of the node table that ``graph`` refers to (news ids or keywords)."""
    available = available_graphs(graphs_dir)
    if graph not in available:
        raise ValueError(f"{graphs_dir}: no graph {graph!r}; it holds {available} (graphs.windows adds windows)")
    return read_keys(Path(graphs_dir) / node_table_of(graph))


def node_table_of(graph: str) -> str:
    """``nodes/news`` for news-ID graphs; the keyword node table of the graph's keyword source otherwise
    (``<name>/nodes/keyword`` for a ``graphs.extra_keywords`` table's ``<name>/item_keyword/w=2``)."""
    if graph.startswith("news/"):
        return "nodes/news"
    head = graph.split("/")[0]
    return "nodes/keyword" if head in KEYWORD_GRAPHS else f"{head}/nodes/keyword"


def read_keys(nodes_dir: Path) -> np.ndarray:
    """Keys of a node table, indexed by node id."""
    nodes = pq.read_table(nodes_dir).sort_by("node_id")
    return np.asarray(nodes["key"].to_pylist(), dtype=object)


def edge_table(graphs_dir: Path, graph: str) -> pa.Table:
    """``src, dst, weight`` (node ids) of one graph."""
    return pq.read_table(Path(graphs_dir) / graph, columns=["src", "dst", "weight"])
