"""Fast evaluation: every news item encoded once, then every impression scored from those vectors, batched."""

from __future__ import annotations

import numpy as np
import torch

from newsrec_dist.models.recommender import Recommender
from newsrec_dist.train.samples import SplitArrays, impression_batches

NEWS_CHUNK = 4096


@torch.no_grad()
def news_vectors(model: Recommender, rows: int, device: torch.device) -> torch.Tensor:
    """[rows, dim] vector of every news row (row 0: the padding vector)."""
    index = torch.arange(rows, device=device)
    return torch.cat([model.encode_news(index[start:start + NEWS_CHUNK]) for start in range(0, rows, NEWS_CHUNK)])


@torch.no_grad()
def score_split(model: Recommender, split: SplitArrays, news_rows: int, max_history: int, batch_impressions: int,
                device: torch.device) -> np.ndarray:
    """Scores aligned with ``split.impressions.candidates`` (higher = more likely clicked)."""
    was_training = model.training
    model.eval()
    vectors = news_vectors(model, news_rows, device)
    parts = []
    for batch, valid in impression_batches(split, max_history, batch_impressions):
        history, candidates = batch["history"].to(device), batch["candidates"].to(device)
        logits = model.score_vectors(vectors[history], history > 0, vectors[candidates], batch["users"].to(device))
        parts.append(logits[valid.to(device)].float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
