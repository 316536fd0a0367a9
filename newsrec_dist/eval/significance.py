"""Seeds and significance for ablation tables: each run keeps its per-impression metrics (graph CF runs: per test
user), an arm's seeds are averaged per impression, and an arm is compared with its baseline by a paired t-test
over the same impressions (users).

Why paired over impressions: every arm scores the same dev impressions, so the per-impression difference removes
the impressions' own difficulty (most of the variance); averaging the seeds first keeps the test about the arm,
not one initialisation. The seeds' spread is reported beside it (mean ± std of each seed's average).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

PER_IMPRESSION_FILE = "per_impression.parquet"
PER_USER_FILE = "per_user.parquet"  # graph CF: one row per test user, ``<group>/<metric>`` columns
ID = "impression_id"


def write_per_impression(run_dir: Path, ids: np.ndarray, metrics: dict[str, np.ndarray],
                         file: str = PER_IMPRESSION_FILE, key: str = ID) -> None:
    """``run_dir/<file>``: one row per scored impression (or user), its id in column ``key`` and each metric (NaN
    where undefined, e.g. AUC without a click)."""
    columns = {key: pa.array(np.asarray(ids, dtype=np.int64))}
    columns |= {name: pa.array(np.asarray(values, dtype=np.float64)) for name, values in metrics.items()}
    pq.write_table(pa.table(columns), Path(run_dir) / file)


def read_per_impression(run_dir: Path, file: str = PER_IMPRESSION_FILE) -> pd.DataFrame:
    """The rows of ``write_per_impression``, indexed by their id (the first column)."""
    path = Path(run_dir) / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run kept no per-impression (per-user) metrics (trained before they "
                                "were written: run its train stage again with --from train)")
    frame = pd.read_parquet(path)
    return frame.set_index(frame.columns[0])


def seed_average(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per impression, the mean over the seeds' runs (NaN-aware); the runs must have scored the same impressions."""
    first = frames[0].index
    for frame in frames[1:]:
        if not frame.index.equals(first):
            raise ValueError("the seeds' runs scored different impressions: they cannot be averaged per impression")
    return pd.concat(frames).groupby(level=0, sort=False).mean()


@dataclass(frozen=True)
class PairedTest:
    """``arm - baseline`` over the impressions where both are defined."""

    impressions: int
    mean_difference: float
    ci_low: float  # 95 % confidence interval of the mean difference
    ci_high: float
    t: float
    p_value: float


def paired_t_test(arm: pd.Series, baseline: pd.Series) -> PairedTest:
    """Two-sided paired t-test of ``arm`` against ``baseline``, aligned on their index (impression ids)."""
    joined = pd.concat([arm.rename("arm"), baseline.rename("baseline")], axis=1, join="inner").dropna()
    if len(joined) < 2:
        raise ValueError(f"a paired test needs at least 2 impressions defined in both arms, got {len(joined)}")
    difference = joined["arm"].to_numpy() - joined["baseline"].to_numpy()
    if not np.any(difference):  # the same run (equal arms train once): no difference, nothing to test
        return PairedTest(len(joined), 0.0, 0.0, 0.0, 0.0, 1.0)
    result = stats.ttest_rel(joined["arm"].to_numpy(), joined["baseline"].to_numpy())
    interval = result.confidence_interval(0.95)
    return PairedTest(len(joined), float(difference.mean()), float(interval.low), float(interval.high),
                      float(result.statistic), float(result.pvalue))


def verdict(test: PairedTest, level: float) -> str:
    """A claim "arm beats baseline" read against the test: supported, contradicted, or not shown."""
    if test.p_value < level:
        return "supported" if test.mean_difference > 0 else "contradicted"
    return "not shown"
