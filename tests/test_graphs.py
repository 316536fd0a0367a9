"""Co-occurrence graphs: the Spark job equals the numpy reference row for row; hand cases; pruning;
the stage's artifacts, node ids, statistics and no-op re-runs. Real Spark (local[2]), no mocks."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from newsrec_dist.config import GraphsConfig, SparkConfig
from newsrec_dist.data.prepare import read_behaviors
from newsrec_dist.data.schema import BEHAVIORS_SCHEMA
from newsrec_dist.graphs import reference, spark_job
from newsrec_dist.graphs.artifact import available_graphs, node_keys
from newsrec_dist.graphs.build import build_graphs, build_keywords
from newsrec_dist.graphs.sequences import click_sequences, keyword_index
from newsrec_dist.graphs.spark_session import spark_session
from newsrec_dist.graphs.stats import adjacency, graph_stats, pagerank


@pytest.fixture(scope="module")
def spark(local_spark: SparkConfig) -> SparkSession:
    with spark_session(local_spark) as session:
        yield session


def sorted_edges(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[["src", "dst", "weight"]].astype({"src": str, "dst": str, "weight": np.int64})
    return frame.sort_values(["src", "dst"], ignore_index=True)


def assert_same_edges(spark_edges: pd.DataFrame, reference_edges: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(sorted_edges(spark_edges), sorted_edges(reference_edges))


def spark_inputs(spark: SparkSession, prepared: Path, keywords: Path):
    behaviors = spark.read.parquet(str(prepared / "behaviors")).where(F.col("split") == "train")
    sequences = spark_job.click_sequences(behaviors).cache()
    return sequences, spark_job.distinct_keywords(spark.read.parquet(str(keywords))).cache()


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5])
def test_spark_equals_reference_on_generated_data(spark: SparkSession, tiny: tuple[Path, Path],
                                                  window: int) -> None:
    prepared, keywords_path = tiny
    news = pq.read_table(prepared / "news.parquet")
    sequences = click_sequences(prepared, news["news_id"].combine_chunks())
    index = keyword_index(pq.read_table(keywords_path), sequences.news_keys)
    spark_sequences, spark_keywords = spark_inputs(spark, prepared, keywords_path)
    news_edges = spark_job.news_graph(spark_sequences, window).cache()
    expected_news = reference.news_graph(sequences, window)
    assert_same_edges(news_edges.toPandas(), expected_news)
    assert (len(expected_news) > 1000) == (window > 1)
    assert_same_edges(spark_job.item_item_keyword_graph(news_edges, spark_keywords).toPandas(),
                      reference.item_item_keyword_graph(sequences, index, window))
    if window == 2:
        assert_same_edges(spark_job.intra_item_keyword_graph(spark_sequences, spark_keywords).toPandas(),
                          reference.intra_item_keyword_graph(sequences, index))


def write_prepared(root: Path, news_ids: list[str], rows: list[tuple]) -> Path:
    """A prepared dataset from hand-written behaviors rows (impression_id, user, time, history, clicks...)."""
    prepared = root / "prepared"
    (prepared / "behaviors" / "split=train").mkdir(parents=True)
    news = pa.table({"news_id": news_ids, "title": ["t"] * len(news_ids), "abstract": ["a"] * len(news_ids)})
    pq.write_table(news, prepared / "news.parquet")
    table = pa.table({
        "impression_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
        "time": [datetime(2019, 11, 10, r[2]) for r in rows], "history": [r[3] for r in rows],
        "impressions": [[c for c, _ in r[4]] for r in rows], "labels": [[y for _, y in r[4]] for r in rows],
    }, schema=BEHAVIORS_SCHEMA)
    pq.write_table(table, prepared / "behaviors" / "split=train" / "part-0.parquet")
    return prepared


def test_hand_cases_sequences_and_edges(spark: SparkSession, tmp_path: Path) -> None:
    """Empty history, repeats, unknown ids, a later row's history ignored, and clicked candidates never used."""
    rows = [
        (2, "U1", 9, ["N1", "N2", "N3", "N3", "N1"], [("N4", 1), ("N5", 0), ("N5", 1)]),  # earliest row of U1
        (1, "U1", 10, ["N9"], [("N3", 1), ("N1", 1)]),  # later: its history is ignored
        (3, "U2", 8, [], [("N4", 1)]),  # empty history: an empty sequence, whatever it clicked
        (4, "U3", 8, ["N2", "N2", "N77"], [("N5", 0)]),  # N77 absent from news
    ]
    prepared = write_prepared(tmp_path, ["N1", "N2", "N3", "N4", "N5"], rows)
    sequences = click_sequences(prepared, pa.array(["N1", "N2", "N3", "N4", "N5"]))
    as_keys = {user: sequences.news_keys[sequences.items[a:b]].tolist()
               for user, a, b in zip(range(3), sequences.offsets[:-1], sequences.offsets[1:])}
    assert sorted(as_keys.values()) == sorted([["N1", "N2", "N3", "N1"], [], ["N2", "N77"]])
    assert reference.news_graph(sequences, 2).values.tolist() == [
        ["N1", "N2", 1], ["N1", "N3", 1], ["N2", "N3", 1], ["N2", "N77", 1]]
    # w=3 adds distance-2 pairs of N1 N2 N3 N1: (N1, N3) and (N2, N1).
    assert reference.news_graph(sequences, 3).values.tolist() == [
        ["N1", "N2", 2], ["N1", "N3", 2], ["N2", "N3", 1], ["N2", "N77", 1]]
    behaviors = spark.read.parquet(str(prepared / "behaviors"))
    spark_sequences = spark_job.click_sequences(behaviors)
    got = {row["user_id"]: row["seq"] for row in spark_sequences.collect()}
    assert got == {"U1": ["N1", "N2", "N3", "N1"], "U2": [], "U3": ["N2", "N77"]}
    for window in (2, 3):
        assert_same_edges(spark_job.news_graph(spark_sequences, window).toPandas(),
                          reference.news_graph(sequences, window))


