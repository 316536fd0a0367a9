"""numpy reference implementation of the three co-occurrence graphs (the test oracle).

Definitions shared with the Spark job (``graphs/spark_job.py``):

* **Click sequence** of a user: the history of the user's earliest impression of the split (by time,
  then impression id), in its order; an item equal to the item just before it is dropped (consecutive
  duplicates only — a later re-click is a real co-occurrence and stays). The impressions' clicked
  candidates are NOT part of it: they are the labels the recommenders train on, and a graph built from
  them would hand each training positive a feature made from its own label.
* **Window w**: every position i pairs with positions i+1 … i+w-1 of the same sequence.
* **news-ID graph**: undirected pairs of distinct news within a window; weight = number of pairs.
* **item-item keyword graph**: for every windowed news pair, all cross pairs (k1 of the first item,
  k2 of the second), k1 ≠ k2, undirected; weight = number of such pairs.
* **intra-item keyword graph**: all pairs of distinct keywords of one item, weighted by how often the
  item occurs in the click sequences.

Edges are ``(src, dst, weight)`` with ``src < dst`` as keys (news ids or keywords).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Sequences:
    """Click sequences as news codes: ``items[offsets[u]:offsets[u+1]]`` is user u's sequence.

    Codes index ``news_keys``, which is sorted, so code order is key order (and node id order).
    """

    items: np.ndarray
    offsets: np.ndarray
    news_keys: np.ndarray


@dataclass(frozen=True)
class KeywordIndex:
    """Distinct keywords of each news code as CSR into the sorted ``keys``."""

    keywords: np.ndarray
    offsets: np.ndarray
    keys: np.ndarray


def window_pairs(sequences: Sequences, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) codes of every position pair at distance 1 … window-1 inside one sequence."""
    owner = np.repeat(np.arange(len(sequences.offsets) - 1), np.diff(sequences.offsets))
    earlier, later = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for distance in range(1, min(window, len(owner))):
        same_user = owner[:-distance] == owner[distance:]
        earlier.append(sequences.items[:-distance][same_user])
        later.append(sequences.items[distance:][same_user])
    return np.concatenate(earlier).astype(np.int64), np.concatenate(later).astype(np.int64)


def count_edges(first: np.ndarray, second: np.ndarray, keys: np.ndarray,
                weights: np.ndarray | None = None) -> pd.DataFrame:
    """Undirected edge table: distinct endpoints, ``src < dst``, summed weights (1 per pair by default)."""
    distinct = first != second
    low = np.minimum(first, second)[distinct]
    high = np.maximum(first, second)[distinct]
    size = np.int64(len(keys))
    codes, inverse = np.unique(low * size + high, return_inverse=True)
    pair_weights = None if weights is None else weights[distinct]
    totals = np.bincount(inverse, weights=pair_weights, minlength=len(codes)).astype(np.int64)
    return pd.DataFrame({"src": keys[codes // size], "dst": keys[codes % size], "weight": totals})


def _expand(codes: np.ndarray, index: KeywordIndex) -> tuple[np.ndarray, np.ndarray]:
    """Every keyword of every entry of ``codes``, with the entry's position."""
    lengths = np.diff(index.offsets)[codes]
    position = np.repeat(np.arange(len(codes)), lengths)
    within = np.arange(len(position)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return index.keywords[index.offsets[codes][position] + within], position


def _cross(left_codes: np.ndarray, right_codes: np.ndarray, index: KeywordIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (keyword of left[p], keyword of right[p]) pairs, with p."""
    left_kw, left_pos = _expand(left_codes, index)
    right_kw, right_pos = _expand(right_codes, index)
    cross = pd.DataFrame({"p": left_pos, "k1": left_kw}).merge(pd.DataFrame({"p": right_pos, "k2": right_kw}), on="p")
    return cross["k1"].to_numpy(np.int64), cross["k2"].to_numpy(np.int64), cross["p"].to_numpy(np.int64)


def news_graph(sequences: Sequences, window: int) -> pd.DataFrame:
    earlier, later = window_pairs(sequences, window)
    return count_edges(earlier, later, sequences.news_keys)


def item_item_keyword_graph(sequences: Sequences, index: KeywordIndex, window: int) -> pd.DataFrame:
    earlier, later = window_pairs(sequences, window)
    co_clicked = earlier != later  # an item next to itself is not a co-click
    k1, k2, _ = _cross(earlier[co_clicked], later[co_clicked], index)
    return count_edges(k1, k2, index.keys)


def intra_item_keyword_graph(sequences: Sequences, index: KeywordIndex) -> pd.DataFrame:
    clicks = np.bincount(sequences.items, minlength=len(index.offsets) - 1)
    clicked = np.flatnonzero(clicks)
    k1, k2, position = _cross(clicked, clicked, index)
    one_way = k1 < k2  # each unordered keyword pair of an item once
    return count_edges(k1[one_way], k2[one_way], index.keys, clicks[clicked][position[one_way]].astype(np.float64))


def prune(edges: pd.DataFrame, min_weight: int, top_k: int | None) -> pd.DataFrame:
    """Edges with weight ≥ ``min_weight``; with ``top_k``, those among the k heaviest of either endpoint
    (ties broken by the neighbour's key) — the Spark job's rule."""
    kept = edges[edges["weight"] >= min_weight]
    if not top_k:
        return kept.reset_index(drop=True)
    both = pd.concat([kept.assign(node=kept["src"], nbr=kept["dst"]), kept.assign(node=kept["dst"], nbr=kept["src"])])
    both = both.sort_values(["node", "weight", "nbr"], ascending=[True, False, True])
    top = both.groupby("node", sort=False).head(top_k)
    return top[["src", "dst", "weight"]].drop_duplicates().reset_index(drop=True)
