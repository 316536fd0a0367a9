"""Sentence vectors from token states: mean for encoders, last token (an appended EOS) for decoder LLMs."""

from __future__ import annotations

import torch

POOLINGS = ("mean", "last", "cls")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, seq, dim) token states → (batch, dim); padding on either side is handled by the mask."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if mode == "last":
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(len(hidden), device=hidden.device), last]
    if mode == "cls":
        return hidden[:, 0]
    raise ValueError(f"encoder pooling must be one of {POOLINGS}, got {mode!r}")
