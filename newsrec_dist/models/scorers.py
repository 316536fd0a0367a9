"""Scorers: (user [B, D] or [B, C, D], candidates [B, C, D]) → logits [B, C].

``dot`` is the matching scorer (softmax over 1 positive + k negatives); ``mlp``, ``dcn`` and ``pnn`` are ranking
scorers trained with binary cross-entropy.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from newsrec_dist.config import ScorerConfig
from newsrec_dist.models.layers import mlp

RANKING_SCORERS = ("mlp", "dcn", "pnn")


def _per_candidate(user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    return user if user.dim() == 3 else user.unsqueeze(1).expand_as(candidates)


class DotScorer(nn.Module):
    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return (_per_candidate(user, candidates) * candidates).sum(-1)


class MLPScorer(nn.Module):
    """MLP over [u, c, u ⊙ c] (BST, DIN)."""

    def __init__(self, dim: int, cfg: ScorerConfig, dropout: float) -> None:
        super().__init__()
        self.net = mlp(3 * dim, cfg.hidden, 1, dropout)

    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        u = _per_candidate(user, candidates)
        return self.net(torch.cat([u, candidates, u * candidates], dim=-1)).squeeze(-1)


class CrossNetwork(nn.Module):
    """DCN's cross layers: x_{l+1} = x_0 (x_l · w_l) + b_l + x_l."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(dim) / dim ** 0.5) for _ in range(layers))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(dim)) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for weight, bias in zip(self.weights, self.biases):
            x = x0 * (x @ weight).unsqueeze(-1) + bias + x
        return x


class DCNScorer(nn.Module):
    """Cross network and deep network side by side over x_0 = [u, c, u ⊙ c], then a linear layer.

    The element-wise product joins the input as in the MLP scorer: a rank-one cross layer alone fits a
    user-candidate match slowly.
    """

    def __init__(self, dim: int, cfg: ScorerConfig, dropout: float) -> None:
        super().__init__()
        self.cross = CrossNetwork(3 * dim, cfg.cross_layers)
        self.deep = mlp(3 * dim, cfg.hidden, None, dropout)
        self.out = nn.Linear(3 * dim + (cfg.hidden[-1] if cfg.hidden else 3 * dim), 1)

    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        u = _per_candidate(user, candidates)
        x0 = torch.cat([u, candidates, u * candidates], dim=-1)
        return self.out(torch.cat([self.cross(x0), self.deep(x0)], dim=-1)).squeeze(-1)


class PNNScorer(nn.Module):
    """Inner-product PNN: u and c split into ``fields`` fields each; pairwise inner products + the fields → MLP."""

    def __init__(self, dim: int, cfg: ScorerConfig, dropout: float) -> None:
        super().__init__()
        if dim % cfg.fields:
            raise ValueError(f"news.dim {dim} is not divisible by scorer.fields {cfg.fields}")
        self.fields = cfg.fields
        pairs = list(itertools.combinations(range(2 * cfg.fields), 2))
        self.register_buffer("left", torch.tensor([a for a, _ in pairs]), persistent=False)
        self.register_buffer("right", torch.tensor([b for _, b in pairs]), persistent=False)
        self.net = mlp(2 * dim + len(pairs), cfg.hidden, 1, dropout)

    def forward(self, user: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        linear = torch.cat([_per_candidate(user, candidates), candidates], dim=-1)
        fields = linear.reshape(*linear.shape[:-1], 2 * self.fields, -1)
        products = (fields[..., self.left, :] * fields[..., self.right, :]).sum(-1)
        return self.net(torch.cat([linear, products], dim=-1)).squeeze(-1)


def build_scorer(dim: int, cfg: ScorerConfig, dropout: float) -> nn.Module:
    if cfg.kind == "dot":
        return DotScorer()
    if cfg.kind == "mlp":
        return MLPScorer(dim, cfg, dropout)
    if cfg.kind == "dcn":
        return DCNScorer(dim, cfg, dropout)
    if cfg.kind == "pnn":
        return PNNScorer(dim, cfg, dropout)
    raise ValueError(f"scorer.kind must be dot, mlp, dcn or pnn, got {cfg.kind!r}")
