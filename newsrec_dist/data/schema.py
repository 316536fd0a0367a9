"""MIND's file layout and the Parquet contracts every later stage reads."""

from __future__ import annotations

import pyarrow as pa

NEWS_COLUMNS = (
    "news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities",
)
BEHAVIORS_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
MIND_TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"  # e.g. 11/15/2019 8:55:22 AM
MIND_TIME_PATTERN = r"^(0?[1-9]|1[0-2])/(0?[1-9]|[12][0-9]|3[01])/[0-9]{4} (0?[1-9]|1[0-2]):[0-5][0-9]:[0-5][0-9] (AM|PM)$"

NEWS_ID_PATTERN = r"^N[0-9]+$"
USER_ID_PATTERN = r"^U[0-9]+$"
IMPRESSION_ID_PATTERN = r"^[0-9]{1,18}$"
CATEGORY_PATTERN = r"^[^\s]+$"
HISTORY_PATTERN = r"^(N[0-9]+( N[0-9]+)*)?$"
LABELED_IMPRESSIONS_PATTERN = r"^N[0-9]+-[01]( N[0-9]+-[01])*$"
UNLABELED_IMPRESSIONS_PATTERN = r"^N[0-9]+( N[0-9]+)*$"

NEWS_SCHEMA = pa.schema([(name, pa.string()) for name in NEWS_COLUMNS])
BEHAVIORS_SCHEMA = pa.schema([
    ("impression_id", pa.int64()),
    ("user_id", pa.string()),
    ("time", pa.timestamp("s")),
    ("history", pa.list_(pa.string())),
    ("impressions", pa.list_(pa.string())),
    ("labels", pa.list_(pa.int8())),  # null on the unlabeled test split
])

# Splits whose impressions must carry labels; MIND's test split has none.
LABELED_SPLITS = frozenset({"train", "dev"})
