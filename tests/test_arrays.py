"""The shared numpy building blocks against numpy's own (slower) formulations."""

from __future__ import annotations

import numpy as np
import pytest

from newsrec_dist.arrays import first_occurrences, offsets_from_lengths, searchsorted_many


@pytest.mark.parametrize("n, distinct", [(0, 1), (1, 1), (10_000, 50), (10_000, 10**9)])
def test_first_occurrences_keeps_what_np_unique_calls_first(n: int, distinct: int) -> None:
    keys = np.random.default_rng(n).integers(0, distinct, size=n)
    _, first = np.unique(keys, return_index=True)
    expected = np.zeros(n, dtype=bool)
    expected[first] = True
    assert (first_occurrences(keys) == expected).all()


def test_searchsorted_many_matches_searchsorted() -> None:
    rng = np.random.default_rng(0)
    sorted_keys = np.sort(rng.integers(0, 1000, size=500))
    queries = rng.integers(-5, 1005, size=20_000)
    assert (searchsorted_many(sorted_keys, queries) == np.searchsorted(sorted_keys, queries)).all()


def test_offsets_from_lengths() -> None:
    assert offsets_from_lengths(np.array([2, 0, 3])).tolist() == [0, 2, 2, 5]
