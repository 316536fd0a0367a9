"""Retrieval check: does each query's own document rank first among all documents?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at(queries: np.ndarray, documents: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """recall@k of query i retrieving document i by cosine similarity (rows L2-normalised); ties count against."""
    similarity = queries @ documents.T
    own = np.diag(similarity)
    rank = (similarity > own[:, None]).sum(axis=1) + (similarity == own[:, None]).sum(axis=1) - 1
    return {f"recall@{k}": float(np.mean(rank < k)) for k in ks}
