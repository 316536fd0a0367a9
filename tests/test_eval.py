"""Evaluation plumbing: click counting before a time, baselines' scores, groups."""

from __future__ import annotations

import numpy as np

from newsrec_dist.eval.impressions import ClickCounter


def test_click_counter_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    click_items, click_times = rng.integers(0, 30, 2000), rng.integers(0, 500, 2000)
    query_items, query_times = rng.integers(-1, 35, 5000), rng.integers(0, 520, 5000)
    counted = ClickCounter(click_items, click_times).before(query_items, query_times)
    expected = [0 if item < 0 else int(((click_items == item) & (click_times < time)).sum())
                for item, time in zip(query_items, query_times)]
    assert counted.tolist() == expected


def test_click_counter_ignores_unknown_clicks_and_handles_no_clicks() -> None:
    counter = ClickCounter(np.array([-1, 2, 2]), np.array([1, 5, 9]))
    assert counter.before(np.array([2, 2, 2, 0, -1]), np.array([5, 6, 10, 100, 100])).tolist() == [0, 1, 2, 0, 0]
    empty = ClickCounter(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert empty.before(np.array([0, 3]), np.array([10, 10])).tolist() == [0, 0]
