"""Layers every recommender shares: masked softmax/mean, additive attention, MLPs."""

from __future__ import annotations

import torch
from torch import nn


def nonempty(mask: torch.Tensor) -> torch.Tensor:
    """A mask whose all-false rows become all-true: an empty history or title attends to its (zero) padding."""
    return mask | ~mask.any(dim=-1, keepdim=True)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~nonempty(mask), torch.finfo(scores.dtype).min), dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of ``values`` [..., L, D] where ``mask`` [..., L] holds; zeros for empty rows."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(-2) / weights.sum(-2).clamp(min=1.0)


class AdditiveAttention(nn.Module):
    """Attention pooling with a learned query (NRMS, NAML, LSTUR): [..., L, D] → [..., D]."""

    def __init__(self, dim: int, query_dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(dim, query_dim), nn.Tanh(), nn.Linear(query_dim, 1, bias=False))

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = masked_softmax(self.project(values).squeeze(-1), mask)
        return (weights.unsqueeze(-1) * values).sum(-2)


def mlp(in_dim: int, hidden: list[int], out_dim: int | None, dropout: float = 0.0) -> nn.Sequential:
    """Linear-ReLU(-dropout) stack; ``out_dim`` adds a final linear layer without activation."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    if out_dim is not None:
        layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a padding mask (NRMS's word and news levels), residual-free as in NRMS."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dimension {dim} is not divisible by {heads} heads")
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shape = values.shape
        flat, flat_mask = values.reshape(-1, *shape[-2:]), nonempty(mask.reshape(-1, shape[-2]))
        out, _ = self.attention(flat, flat, flat, key_padding_mask=~flat_mask, need_weights=False)
        return out.reshape(shape)
