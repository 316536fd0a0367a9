"""Training pairs for the contrastive encoder: news title → its abstract, plus extra pair files.

Every input row is accounted for: a news item without an abstract, or a pair-file row that is not
valid, is counted under a reason (``--strict``: the first one is an error naming file and line).
Held-out news (a stable hash of the news id, so every process and run agrees) never enter training;
they are the retrieval check's queries and documents.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

PAIR_COLUMNS = ("query", "positive")


class PairFileError(ValueError):
    """A pair-file row that cannot be used, with file and line (or Parquet row)."""


@dataclass
class Pairs:
    train: pd.DataFrame  # query, positive[, negative]
    heldout: pd.DataFrame  # news_id, query (title), positive (abstract)
    rejected: Counter = field(default_factory=Counter)
    sources: dict[str, int] = field(default_factory=dict)


def heldout_mask(news_ids: pd.Series, fraction: float) -> np.ndarray:
    """Stable per-id split: md5 of the id → [0, 1); independent of row order and process."""
    buckets = [int.from_bytes(hashlib.md5(str(key).encode()).digest()[:8], "big") / 2**64 for key in news_ids]
    return np.asarray(buckets) < fraction


def news_pairs(prepared_dir: Path, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame, Counter]:
    news = pq.read_table(Path(prepared_dir) / "news.parquet",
                         columns=["news_id", "subcategory", "title", "abstract"]).to_pandas()
    rejected: Counter = Counter()
    usable = news["title"].fillna("").str.strip().ne("") & news["abstract"].fillna("").str.strip().ne("")
    rejected["news without title or abstract"] = int((~usable).sum())
    news = news[usable].rename(columns={"title": "query", "abstract": "positive"}).reset_index(drop=True)
    held = heldout_mask(news["news_id"], holdout_fraction)
    return news[~held].reset_index(drop=True), news[held].reset_index(drop=True), rejected


def _check_row(row: dict) -> str | None:
    """Reason a pair row is unusable, or None."""
    for column in PAIR_COLUMNS:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            return f"{column!r} missing or not a non-empty string"
    negative = row.get("negative")
    if negative is not None and (not isinstance(negative, str) or not negative.strip()):
        return "'negative' present but not a non-empty string"
    return None


def read_pair_file(path: Path, strict: bool) -> tuple[pd.DataFrame, Counter]:
    """(query, positive[, negative]) rows of a JSONL or Parquet file; bad rows counted or raised."""
    path = Path(path)
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
        where = [f"{path}: row {index}" for index in range(len(rows))]
    elif path.suffix in (".jsonl", ".json"):
        rows, where = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                rows.append({"__error__": f"invalid JSON ({error.msg})"})
            where.append(f"{path}:{number}")
    else:
        raise PairFileError(f"{path}: pair files must be .jsonl or .parquet")
    kept, rejected = [], Counter()
    for row, location in zip(rows, where):
        reason = row.get("__error__") if isinstance(row, dict) else "row is not a JSON object"
        reason = reason or _check_row(row)
        if reason:
            if strict:
                raise PairFileError(f"{location}: {reason}")
            rejected[f"{path.name}: {reason}"] += 1
            continue
        kept.append({key: row[key] for key in (*PAIR_COLUMNS, "negative") if row.get(key) is not None})
    return pd.DataFrame(kept, columns=[*PAIR_COLUMNS, "negative"]), rejected


def subcategory_negatives(train: pd.DataFrame, seed: int) -> pd.Series:
    """For each news pair, the abstract of another training item of the same subcategory (hard negative).

    A subcategory with a single item falls back to a random abstract from the whole set.
    """
    rng = np.random.default_rng(seed)
    source = np.arange(len(train))
    for rows in train.groupby("subcategory").indices.values():
        if len(rows) > 1:  # a random derangement within the group: nobody gets their own abstract
            order = rng.permutation(rows)
            source[order] = np.roll(order, 1)
        else:
            source[rows] = (rows + 1 + rng.integers(0, max(len(train) - 1, 1))) % len(train)
    return pd.Series(train["positive"].to_numpy()[source], index=train.index)


def load_pairs(prepared_dir: Path, holdout_fraction: float, pair_files: list[str], hard_negatives: str,
               strict: bool, seed: int) -> Pairs:
    train, heldout, rejected = news_pairs(prepared_dir, holdout_fraction)
    sources = {"news": len(train)}
    if hard_negatives == "subcategory":
        train["negative"] = subcategory_negatives(train, seed)
    elif hard_negatives != "none":
        raise ValueError(f"encoder.finetune.hard_negatives must be none or subcategory, got {hard_negatives!r}")
    frames = [train[["query", "positive", *(["negative"] if hard_negatives != "none" else [])]]]
    for file in pair_files:
        extra, bad = read_pair_file(Path(file), strict)
        rejected.update(bad)
        sources[str(file)] = len(extra)
        frames.append(extra)
    combined = pd.concat(frames, ignore_index=True)
    if hard_negatives != "none":  # pair rows without their own negative get a random other positive
        missing = combined["negative"].isna().to_numpy()
        rng = np.random.default_rng(seed + 1)
        combined.loc[missing, "negative"] = combined["positive"].to_numpy()[rng.integers(0, len(combined), missing.sum())]
    else:
        combined = combined.drop(columns=["negative"], errors="ignore")
    return Pairs(train=combined, heldout=heldout[["news_id", "query", "positive"]], rejected=rejected, sources=sources)
