"""The three co-occurrence graphs as Spark DataFrame transformations (definitions: ``graphs/reference.py``).

Only DataFrame operations and higher-order array functions (``transform``, ``filter``, ``flatten``,
``sort_array``): no Python UDFs, so the job scales out unchanged under ``spark-submit --master ...``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

def click_sequences(behaviors: DataFrame) -> DataFrame:
    """``user_id, seq``: the history of the user's earliest impression, consecutive repeats dropped. Never the
    impressions' clicked candidates: those are the labels the recommenders train on."""
    earliest = Window.partitionBy("user_id").orderBy("time", "impression_id")
    first = behaviors.withColumn("_rank", F.row_number().over(earliest)).where("_rank = 1")
    return first.select("user_id", F.col("history").alias("raw")).select(
        "user_id", F.expr("filter(raw, (x, i) -> i = 0 OR x != raw[i - 1])").alias("seq"))


def _undirected_counts(pairs: DataFrame, weight: Column | None = None) -> DataFrame:
    """``src < dst`` edges with summed weight (1 per pair by default), self pairs dropped."""
    distinct = pairs.where(F.col("a") != F.col("b"))
    normalized = distinct.select(F.least("a", "b").alias("src"), F.greatest("a", "b").alias("dst"),
                                 (weight if weight is not None else F.lit(1)).cast("long").alias("w"))
    return normalized.groupBy("src", "dst").agg(F.sum("w").alias("weight"))


def window_pairs(sequences: DataFrame, window: int) -> DataFrame:
    """``a, b``: every item with each of the next ``window - 1`` items of its sequence."""
    if window < 2:
        return sequences.sparkSession.createDataFrame([], "a string, b string")
    pairs = F.expr(
        f"flatten(transform(sequence(1, {window - 1}), d -> "
        "IF(size(seq) > d, transform(sequence(0, size(seq) - d - 1), i -> named_struct('a', seq[i], 'b', seq[i + d])), "
        "CAST(array() AS array<struct<a: string, b: string>>))))")
    return sequences.select(F.explode(pairs).alias("p")).select("p.a", "p.b")


def news_graph(sequences: DataFrame, window: int) -> DataFrame:
    return _undirected_counts(window_pairs(sequences, window))


def item_item_keyword_graph(news_edges: DataFrame, keywords: DataFrame) -> DataFrame:
    """Cross keyword pairs of co-clicked news, weighted by how often the news pair co-occurs."""
    left = keywords.select(F.col("news_id").alias("src"), F.explode("keywords").alias("a"))
    right = keywords.select(F.col("news_id").alias("dst"), F.explode("keywords").alias("b"))
    cross = news_edges.join(left, "src").join(right, "dst")
    return _undirected_counts(cross.select("a", "b", "weight"), F.col("weight"))


def intra_item_keyword_graph(sequences: DataFrame, keywords: DataFrame) -> DataFrame:
    """Keyword pairs inside one item, weighted by the item's occurrences in the click sequences."""
    clicks = sequences.select(F.explode("seq").alias("news_id")).groupBy("news_id").agg(F.count("*").alias("clicks"))
    exploded = keywords.select("news_id", F.explode("keywords").alias("k"))
    pairs = exploded.alias("x").join(exploded.alias("y"), "news_id").where(F.col("x.k") < F.col("y.k"))
    weighted = pairs.join(clicks, "news_id").select(F.col("x.k").alias("a"), F.col("y.k").alias("b"), "clicks")
    return _undirected_counts(weighted, F.col("clicks"))


def distinct_keywords(keywords: DataFrame) -> DataFrame:
    return keywords.select("news_id", F.array_distinct("keywords").alias("keywords"))


def prune(edges: DataFrame, min_weight: int, top_k: int | None) -> DataFrame:
    """Drop edges under ``min_weight``; with ``top_k``, keep an edge when it is among the k heaviest
    edges of either endpoint (ties broken by the neighbour's key)."""
    kept = edges.where(F.col("weight") >= min_weight)
    if not top_k:
        return kept
    both_ways = kept.select(F.col("src").alias("node"), F.col("dst").alias("nbr"), "src", "dst", "weight") \
        .unionByName(kept.select(F.col("dst").alias("node"), F.col("src").alias("nbr"), "src", "dst", "weight"))
    heaviest = Window.partitionBy("node").orderBy(F.col("weight").desc(), F.col("nbr"))
    ranked = both_ways.withColumn("rank", F.row_number().over(heaviest)).where(F.col("rank") <= top_k)
    return ranked.select("src", "dst", "weight").distinct()


def node_table(keys: DataFrame) -> DataFrame:
    """``node_id, key``: contiguous ids in key order, so ids are stable for the same key set."""
    return keys.distinct().select(
        (F.row_number().over(Window.orderBy("key")) - 1).cast("long").alias("node_id"), "key")


def with_node_ids(edges: DataFrame, nodes: DataFrame) -> DataFrame:
    src = nodes.select(F.col("key").alias("src"), F.col("node_id").alias("src_id"))
    dst = nodes.select(F.col("key").alias("dst"), F.col("node_id").alias("dst_id"))
    return edges.join(src, "src").join(dst, "dst").select(
        F.col("src_id").alias("src"), F.col("dst_id").alias("dst"), "weight", F.col("src").alias("src_key"),
        F.col("dst").alias("dst_key"))
