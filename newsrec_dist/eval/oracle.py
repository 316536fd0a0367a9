"""The generator's oracle: each dev candidate's true click utility, written by ``newsrec data synth``.

Only the evaluation reads it (the ``oracle`` row: the best ranking the data allows, the ceiling every
model is reported against); no model or feature stage does. Real MIND data has none, and the row is
then left out with a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from newsrec_dist.eval.impressions import ImpressionSet, NewsCatalog


def oracle_files(oracle_dir: Path | None, split: str) -> Path | None:
    """The oracle's directory for ``split`` when the data has one."""
    if oracle_dir is None:
        return None
    path = Path(oracle_dir) / split
    return path if path.is_dir() and any(path.glob("*.parquet")) else None


def news_numbers(ids: pa.Array) -> np.ndarray:
    """N123 → 123 (-1 for ids of another shape)."""
    digits = pc.utf8_slice_codeunits(ids.cast(pa.string()), 1)
    valid = pc.and_(pc.starts_with(ids.cast(pa.string()), "N"), pc.match_substring_regex(digits, r"^[0-9]{1,9}$"))
    numbers = pc.if_else(valid, digits, pa.scalar("-1")).cast(pa.int64())
    return numbers.to_numpy(zero_copy_only=False)


def oracle_scores(path: Path, impressions: ImpressionSet, catalog: NewsCatalog) -> np.ndarray:
    """Per candidate of ``impressions``: its true utility; raises when the files do not describe these impressions."""
    table = ds.dataset(str(path), format="parquet").to_table().sort_by("impression_id")
    ids = table["impression_id"].to_numpy()
    row = np.searchsorted(ids, impressions.impression_id)
    found = (row < len(ids)) & (ids[np.minimum(row, len(ids) - 1)] == impressions.impression_id)
    if not found.all():
        missing = impressions.impression_id[~found][:3].tolist()
        raise ValueError(f"{path}: no oracle utility for impressions {missing}: the data is not the one generated")
    utility = table["utility"].combine_chunks()
    numbers = table["news_number"].combine_chunks()
    starts = utility.offsets.to_numpy()[row]
    lengths = np.diff(impressions.offsets)
    if not np.array_equal(np.diff(utility.offsets.to_numpy())[row], lengths):
        raise ValueError(f"{path}: candidate counts differ from the prepared impressions")
    flat = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(impressions.offsets[:-1], lengths))
    expected = news_numbers(catalog.ids)[np.maximum(impressions.candidates, 0)]
    if not np.array_equal(numbers.values.to_numpy()[flat], expected):
        raise ValueError(f"{path}: candidate news differ from the prepared impressions")
    return utility.values.to_numpy()[flat].astype(np.float64)
