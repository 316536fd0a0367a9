"""``Recommender = NewsEncoder × UserEncoder × Scorer`` (+ GENRE's interest fusion), built from ``ModelConfig``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from newsrec_dist.config import ModelConfig
from newsrec_dist.models.layers import masked_mean, mlp
from newsrec_dist.models.inputs import NewsInputs, UserInputs
from newsrec_dist.models.news import NewsEncoder
from newsrec_dist.models.scorers import RANKING_SCORERS, build_scorer
from newsrec_dist.models.user import (
    AttentionUser, BSTUser, DINUser, LSTURUser, MeanUser, NRMSUser, UserEncoder,
)


class InterestFusion(nn.Module):
    """GENRE MIND-UP: mean topic and mean region embeddings, concatenated with the user vector, through an MLP."""

    def __init__(self, dim: int, interest_dim: int, users: UserInputs) -> None:
        super().__init__()
        assert users.topics is not None and users.regions is not None
        self.register_buffer("topics", users.topics, persistent=False)
        self.register_buffer("regions", users.regions, persistent=False)
        self.topic_embedding = nn.Embedding(int(users.topics.max()) + 1, interest_dim, padding_idx=0)
        self.region_embedding = nn.Embedding(int(users.regions.max()) + 1, interest_dim, padding_idx=0)
        self.fuse = mlp(dim + 2 * interest_dim, [dim], dim)

    def forward(self, user: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        topics, regions = self.topics[users], self.regions[users]
        interest = torch.cat([masked_mean(self.topic_embedding(topics), topics > 0),
                              masked_mean(self.region_embedding(regions), regions > 0)], dim=-1)
        if user.dim() == 3:
            interest = interest.unsqueeze(1).expand(-1, user.shape[1], -1)
        return self.fuse(torch.cat([user, interest], dim=-1))


def build_user_encoder(cfg: ModelConfig, users: UserInputs, max_history: int) -> UserEncoder:
    dim, kind = cfg.news.dim, cfg.user.kind
    builders = {
        "nrms": lambda: NRMSUser(dim, cfg.user, cfg.news.attention_dim, cfg.news.dropout),
        "attention": lambda: AttentionUser(dim, cfg.news.attention_dim),
        "mean": MeanUser,
        "lstur": lambda: LSTURUser(dim, users, cfg.user),
        "din": lambda: DINUser(dim, cfg.user),
        "bst": lambda: BSTUser(dim, max_history, cfg.user, cfg.news.dropout),
    }
    if kind not in builders:
        raise ValueError(f"user.kind must be one of {sorted(builders)}, got {kind!r}")
    return builders[kind]()


def impression_loss(logits: torch.Tensor, ranking: bool) -> torch.Tensor:
    """Logits [B, 1 + k] with the clicked news first: softmax over them (matching) or BCE each (ranking)."""
    if ranking:
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class Recommender(nn.Module):
    def __init__(self, cfg: ModelConfig, news: NewsInputs, users: UserInputs, max_history: int) -> None:
        super().__init__()
        self.news_encoder = NewsEncoder(cfg.news, news)
        self.user_encoder = build_user_encoder(cfg, users, max_history)
        self.interest = InterestFusion(cfg.news.dim, cfg.interest.dim, users) if cfg.interest.enabled else None
        self.scorer = build_scorer(cfg.news.dim, cfg.scorer, cfg.news.dropout)
        self.ranking = cfg.scorer.kind in RANKING_SCORERS

    def encode_news(self, rows: torch.Tensor) -> torch.Tensor:
        return self.news_encoder(rows)

    def score_vectors(self, history: torch.Tensor, history_mask: torch.Tensor, candidates: torch.Tensor,
                      users: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] from news vectors: history [B, H, D] (mask [B, H]), candidates [B, C, D]."""
        user = self.user_encoder(history, history_mask, candidates, users)
        if self.interest is not None:
            user = self.interest(user, users)
        return self.scorer(user, candidates)

    def forward(self, history_rows: torch.Tensor, candidate_rows: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Logits [B, C]; each distinct news item of the batch is encoded once."""
        unique, inverse = torch.unique(torch.cat([history_rows, candidate_rows], dim=1), return_inverse=True)
        vectors = self.encode_news(unique)[inverse]
        length = history_rows.shape[1]
        return self.score_vectors(vectors[:, :length], history_rows > 0, vectors[:, length:], users)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return impression_loss(self(batch["history"], batch["candidates"], batch["users"]), self.ranking)
