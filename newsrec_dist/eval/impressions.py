"""Flat, integer-coded view of prepared impressions: what every scorer and metric consumes.

Candidates of all impressions are concatenated (``offsets`` delimit impressions) and news ids are
coded against the prepared news table, so scoring and metrics are array operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from newsrec_dist.data.prepare import read_behaviors, read_news_table

UNKNOWN = -1  # code of a news id absent from news.tsv


@dataclass(frozen=True)
class NewsCatalog:
    ids: pa.Array  # news ids; code = position
    category: np.ndarray  # code per news
    subcategory: np.ndarray
    category_names: list[str]

    @property
    def size(self) -> int:
        return len(self.ids)

    def codes(self, news_ids: pa.Array) -> np.ndarray:
        return pc.index_in(news_ids, value_set=self.ids).fill_null(UNKNOWN).to_numpy().astype(np.int64)


@dataclass(frozen=True)
class ImpressionSet:
    impression_id: np.ndarray
    user_id: pa.Array
    time: np.ndarray  # seconds since the epoch
    offsets: np.ndarray  # candidates of impression g: offsets[g]:offsets[g+1]
    candidates: np.ndarray  # news codes (UNKNOWN for ids missing from news.tsv)
    labels: np.ndarray | None  # 0/1 per candidate; None on an unlabeled split
    history_offsets: np.ndarray
    history: np.ndarray  # news codes of each impression's user history

    @property
    def size(self) -> int:
        return len(self.impression_id)

    def history_lengths(self) -> np.ndarray:
        return np.diff(self.history_offsets)

    def candidate_owner(self) -> np.ndarray:
        """Impression index of every candidate."""
        return np.repeat(np.arange(self.size), np.diff(self.offsets))

    def clicks(self) -> tuple[np.ndarray, np.ndarray]:
        """(news code, time) of every click in this split."""
        if self.labels is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        clicked = self.labels.astype(bool)
        return self.candidates[clicked], self.time[self.candidate_owner()][clicked]


def load_catalog(prepared_dir: Path) -> NewsCatalog:
    news = read_news_table(prepared_dir).select(["news_id", "category", "subcategory"])
    category = news["category"].combine_chunks().dictionary_encode()
    subcategory = news["subcategory"].combine_chunks().dictionary_encode()
    return NewsCatalog(
        ids=news["news_id"].combine_chunks(),
        category=category.indices.to_numpy().astype(np.int64),
        subcategory=subcategory.indices.to_numpy().astype(np.int64),
        category_names=category.dictionary.to_pylist(),
    )


def _list_codes(catalog: NewsCatalog, column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    lists = column.combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    return catalog.codes(lists.flatten()), offsets


def load_impressions(prepared_dir: Path, split: str, catalog: NewsCatalog) -> ImpressionSet:
    table = read_behaviors(prepared_dir, split)
    candidates, offsets = _list_codes(catalog, table["impressions"])
    history, history_offsets = _list_codes(catalog, table["history"])
    labels_column = table["labels"].combine_chunks()
    labels = None if labels_column.null_count == len(labels_column) else labels_column.flatten().to_numpy().astype(np.int8)
    return ImpressionSet(
        impression_id=table["impression_id"].to_numpy(),
        user_id=table["user_id"].combine_chunks(),
        time=table["time"].combine_chunks().cast(pa.int64()).to_numpy(),
        offsets=offsets,
        candidates=candidates,
        labels=labels,
        history_offsets=history_offsets,
        history=history,
    )


class ClickCounter:
    """Clicks on each item strictly before a given time, answered with two ``searchsorted`` calls."""

    def __init__(self, items: np.ndarray, times: np.ndarray) -> None:
        known = items >= 0
        self.keys = np.sort(self._key(items[known], times[known]))

    @staticmethod
    def _key(items: np.ndarray, times: np.ndarray) -> np.ndarray:
        return items.astype(np.int64) * (1 << 33) + times.astype(np.int64)

    def before(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        start = np.searchsorted(self.keys, self._key(items, np.zeros_like(times)), side="left")
        stop = np.searchsorted(self.keys, self._key(items, times), side="left")
        return np.where(items >= 0, stop - start, 0)
