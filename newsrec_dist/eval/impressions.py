"""Flat, integer-coded view of prepared impressions: what every scorer and metric consumes.

Candidates of all impressions are concatenated (``offsets`` delimit impressions) and news ids are
coded against the prepared news table, so scoring and metrics are array operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from newsrec_dist.arrays import offsets_from_lengths, searchsorted_many
from newsrec_dist.data.prepare import behaviors_path, read_news_table
from newsrec_dist.data.schema import BEHAVIORS_SCHEMA

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
    candidates: np.ndarray  # news codes (UNKNOWN for ids missing from news.tsv); int64, or int32 where asked
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
        return self.candidates[clicked], np.repeat(self.time, np.diff(self.offsets))[clicked]


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


BATCH_ROWS = 65_536


def _batches(prepared_dir: Path, split: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Behaviors of a split in record batches: MIND-large's candidate strings never sit in one array."""
    path = behaviors_path(prepared_dir, split)
    yield from ds.dataset(path, format="parquet", schema=BEHAVIORS_SCHEMA).to_batches(
        columns=columns, batch_size=BATCH_ROWS)


def _codes_and_lengths(catalog: NewsCatalog, lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int64)
    return catalog.codes(lists.flatten()), lengths


def load_impressions(prepared_dir: Path, split: str, catalog: NewsCatalog, codes: type = np.int64) -> ImpressionSet:
    """A split as an :class:`ImpressionSet`, built batch by batch (bounded temporaries). ``codes``: the dtype of
    its news codes; ``np.int32`` halves a large split (MIND-large's training split: 405M candidates and 230M history
    clicks, 5 GB as int64) for callers that compute no keys from codes in that dtype."""
    parts: dict[str, list] = {name: [] for name in (
        "impression_id", "user_id", "time", "candidates", "lengths", "labels", "history", "history_lengths")}
    labeled = True
    for batch in _batches(prepared_dir, split, list(BEHAVIORS_SCHEMA.names)):
        candidates, lengths = _codes_and_lengths(catalog, batch.column("impressions"))
        history, history_lengths = _codes_and_lengths(catalog, batch.column("history"))
        candidates, history = candidates.astype(codes, copy=False), history.astype(codes, copy=False)
        labels = batch.column("labels")
        labeled = labeled and labels.null_count == 0
        for name, value in (("impression_id", batch.column("impression_id").to_numpy()),
                            ("user_id", batch.column("user_id")),
                            ("time", batch.column("time").cast(pa.int64()).to_numpy()),
                            ("candidates", candidates), ("lengths", lengths), ("history", history),
                            ("history_lengths", history_lengths),
                            ("labels", labels.flatten().to_numpy(zero_copy_only=False) if labeled else None)):
            parts[name].append(value)
    return ImpressionSet(
        impression_id=np.concatenate(parts["impression_id"] or [np.zeros(0, np.int64)]),
        user_id=pa.concat_arrays(parts["user_id"]) if parts["user_id"] else pa.array([], pa.string()),
        time=np.concatenate(parts["time"] or [np.zeros(0, np.int64)]),
        offsets=offsets_from_lengths(np.concatenate(parts["lengths"] or [np.zeros(0, np.int64)])),
        candidates=np.concatenate(parts["candidates"] or [np.zeros(0, codes)]),
        labels=np.concatenate(parts["labels"]).astype(np.int8) if labeled and parts["labels"] else None,
        history_offsets=offsets_from_lengths(np.concatenate(parts["history_lengths"] or [np.zeros(0, np.int64)])),
        history=np.concatenate(parts["history"] or [np.zeros(0, codes)]),
    )


def load_clicks(prepared_dir: Path, split: str, catalog: NewsCatalog) -> tuple[np.ndarray, np.ndarray]:
    """(news code, time) of every click in a labeled split, streamed batch by batch."""
    items, times = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for batch in _batches(prepared_dir, split, ["time", "impressions", "labels"]):
        labels = batch.column("labels")
        if labels.null_count:
            raise ValueError(f"split {split!r} has unlabeled impressions: no clicks to count")
        clicked = labels.flatten().to_numpy(zero_copy_only=False).astype(bool)
        lengths = pc.list_value_length(batch.column("impressions")).to_numpy()
        items.append(catalog.codes(batch.column("impressions").flatten().filter(pa.array(clicked))))
        times.append(np.repeat(batch.column("time").cast(pa.int64()).to_numpy(), lengths)[clicked])
    return np.concatenate(items), np.concatenate(times)


class ClickCounter:
    """Clicks on each item strictly before a given time.

    Clicks are sorted by (item, time) keys; a query is a ``searchsorted`` of its own key.
    """

    def __init__(self, items: np.ndarray, times: np.ndarray) -> None:
        known = items >= 0
        self.keys = np.sort(self._key(items[known], times[known]))

    @staticmethod
    def _key(items: np.ndarray, times: np.ndarray) -> np.ndarray:
        return items.astype(np.int64) * (1 << 33) + times.astype(np.int64)

    def before(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        first_click = np.searchsorted(self.keys, self._key(np.arange(max(int(items.max(initial=0)) + 1, 1)),
                                                           np.zeros(1, np.int64)), side="left")
        stop = searchsorted_many(self.keys, self._key(items, times))
        return np.where(items >= 0, stop - first_click[np.maximum(items, 0)], 0)
