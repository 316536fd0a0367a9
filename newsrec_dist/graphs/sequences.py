"""Click sequences from the prepared behaviors (numpy side; the Spark job mirrors it).

Rule (see ``graphs/reference.py``): the history of the user's earliest impression of the split, consecutive
duplicates dropped. Clicked candidates never enter: they are the labels the recommenders train on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from newsrec_dist.data.prepare import read_behaviors
from newsrec_dist.graphs.reference import KeywordIndex, Sequences


def _flat_with_rows(lists: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Flattened values, the row of each value, and its position inside the row."""
    combined = lists.combine_chunks()
    rows = pc.list_parent_indices(combined).to_numpy()
    offsets = combined.offsets.to_numpy()
    position = np.arange(len(rows)) - (offsets[rows] - offsets[0])
    return combined.flatten(), rows, position


def _first_rows(user: np.ndarray, time: np.ndarray, impression: np.ndarray) -> np.ndarray:
    """Mask of each user's earliest row (by time, then impression id)."""
    order = np.lexsort((impression, time, user))
    starts = np.r_[True, user[order][1:] != user[order][:-1]] if len(order) else np.zeros(0, bool)
    mask = np.zeros(len(user), dtype=bool)
    mask[order[starts]] = True
    return mask


def _drop_consecutive_repeats(owners: np.ndarray, items: np.ndarray) -> np.ndarray:
    if not len(items):
        return np.zeros(0, dtype=bool)
    return np.r_[True, (owners[1:] != owners[:-1]) | (items[1:] != items[:-1])]


def click_sequences(prepared_dir: Path, news_ids: pa.Array, split: str = "train") -> Sequences:
    """Sequences of one split; node keys are the sorted union of news ids and ids seen in histories."""
    table = read_behaviors(prepared_dir, split)
    users = table["user_id"].combine_chunks().dictionary_encode()
    user = users.indices.to_numpy().astype(np.int64)
    time = table["time"].combine_chunks().cast(pa.int64()).to_numpy()
    impression = table["impression_id"].to_numpy()

    history, history_row, history_pos = _flat_with_rows(table["history"])
    in_first_row = _first_rows(user, time, impression)[history_row]
    events = history.filter(pa.array(in_first_row))
    keys = pc.unique(pa.concat_arrays([news_ids.cast(pa.string()), events])).sort()

    rows, position = history_row[in_first_row], history_pos[in_first_row]
    order = np.lexsort((position, user[rows]))
    items = pc.index_in(events, value_set=keys).to_numpy().astype(np.int64)[order]
    owners = user[rows][order]
    keep = _drop_consecutive_repeats(owners, items)
    counts = np.bincount(owners[keep], minlength=len(users.dictionary))
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Sequences(items=items[keep], offsets=offsets, news_keys=np.asarray(keys.to_pylist(), dtype=object))


def keyword_index(keywords: pa.Table, news_keys: np.ndarray) -> KeywordIndex:
    """Distinct keywords per news code from a ``news_id, keywords`` table; other news get none."""
    lists = keywords["keywords"].combine_chunks()
    flat = lists.flatten()
    keys = pc.unique(flat).sort()
    rows = pc.list_parent_indices(lists).to_numpy()
    news_code = pc.index_in(keywords["news_id"], value_set=pa.array(news_keys.tolist(), pa.string())).to_numpy(
        zero_copy_only=False)
    known = ~np.isnan(news_code.astype(float))
    owner = news_code[rows][known[rows]].astype(np.int64)
    keyword = pc.index_in(flat, value_set=keys).to_numpy()[known[rows]].astype(np.int64)
    pairs = np.unique(owner * np.int64(len(keys)) + keyword)  # distinct, sorted by (news, keyword)
    counts = np.bincount(pairs // len(keys), minlength=len(news_keys))
    offsets = np.zeros(len(news_keys) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return KeywordIndex(keywords=pairs % len(keys), offsets=offsets, keys=np.asarray(keys.to_pylist(), dtype=object))
