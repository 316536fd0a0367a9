"""Fast evaluation: every news item encoded once, then every impression scored from those vectors, batched."""

from __future__ import annotations

import numpy as np
import torch

from newsrec_dist.models.recommender import Recommender
from newsrec_dist.train.samples import SplitArrays, impression_batches, pair_batches

NEWS_CHUNK = 4096


@torch.no_grad()
def news_vectors(model: Recommender, rows: int, device: torch.device) -> torch.Tensor:
    """[rows, dim] vector of every news row (row 0: the padding vector)."""
    index = torch.arange(rows, device=device)
    return torch.cat([model.encode_news(index[start:start + NEWS_CHUNK]) for start in range(0, rows, NEWS_CHUNK)])


def similar_sizes_first(split: SplitArrays, max_history: int) -> np.ndarray:
    """Impressions ordered by candidate count, then history length: a batch pads to its largest impression and its
    longest history."""
    impressions = split.impressions
    return np.lexsort((np.minimum(impressions.history_lengths(), max_history), np.diff(impressions.offsets)))


@torch.no_grad()
def score_split(model: Recommender, split: SplitArrays, news_rows: int, max_history: int, batch_impressions: int,
                device: torch.device) -> np.ndarray:
    """Scores aligned with ``split.impressions.candidates`` (higher = more likely clicked).

    A target-aware model (DIN, BST) builds one user per candidate anyway, so it scores (impression, candidate)
    pairs, as many per batch as ``batch_impressions`` average impressions hold, batched by history length: no
    padded candidate or click slot. Others score whole impressions (the user once), similar sizes together."""
    was_training = model.training
    model.eval()
    vectors = news_vectors(model, news_rows, device)

    def logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        history, candidates = batch["history"].to(device), batch["candidates"].to(device)
        return model.score_vectors(vectors[history], history > 0, vectors[candidates], batch["users"].to(device))

    impressions = split.impressions
    scores = np.zeros(len(impressions.candidates), np.float32)
    if model.user_encoder.target_aware:
        batch_pairs = batch_impressions * max(1, round(len(impressions.candidates) / max(1, impressions.size)))
        for batch, positions in pair_batches(split, max_history, batch_pairs):
            scores[positions] = logits(batch)[:, 0].float().cpu().numpy()
    else:
        order = similar_sizes_first(split, max_history)
        for batch, valid, positions in impression_batches(split, max_history, batch_impressions, order):
            scores[positions] = logits(batch)[valid.to(device)].float().cpu().numpy()
    model.train(was_training)
    return scores