def test_keyword_graphs_hand_case(spark: SparkSession, tmp_path: Path) -> None:
    rows = [(1, "U1", 9, ["N1", "N2"], [("N2", 1)]), (2, "U2", 9, ["N1"], [("N2", 1), ("N1", 0)])]
    prepared = write_prepared(tmp_path, ["N1", "N2"], rows)
    keywords = pa.table({"news_id": ["N1", "N2"], "keywords": [["cup", "goal", "cup"], ["goal", "vote"]]})
    sequences = click_sequences(prepared, pa.array(["N1", "N2"]))
    index = keyword_index(keywords, sequences.news_keys)
    # N1-N2 co-read once (U1's history; clicked candidates do not count): cross pairs cup-goal, cup-vote, goal-vote (goal-goal is a self pair).
    assert reference.item_item_keyword_graph(sequences, index, 2).values.tolist() == [
        ["cup", "goal", 1], ["cup", "vote", 1], ["goal", "vote", 1]]
    # N1 in two histories (cup-goal weight 2), N2 in one (goal-vote weight 1).
    assert reference.intra_item_keyword_graph(sequences, index).values.tolist() == [
        ["cup", "goal", 2], ["goal", "vote", 1]]
    pq.write_table(keywords, tmp_path / "keywords.parquet")
    spark_keywords = spark_job.distinct_keywords(spark.read.parquet(str(tmp_path / "keywords.parquet")))
    spark_sequences = spark_job.click_sequences(spark.read.parquet(str(prepared / "behaviors")))
    assert_same_edges(spark_job.intra_item_keyword_graph(spark_sequences, spark_keywords).toPandas(),
                      reference.intra_item_keyword_graph(sequences, index))
    news_edges = spark_job.news_graph(spark_sequences, 2)
    assert_same_edges(spark_job.item_item_keyword_graph(news_edges, spark_keywords).toPandas(),
                      reference.item_item_keyword_graph(sequences, index, 2))


