"""Top-k metrics of full-catalogue ranking (graph CF models): Recall, NDCG, MRR and Hit at k, per user, averaged.

Each user's items are ranked over the catalogue minus what that user clicked in training (``excluded``);
the ``relevant`` items are the user's test clicks. Definitions follow torchmetrics' retrieval metrics with
``top_k`` (the tests check them against RetrievalRecall, RetrievalNormalizedDCG, RetrievalMRR and
RetrievalHitRate): Recall@k = hits in the top k / relevant; NDCG@k = DCG@k / ideal DCG@k with binary gains;
MRR@k = 1 / rank of the first relevant item in the top k (0 when none); Hit@k = any relevant in the top k.
Users without a relevant item are left out. Scores come in user chunks, so the catalogue is never a dense
users × items matrix in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

METRICS = ("recall", "ndcg", "mrr", "hit")
# (first user, users) -> [users, items] scores
ScoreChunk = Callable[[int, int], torch.Tensor]


class Csr:
    """Per-user item lists: user u's items are ``items[offsets[u]:offsets[u + 1]]``."""

    def __init__(self, offsets: np.ndarray, items: np.ndarray) -> None:
        self.offsets, self.items = offsets.astype(np.int64), items.astype(np.int64)

    @classmethod
    def of_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> Csr:
        order = np.lexsort((items, users))
        counts = np.bincount(users, minlength=n_users)
        return cls(np.concatenate([[0], np.cumsum(counts)]), items[order])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def chunk(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(local user index, item) pairs of users start..stop-1."""
        begin, end = self.offsets[start], self.offsets[stop]
        return np.repeat(np.arange(stop - start), self.lengths()[start:stop]), self.items[begin:end]


def top_items(scores: ScoreChunk, rows: np.ndarray, excluded: Csr, k: int, n_users: int,
           chunk_users: int = 512) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(user rows, [rows, k] item indices, best first) for the sorted ``rows``, chunk by chunk; each user's
    ``excluded`` items never appear ahead of another item."""
    for start in range(0, n_users, chunk_users):
        stop = min(start + chunk_users, n_users)
        mine = rows[(rows >= start) & (rows < stop)]
        if not len(mine):
            continue
        block = scores(start, stop - start).float()
        owners, items = excluded.chunk(start, stop)
        block[torch.from_numpy(owners), torch.from_numpy(items)] = -torch.inf
        # a pool smaller than k (a small group, e.g. the cold items) is ranked whole; its excluded items come
        # last at -inf and are never relevant
        yield mine, torch.topk(block[torch.from_numpy(mine - start)], min(k, block.shape[1]), dim=1).indices.numpy()


def topk_means(users: np.ndarray, per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """The users' average of each metric of :func:`topk_per_user`, and how many users."""
    means = {key: float(values.mean()) if len(values) else float("nan") for key, values in per_user.items()}
    return means | {"users": int(len(users))}


def topk_per_user(scores: ScoreChunk, n_users: int, relevant: Csr, excluded: Csr, ks: list[int], n_items: int
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The users with at least one relevant item, and each one's Recall/NDCG/MRR/Hit at every k."""
    k_max = max(ks)
    per_user: dict[str, list[np.ndarray]] = {f"{name}@{k}": [] for name in METRICS for k in ks}
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])
    users, scored = np.flatnonzero(relevant.lengths() > 0), []
    for mine, top in top_items(scores, users, excluded, k_max, n_users):
        scored.append(mine)
        hits = _hits(top, mine, relevant, n_items)
        count = relevant.lengths()[mine]
        for k in ks:
            within = hits[:, :k]
            found = within.sum(axis=1)
            first = np.where(within.any(axis=1), within.argmax(axis=1) + 1, 0)
            per_user[f"recall@{k}"].append(found / count)
            per_user[f"ndcg@{k}"].append((within * discounts[:within.shape[1]]).sum(axis=1)
                                         / ideal[np.minimum(count, k)])
            per_user[f"mrr@{k}"].append(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0))
            per_user[f"hit@{k}"].append((found > 0).astype(np.float64))
    rows = np.concatenate(scored) if scored else np.zeros(0, np.int64)
    return rows, {key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in per_user.items()}


def _hits(top: np.ndarray, rows: np.ndarray, relevant: Csr, n_items: int) -> np.ndarray:
    """[len(rows), k] booleans: is the item at each top-k position relevant to its user."""
    first, last = int(rows.min()), int(rows.max()) + 1
    owners = np.repeat(np.arange(first, last), relevant.lengths()[first:last])
    # sorted: Csr lists are sorted by (user, item)
    keys = owners * n_items + relevant.items[relevant.offsets[first]:relevant.offsets[last]]
    wanted = rows[:, None] * n_items + top
    position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return keys[position] == wanted
