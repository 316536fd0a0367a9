"""Row-indexed model inputs, built once per run by ``train.features`` (row 0: padding / unknown)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class NewsInputs:
    """Row-indexed news features, built once by ``train.features`` (row 0 is padding)."""

    rows: int
    words: dict[str, torch.Tensor] = field(default_factory=dict)  # field → [rows, length] word ids (0 = pad)
    word_vectors: torch.Tensor | None = None  # [vocabulary, word_dim] initial word embeddings
    categories: dict[str, torch.Tensor] = field(default_factory=dict)  # field → [rows] ids (0 = pad)
    plm_hidden: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # field → (states, mask)
    plm_top: nn.Module | None = None  # the trainable top PLM layers (see train.features)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # source → [rows, dim]


@dataclass
class UserInputs:
    """Row-indexed user features (row 0: users outside the run's vocabulary of train and eval users)."""

    rows: int
    trained: torch.Tensor | None = None  # [rows] bool: the user has training impressions (LSTUR's long-term vector)
    topics: torch.Tensor | None = None  # [rows, max_topics] profile topic ids (0 = pad), GENRE MIND-UP
    regions: torch.Tensor | None = None  # [rows, max_regions]
