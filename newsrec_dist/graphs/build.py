"""Stages ``keywords`` and ``graphs``: keyword table, then the three graphs for every window on Spark.

Layout of the graphs artifact::

    nodes/news/, nodes/keyword/            node_id (contiguous, in key order), key
    news/w=<w>/, item_keyword/w=<w>/       src, dst (node ids, src < dst), weight, src_key, dst_key
    intra_keyword/                         same columns (independent of the window)
    <name>/nodes/keyword/, <name>/item_keyword/w=<w>/, <name>/intra_keyword/
                                           the keyword graphs again from each ``graphs.extra_keywords`` table
    stats.json · manifest.json
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from newsrec_dist.config import GraphsConfig
from newsrec_dist.data.prepare import BEHAVIORS_DIR, NEWS_FILE, read_news_table
from newsrec_dist.graphs import spark_job
from newsrec_dist.graphs.artifact import KEYWORD_GRAPHS, read_keys
from newsrec_dist.graphs.keywords import tfidf_keywords
from newsrec_dist.graphs.spark_session import spark_session
from newsrec_dist.graphs.stats import graph_stats
from newsrec_dist.io import Manifest, artifact_fingerprint, atomic_dir, atomic_write_text, is_up_to_date, sha256_file

KEYWORDS_FILE = "keywords.parquet"
MIN_WINDOW, MAX_WINDOW = 2, 5  # a window of w consecutive clicks pairs each click with the next w-1


def build_keywords(prepared_dir: Path, out_dir: Path, top_k: int) -> Path:
    """TF-IDF keyword table for every news item; skipped when news and ``top_k`` are unchanged."""
    inputs = {"news": sha256_file(Path(prepared_dir) / NEWS_FILE)}
    config = {"method": "tfidf", "top_k": top_k}
    if not is_up_to_date(out_dir, "keywords", inputs, config):
        table = tfidf_keywords(read_news_table(prepared_dir), top_k=top_k)
        with atomic_dir(Path(out_dir)) as work:
            pq.write_table(table, work / KEYWORDS_FILE)
            Manifest(stage="keywords", inputs=inputs, config=config, rows={"news": table.num_rows}).write(work)
    return Path(out_dir) / KEYWORDS_FILE


def _output_config(cfg: GraphsConfig) -> dict[str, Any]:
    """What changes the graphs (Spark settings do not; the keyword tables are inputs)."""
    return {key: value for key, value in asdict(cfg).items()
            if key not in ("spark", "output_dir", "keywords_path", "extra_keywords", "tfidf_dir")}


def keyword_sources(cfg: GraphsConfig, keywords_path: Path) -> dict[str, Path]:
    """Graph-name prefix → keyword table: ``""`` for ``keywords_path``, ``"<name>/"`` for each extra table (an
    ablation's other keywords, e.g. TF-IDF beside the LLM's)."""
    bad = [name for name in cfg.extra_keywords if not name.isidentifier() or name in ("news", "nodes", *KEYWORD_GRAPHS)]
    if bad:
        raise ValueError(f"graphs.extra_keywords: names must be identifiers other than news, nodes and the graph "
                         f"kinds (they prefix graph names), got {bad}")
    extra = {f"{name}/": Path(path) / KEYWORDS_FILE for name, path in sorted(cfg.extra_keywords.items())}
    return {"": keywords_path, **extra}


def build_graphs(cfg: GraphsConfig, prepared_dir: Path, keywords_path: Path, out_dir: Path) -> dict[str, Any]:
    """Build, write and summarise all graphs; a re-run with the same inputs and config is a no-op."""
    bad = [w for w in cfg.windows if not MIN_WINDOW <= w <= MAX_WINDOW]
    if bad:
        raise ValueError(f"graphs.windows must lie in {MIN_WINDOW}..{MAX_WINDOW}, got {bad}: a window of w consecutive "
                         "clicks pairs each click with the next w-1, so w=1 has no edges (docs/graphs.md)")
    sources = keyword_sources(cfg, keywords_path)
    inputs = {"prepared": artifact_fingerprint(prepared_dir),
              **{f"keywords{'@' + prefix.rstrip('/') if prefix else ''}": artifact_fingerprint(path.parent)
                 for prefix, path in sources.items()}}
    config = _output_config(cfg)
    if is_up_to_date(out_dir, "graphs", inputs, config):
        return json.loads((Path(out_dir) / "stats.json").read_text())
    with atomic_dir(Path(out_dir)) as work:
        with spark_session(cfg.spark) as spark:
            rows = _write_graphs(spark, cfg, prepared_dir, sources, work)
        stats = _all_stats(work, cfg, list(sources))  # after Spark stops: the JVM heap and these arrays never coexist
        atomic_write_text(work / "stats.json", json.dumps(stats, indent=2))
        Manifest(stage="graphs", inputs=inputs, config=config, rows=rows).write(work)
    return stats


def _write_graphs(spark: SparkSession, cfg: GraphsConfig, prepared_dir: Path, sources: dict[str, Path],
                  work: Path) -> dict[str, int]:
    behaviors = spark.read.parquet(str(Path(prepared_dir) / BEHAVIORS_DIR)).where(F.col("split") == cfg.split)
    sequences = spark_job.click_sequences(behaviors).cache()
    news_ids = spark.read.parquet(str(Path(prepared_dir) / NEWS_FILE)).select(F.col("news_id").alias("key"))
    clicked = sequences.select(F.explode("seq").alias("key"))
    news_nodes = spark_job.node_table(news_ids.unionByName(clicked)).cache()
    news_nodes.write.parquet(str(work / "nodes" / "news"))
    rows = {"nodes/news": news_nodes.count()}
    keywords: dict[str, tuple[DataFrame, DataFrame]] = {}  # prefix → (keyword table, its node table)
    for prefix, path in sources.items():
        table = spark_job.distinct_keywords(spark.read.parquet(str(path))).cache()
        nodes = spark_job.node_table(table.select(F.explode("keywords").alias("key"))).cache()
        nodes.write.parquet(str(work / f"{prefix}nodes" / "keyword"))
        rows[f"{prefix}nodes/keyword"] = nodes.count()
        intra = spark_job.intra_item_keyword_graph(sequences, table)
        rows[f"{prefix}intra_keyword"] = _write_edges(intra, nodes, cfg.min_weight, cfg.keyword_graph_top_k,
                                                      work / f"{prefix}intra_keyword")
        keywords[prefix] = (table, nodes)
    for window in cfg.windows:
        news_edges = spark_job.news_graph(sequences, window).cache()
        rows[f"news/w={window}"] = _write_edges(news_edges, news_nodes, cfg.min_weight, cfg.top_k,
                                                work / "news" / f"w={window}")
        for prefix, (table, nodes) in keywords.items():
            item_keyword = spark_job.item_item_keyword_graph(news_edges, table)  # from unpruned co-clicks
            graph = f"{prefix}item_keyword/w={window}"
            rows[graph] = _write_edges(item_keyword, nodes, cfg.min_weight, cfg.keyword_graph_top_k, work / graph)
        news_edges.unpersist()
    return rows


def _write_edges(edges: DataFrame, nodes: DataFrame, min_weight: int, top_k: int | None, path: Path) -> int:
    pruned = spark_job.with_node_ids(spark_job.prune(edges, min_weight, top_k), nodes)
    pruned.orderBy("src", "dst").write.parquet(str(path))
    return pq.read_table(path, columns=["src"]).num_rows


def _all_stats(work: Path, cfg: GraphsConfig, prefixes: list[str]) -> dict[str, Any]:
    news_keys = read_keys(work / "nodes" / "news")
    stats = {f"news/w={window}": graph_stats(pq.read_table(work / "news" / f"w={window}"), news_keys,
                                             cfg.pagerank_iterations) for window in cfg.windows}
    for prefix in prefixes:
        keyword_keys = read_keys(work / f"{prefix}nodes" / "keyword")
        for graph in [f"{prefix}intra_keyword", *(f"{prefix}item_keyword/w={window}" for window in cfg.windows)]:
            stats[graph] = graph_stats(pq.read_table(work / graph), keyword_keys, cfg.pagerank_iterations)
    return stats
