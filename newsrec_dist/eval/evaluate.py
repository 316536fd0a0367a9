"""``newsrec eval``: score an impression split, compute MIND metrics per user group and diversity.

Groups: ``all``, ``new`` (history length ≤ ``cold_history_max``) and ``warm``. Diversity is measured
on each impression's top-k; its popularity is the candidate's clicks before the impression time.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from newsrec_dist.eval.baselines import BASELINES, ScoringContext, popularity_before
from newsrec_dist.eval.impressions import (
    ClickCounter, ImpressionSet, NewsCatalog, load_catalog, load_clicks, load_impressions,
)
from newsrec_dist.eval.metrics import diversity_metrics, impression_metrics, summarize, write_prediction_file
from newsrec_dist.eval.oracle import oracle_files, oracle_scores
from newsrec_dist.io import Manifest, artifact_fingerprint, atomic_dir, atomic_write_text, is_up_to_date

RANKING_METRICS = ("auc", "mrr", "ndcg@5", "ndcg@10")
ORACLE = "oracle"


@dataclass(frozen=True)
class EvalData:
    catalog: NewsCatalog
    impressions: ImpressionSet
    clicks: ClickCounter

    @functools.cached_property
    def popularity(self) -> np.ndarray:
        """Per candidate: clicks before its impression time (baseline scores and diversity both use it)."""
        return popularity_before(self.impressions, self.clicks)


def load_eval_data(prepared_dir: Path, split: str, labeled_splits: list[str]) -> EvalData:
    """The split to score plus a click counter over every labeled split (for popularity)."""
    catalog = load_catalog(prepared_dir)
    impressions = load_impressions(prepared_dir, split, catalog)
    if impressions.labels is None:
        raise ValueError(f"split {split!r} has no labels: metrics need labeled impressions (use train or dev)")
    click_items, click_times = [], []
    for other in labeled_splits:
        items, times = impressions.clicks() if other == split else load_clicks(prepared_dir, other, catalog)
        click_items.append(items)
        click_times.append(times)
    return EvalData(catalog, impressions, ClickCounter(np.concatenate(click_items), np.concatenate(click_times)))


def user_groups(impressions: ImpressionSet, cold_history_max: int) -> dict[str, np.ndarray | None]:
    new = impressions.history_lengths() <= cold_history_max
    return {"all": None, "new": new, "warm": ~new}


def per_impression_metrics(data: EvalData, scores: np.ndarray, diversity_k: int
                           ) -> tuple[dict[str, np.ndarray], float]:
    """AUC, MRR, nDCG@5/10 and the top-k diversity of every impression, and the split's item coverage@k."""
    imps = data.impressions
    assert imps.labels is not None
    known = imps.candidates >= 0
    categories = np.where(known, data.catalog.category[np.maximum(imps.candidates, 0)], -1)
    diversity = diversity_metrics(scores, imps.offsets, imps.candidates, categories, data.popularity, diversity_k)
    ranking = impression_metrics(scores, imps.labels, imps.offsets)
    per_impression = ranking | {name: value for name, value in diversity.items() if isinstance(value, np.ndarray)}
    return per_impression, float(diversity[f"item_coverage@{diversity_k}"])


def evaluate_scores(data: EvalData, scores: np.ndarray, cold_history_max: int, diversity_k: int) -> dict[str, Any]:
    """Ranking metrics and diversity per user group for one set of candidate scores."""
    per_impression, item_coverage = per_impression_metrics(data, scores, diversity_k)
    results: dict[str, Any] = {}
    for group, mask in user_groups(data.impressions, cold_history_max).items():
        results[group] = summarize(per_impression, mask)
    results["all"][f"item_coverage@{diversity_k}"] = item_coverage
    return results


def run_baselines(
    prepared_dir: Path, out_dir: Path, names: list[str], split: str, labeled_splits: list[str],
    cold_history_max: int, diversity_k: int, seed: int, write_predictions: bool, oracle_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate each named baseline into ``out_dir`` (``metrics.json``, MIND ``prediction-<name>.txt``); a no-op
    returning the saved metrics when the data and settings are unchanged. ``oracle`` scores by the generator's
    true utilities under ``oracle_dir`` and is left out, with a note, for data that has none."""
    unknown = sorted(set(names) - set(BASELINES) - {ORACLE})
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted([*BASELINES, ORACLE])}")
    oracle_path = oracle_files(oracle_dir, split) if ORACLE in names else None
    inputs = {"prepared": artifact_fingerprint(prepared_dir)}
    if oracle_path is not None:
        inputs["oracle"] = str(sorted((part.name, part.stat().st_size) for part in oracle_path.glob("*.parquet")))
    config = {"baselines": names, "split": split, "labeled": labeled_splits, "cold_history_max": cold_history_max,
              "diversity_k": diversity_k, "seed": seed, "predictions": write_predictions}
    if is_up_to_date(out_dir, "eval", inputs, config):
        return json.loads((out_dir / "metrics.json").read_text())
    data = load_eval_data(prepared_dir, split, labeled_splits)
    context = ScoringContext(catalog=data.catalog, popularity=data.popularity, seed=seed)
    notes = {} if oracle_path or ORACLE not in names else {ORACLE: f"no oracle for split {split!r} in {oracle_dir}"}
    with atomic_dir(out_dir) as work:
        results: dict[str, Any] = {}
        for name in names:
            if name == ORACLE and oracle_path is None:
                continue
            scores = (oracle_scores(oracle_path, data.impressions, data.catalog) if name == ORACLE
                      else BASELINES[name](data.impressions, context))
            results[name] = evaluate_scores(data, scores, cold_history_max, diversity_k)
            if write_predictions:
                write_prediction_file(work / f"prediction-{name}.txt", data.impressions.impression_id,
                                      scores, data.impressions.offsets)
        payload = {"split": split, "impressions": data.impressions.size, "models": results, "notes": notes}
        atomic_write_text(work / "metrics.json", json.dumps(payload, indent=2))
        Manifest(stage="eval", inputs=inputs, config=config, rows={"impressions": data.impressions.size}).write(work)
    return payload


def oracle_lift_share(auc: float, oracle_auc: float | None) -> str:
    """A model's AUC lift over random as a share of the oracle's (1.00 = as good as the data allows)."""
    return f"{(auc - 0.5) / (oracle_auc - 0.5):.2f}" if oracle_auc is not None and oracle_auc > 0.5 else "-"


def oracle_metrics(payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """The oracle row of an evaluation's metrics, when the data had one."""
    return (payload or {}).get("models", {}).get(ORACLE)


def metrics_markdown(payload: dict[str, Any], diversity_k: int, oracle: dict[str, Any] | None = None) -> str:
    """One table: a row per model and user group, ranking metrics then diversity, and with an oracle (the payload's
    own or the one given), each AUC's lift over random as a share of the oracle's for the same users."""
    oracle = oracle or oracle_metrics(payload)
    columns = [*RANKING_METRICS, f"category_entropy@{diversity_k}", f"mean_popularity@{diversity_k}"]
    share = ["AUC lift / oracle's"] if oracle else []
    header = "| model | users | impressions | " + " | ".join(columns + share) + " |"
    lines = [header, "|" + "---|" * (len(columns) + len(share) + 3)]
    for model, groups in payload["models"].items():
        for group, values in groups.items():
            cells = [f"{values[name]:.4f}" for name in columns]
            if oracle:
                cells.append(oracle_lift_share(values["auc"], oracle.get(group, {}).get("auc")))
            lines.append(f"| {model} | {group} | {int(values['impressions'])} | {' | '.join(cells)} |")
    return "\n".join(lines)
