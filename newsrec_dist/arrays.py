"""Small numpy building blocks shared by the data, eval and graph stages."""

from __future__ import annotations

import numpy as np


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """CSR offsets (length n+1, int64) for ragged rows of the given lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Mask keeping the first entry of each repeated key, in the keys' own order.

    A stable argsort and one comparison of neighbours: several times faster than
    ``np.unique(return_index=True)`` plus sorting its indices back into order.
    """
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    keep = np.ones(len(keys), dtype=bool)
    keep[order[1:][ordered[1:] == ordered[:-1]]] = False
    return keep


def searchsorted_many(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``np.searchsorted(sorted_keys, queries, side="left")`` for tens of millions of queries.

    Queries are searched in sorted order, which numpy's binary search exploits (each search starts
    where the previous ended): on 67M random queries this is several times faster than asking in
    arbitrary order, which misses the cache on every probe.
    """
    order = np.argsort(queries, kind="stable")
    found = np.empty(len(queries), dtype=np.int64)
    found[order] = np.searchsorted(sorted_keys, queries[order], side="left")
    return found
