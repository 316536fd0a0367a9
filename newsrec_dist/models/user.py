"""User encoders: clicked-news vectors [B, H, D] (valid first, padding after) → a user vector.

Candidate-independent encoders return [B, D]; target-aware ones (DIN, BST) return one vector per candidate
[B, C, D]. Scorers accept both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from newsrec_dist.config import UserEncoderConfig
from newsrec_dist.models.inputs import UserInputs
from newsrec_dist.models.layers import AdditiveAttention, SelfAttention, masked_mean, mlp, nonempty


class UserEncoder(nn.Module):
    """Base of the user encoders: ``forward(history, mask, candidates, users)``; ``target_aware`` ones use candidates."""

    target_aware = False


class NRMSUser(UserEncoder):
    """Multi-head self-attention over clicked news, then additive attention."""

    def __init__(self, dim: int, cfg: UserEncoderConfig, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.context = SelfAttention(dim, cfg.heads, dropout)
        self.pool, self.dropout = AdditiveAttention(dim, attention_dim), nn.Dropout(dropout)

    def forward(self, history, mask, candidates, users):  # noqa: ANN001, ANN201 - UserEncoder.forward
        return self.pool(self.dropout(self.context(history, mask)), mask)


class AttentionUser(UserEncoder):
    """Additive attention pooling of clicked news (NAML)."""

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.pool = AdditiveAttention(dim, attention_dim)

    def forward(self, history, mask, candidates, users):  # noqa: ANN001, ANN201
        return self.pool(history, mask)


class MeanUser(UserEncoder):
    def forward(self, history, mask, candidates, users):  # noqa: ANN001, ANN201
        return masked_mean(history, mask)


class LSTURUser(UserEncoder):
    """Long-term user embedding + GRU short-term interest; ``ini`` starts the GRU from it, ``con`` concatenates.

    Users unseen in training share embedding 0; a ``mask_prob`` share of training samples also uses it (LSTUR's
    masking), so the model learns to serve new users.
    """

    def __init__(self, dim: int, users: UserInputs, cfg: UserEncoderConfig) -> None:
        super().__init__()
        assert users.trained is not None
        self.register_buffer("trained", users.trained, persistent=False)
        if cfg.lstur_mode not in ("ini", "con"):
            raise ValueError(f"user.lstur_mode must be ini or con, got {cfg.lstur_mode!r}")
        self.mode, self.mask_prob = cfg.lstur_mode, cfg.lstur_mask_prob
        self.long_term = nn.Embedding(users.rows, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.merge = nn.Linear(2 * dim, dim) if self.mode == "con" else None

    def forward(self, history, mask, candidates, users):  # noqa: ANN001, ANN201
        users = torch.where(self.trained[users], users, 0)
        if self.training and self.mask_prob > 0:
            users = torch.where(torch.rand(users.shape, device=users.device) < self.mask_prob, 0, users)
        long_term = self.long_term(users)
        lengths = nonempty(mask).sum(-1).clamp(min=1).cpu()
        packed = pack_padded_sequence(history, lengths, batch_first=True, enforce_sorted=False)
        initial = long_term.unsqueeze(0).contiguous() if self.mode == "ini" else None
        _, last = self.gru(packed, initial)
        if self.merge is None:
            return last[0]
        return self.merge(torch.cat([last[0], long_term], dim=-1))


class DINUser(UserEncoder):
    """Target attention: an MLP weighs each clicked news against the candidate (unnormalised weights, as DIN)."""

    target_aware = True

    def __init__(self, dim: int, cfg: UserEncoderConfig) -> None:
        super().__init__()
        self.activation = mlp(4 * dim, cfg.din_hidden, 1)

    def forward(self, history, mask, candidates, users):  # noqa: ANN001, ANN201
        # DIN's first layer over [h, c, h - c, h * c], split by parts: W·[h; c; h-c; h*c] + b =
        # (W_h + W_d)·h + (W_c - W_d)·c + b + W_p·(h * c), so only h * c is computed per (candidate, click) pair
        # and no [B, C, H, 4D] input is built (the same function, ~3x fewer operations per pair)
        first = self.activation[0]
        w_h, w_c, w_d, w_p = first.weight.split(history.shape[-1], dim=1)
        per_click = F.linear(history, w_h + w_d).unsqueeze(1)  # [B, 1, H, hidden]
        per_candidate = F.linear(candidates, w_c - w_d, first.bias).unsqueeze(2)  # [B, C, 1, hidden]
        per_pair = F.linear(history.unsqueeze(1) * candidates.unsqueeze(2), w_p)  # [B, C, H, hidden]
        weights = self.activation[1:](per_pair + per_click + per_candidate).squeeze(-1)
        weights = weights * mask.unsqueeze(1).to(weights.dtype)
        return weights @ history  # [B, C, H] x [B, H, D]: the weighted sum of clicked news per candidate


class BSTUser(UserEncoder):
    """Transformer over [candidate; clicked news] with position embeddings (the candidate at 0, so padding after
    the history moves nothing); the candidate's output and the mean history output, merged, form the user vector."""

    target_aware = True

    def __init__(self, dim: int, max_history: int, cfg: UserEncoderConfig, dropout: float) -> None:
        super().__init__()
        self.positions = nn.Embedding(max_history + 1, dim)
        nn.init.normal_(self.positions.weight, std=0.02)  # N(0, 1) would drown the news vectors
        layer = nn.TransformerEncoderLayer(dim, cfg.heads, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.merge = nn.Linear(2 * dim, dim)

    def forward(self, history, mask, candidates, users):  # noqa: ANN001, ANN201
        batch, count = candidates.shape[:2]
        length = history.shape[1]
        h = history.unsqueeze(1).expand(-1, count, -1, -1)
        sequence = torch.cat([candidates.unsqueeze(2), h], dim=2).reshape(batch * count, length + 1, -1)
        sequence = sequence + self.positions.weight[: length + 1]
        valid = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        valid = valid.unsqueeze(1).expand(-1, count, -1).reshape(batch * count, length + 1)
        out = self.transformer(sequence, src_key_padding_mask=~valid)
        summary = torch.cat([out[:, 0], masked_mean(out[:, 1:], valid[:, 1:])], dim=-1)
        return self.merge(summary).reshape(batch, count, -1)
