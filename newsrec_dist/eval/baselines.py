"""Non-learned scorers that prove the evaluation harness and the planted signal.

* ``random``: uniform scores (AUC ≈ 0.5 by construction).
* ``popularity``: clicks on the candidate strictly before the impression time, counted over every
  labeled split loaded (history has no timestamps in MIND, so it is not counted).
* ``category_profile``: share of the user's history in the candidate's subcategory, plus 0.3 × the
  share in its category — the simplest content-aware model; cold users get no signal from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from newsrec_dist.arrays import searchsorted_many
from newsrec_dist.eval.impressions import ClickCounter, ImpressionSet, NewsCatalog

CATEGORY_SHARE_WEIGHT = 0.3


@dataclass(frozen=True)
class ScoringContext:
    catalog: NewsCatalog
    popularity: np.ndarray  # per candidate, from :func:`popularity_before`
    seed: int


Scorer = Callable[[ImpressionSet, ScoringContext], np.ndarray]


def random_scores(impressions: ImpressionSet, context: ScoringContext) -> np.ndarray:
    return np.random.default_rng(context.seed).random(len(impressions.candidates))


def popularity_before(impressions: ImpressionSet, clicks: ClickCounter) -> np.ndarray:
    """Per candidate: clicks on it before its impression's time."""
    return clicks.before(impressions.candidates, impressions.time[impressions.candidate_owner()]).astype(np.float64)


def popularity_scores(impressions: ImpressionSet, context: ScoringContext) -> np.ndarray:
    return context.popularity


def _history_share(impressions: ImpressionSet, topic_of_news: np.ndarray, n_topics: int) -> np.ndarray:
    """Share of each candidate's user history that falls in the candidate's topic."""
    lengths = impressions.history_lengths()
    owner = np.repeat(np.arange(impressions.size), lengths)
    known = impressions.history >= 0
    history_keys = owner[known] * n_topics + topic_of_news[impressions.history[known]]
    keys, counts = np.unique(history_keys, return_counts=True)
    candidate_owner = impressions.candidate_owner()
    candidate_topic = np.where(impressions.candidates >= 0, topic_of_news[np.maximum(impressions.candidates, 0)], -1)
    wanted = candidate_owner * n_topics + candidate_topic
    if not len(keys):
        return np.zeros(len(wanted))
    position = np.minimum(searchsorted_many(keys, wanted), len(keys) - 1)
    hits = np.where((keys[position] == wanted) & (candidate_topic >= 0), counts[position], 0)
    return hits / np.maximum(lengths[candidate_owner], 1)


def category_profile_scores(impressions: ImpressionSet, context: ScoringContext) -> np.ndarray:
    catalog = context.catalog
    sub = _history_share(impressions, catalog.subcategory, int(catalog.subcategory.max()) + 1)
    cat = _history_share(impressions, catalog.category, int(catalog.category.max()) + 1)
    return sub + CATEGORY_SHARE_WEIGHT * cat


BASELINES: dict[str, Scorer] = {
    "random": random_scores,
    "popularity": popularity_scores,
    "category_profile": category_profile_scores,
}