def test_no_training_label_reaches_a_graph(spark: SparkSession, tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """The graphs are features of the news the recommenders train on: relabelling every training impression
    (each click moved to another candidate) changes no sequence and no edge, in the Spark job and the reference."""
    prepared, keywords_path = tiny
    train = read_behaviors(prepared, "train")
    rng = np.random.default_rng(7)
    relabelled = pa.array([rng.permutation(labels).tolist() for labels in train["labels"].to_pylist()],
                          train.schema.field("labels").type)
    moved = sum(a != b for a, b in zip(relabelled.to_pylist(), train["labels"].to_pylist()))
    assert moved > len(train) // 4  # the permutation really moved clicks
    other = tmp_path / "relabelled"
    (other / "behaviors" / "split=train").mkdir(parents=True)
    pq.write_table(train.set_column(train.schema.get_field_index("labels"), "labels", relabelled),
                   other / "behaviors" / "split=train" / "part-0.parquet")
    pq.write_table(pq.read_table(prepared / "news.parquet"), other / "news.parquet")
    news_ids = pq.read_table(prepared / "news.parquet")["news_id"].combine_chunks()
    ours, theirs = click_sequences(prepared, news_ids), click_sequences(other, news_ids)
    assert np.array_equal(ours.items, theirs.items) and np.array_equal(ours.offsets, theirs.offsets)
    for root in (prepared, other):
        sequences, keywords = spark_inputs(spark, root, keywords_path)
        assert_same_edges(spark_job.news_graph(sequences, 3).toPandas(), reference.news_graph(ours, 3))
        assert_same_edges(spark_job.intra_item_keyword_graph(sequences, keywords).toPandas(),
                          reference.intra_item_keyword_graph(ours, keyword_index(pq.read_table(keywords_path),
                                                                                 ours.news_keys)))


@pytest.mark.parametrize(("min_weight", "top_k"), [(1, None), (2, None), (1, 1), (1, 3), (2, 2)])
def test_pruning_matches_reference(spark: SparkSession, min_weight: int, top_k: int | None) -> None:
    rng = np.random.default_rng(min_weight * 10 + (top_k or 0))
    pairs = {(f"n{a:02d}", f"n{b:02d}") for a, b in rng.integers(0, 25, size=(120, 2)) if a < b}
    edges = pd.DataFrame([(s, d, int(rng.integers(1, 5))) for s, d in sorted(pairs)], columns=["src", "dst", "weight"])
    pruned = spark_job.prune(spark.createDataFrame(edges), min_weight, top_k).toPandas()
    assert_same_edges(pruned, reference.prune(edges, min_weight, top_k))
    assert len(pruned) < len(edges) or (min_weight == 1 and top_k is None)


def test_build_graphs_artifacts_ids_stats_and_noop_rerun(tiny: tuple[Path, Path], tmp_path: Path,
                                                        local_spark: SparkConfig) -> None:
    prepared, keywords = tiny
    cfg = GraphsConfig(windows=[2], top_k=20, spark=local_spark)
    out = tmp_path / "graphs"
    stats = build_graphs(cfg, prepared, keywords, out)
    nodes = pq.read_table(out / "nodes" / "news").to_pandas().sort_values("node_id")
    assert nodes["node_id"].tolist() == list(range(len(nodes)))
    assert nodes["key"].tolist() == sorted(nodes["key"])
    edges = pq.read_table(out / "news" / "w=2").to_pandas()
    key_of = dict(zip(nodes["node_id"], nodes["key"]))
    assert [key_of[i] for i in edges["src"]] == edges["src_key"].tolist()
    assert (edges["src"] < edges["dst"]).all()
    assert stats["news/w=2"]["edges"] == len(edges) > 0
    assert json.loads((out / "stats.json").read_text()) == stats
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build_graphs(cfg, prepared, keywords, out) == stats
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    for window in (1, 6):
        with pytest.raises(ValueError, match=r"2\.\.5, got \[%d\].*w=1 has no edges" % window):
            build_graphs(GraphsConfig(windows=[window], spark=local_spark), prepared, keywords, tmp_path / "bad")


def test_extra_keyword_tables_build_the_keyword_graphs_a_main_table_would(tiny: tuple[Path, Path], tmp_path: Path,
                                                                           local_spark: SparkConfig) -> None:
    """LECOP's keywords arm: TF-IDF's keyword graphs beside the LLM's in one artifact, each equal to the graphs that
    keyword table builds as the main one."""
    prepared, keywords = tiny
    other = build_keywords(prepared, tmp_path / "other-keywords", top_k=2)  # a different keyword table
    both = build_graphs(GraphsConfig(windows=[2], extra_keywords={"other": str(other.parent)}, spark=local_spark),
                        prepared, keywords, tmp_path / "both")
    alone = build_graphs(GraphsConfig(windows=[2], spark=local_spark), prepared, other, tmp_path / "alone")
    assert sorted(available_graphs(tmp_path / "both")) == sorted(
        ["news/w=2", "intra_keyword", "item_keyword/w=2", "other/intra_keyword", "other/item_keyword/w=2"])
    for graph in ("intra_keyword", "item_keyword/w=2"):
        extra = pq.read_table(tmp_path / "both" / "other" / graph).to_pandas()
        main = pq.read_table(tmp_path / "both" / graph).to_pandas()
        expected = pq.read_table(tmp_path / "alone" / graph).to_pandas()
        assert_same_edges(extra.assign(src=extra["src_key"], dst=extra["dst_key"]),
                          expected.assign(src=expected["src_key"], dst=expected["dst_key"]))
        assert len(extra) != len(main)  # the main table's graph is another graph
        assert both[f"other/{graph}"] == alone[graph]
        assert list(node_keys(tmp_path / "both", f"other/{graph}")) == list(node_keys(tmp_path / "alone", graph))
    for name in ("news", "item_keyword", "a/b"):
        with pytest.raises(ValueError, match="graphs.extra_keywords"):
            build_graphs(GraphsConfig(windows=[2], extra_keywords={name: str(other.parent)}, spark=local_spark),
                         prepared, keywords, tmp_path / "bad")


def test_stats_agree_with_networkx() -> None:
    rng = np.random.default_rng(2)
    pairs = sorted({(int(a), int(b)) for a, b in rng.integers(0, 40, size=(90, 2)) if a < b})
    edges = pa.table({"src": [a for a, _ in pairs], "dst": [b for _, b in pairs],
                      "weight": rng.integers(1, 6, len(pairs))})
    keys = np.array([f"k{i}" for i in range(45)], dtype=object)  # nodes 40..44 isolated
    graph = nx.Graph()
    graph.add_nodes_from(range(45))
    graph.add_weighted_edges_from(zip(edges["src"].to_pylist(), edges["dst"].to_pylist(), edges["weight"].to_pylist()))
    expected = nx.pagerank(graph, alpha=0.85, weight="weight", tol=1e-12, max_iter=500)
    ours = pagerank(adjacency(edges, 45), iterations=200)
    assert np.allclose(ours, [expected[i] for i in range(45)], atol=1e-8)
    stats = graph_stats(edges, keys, pagerank_iterations=200)
    with_edges = [c for c in nx.connected_components(graph) if len(c) > 1]
    assert stats["components"] == len(with_edges)
    assert stats["largest_component"] == max(len(c) for c in with_edges)
    assert stats["isolated_nodes"] == sum(1 for n in graph if graph.degree(n) == 0)
    assert stats["degree"]["max"] == max(d for _, d in graph.degree())
