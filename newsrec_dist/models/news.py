"""News encoders: views of a news item (text, PLM, category, precomputed vectors) combined into one vector.

Every feature lives in a tensor indexed by news row (row 0: padding and news missing from the catalog), held
as a non-persistent buffer: a batch encodes news by gathering rows, never by processing text.
"""

from __future__ import annotations

import torch
from torch import nn

from newsrec_dist.config import NewsEncoderConfig, NewsViewConfig
from newsrec_dist.models.inputs import NewsInputs
from newsrec_dist.models.layers import AdditiveAttention, SelfAttention


class TextView(nn.Module):
    """Word embeddings → CNN or multi-head self-attention → additive attention (NAML/LSTUR, NRMS)."""

    def __init__(self, tokens: torch.Tensor, embedding: nn.Embedding, kind: str, cfg: NewsEncoderConfig) -> None:
        super().__init__()
        self.register_buffer("tokens", tokens, persistent=False)
        self.embedding, self.dropout = embedding, nn.Dropout(cfg.dropout)
        if kind == "cnn":
            self.context: nn.Module = nn.Conv1d(embedding.embedding_dim, cfg.dim, cfg.cnn_window,
                                                padding=cfg.cnn_window // 2)
        elif kind == "attention":
            self.project = nn.Linear(embedding.embedding_dim, cfg.dim)
            self.context = SelfAttention(cfg.dim, cfg.heads, cfg.dropout)
        else:
            raise ValueError(f"text_encoder must be cnn or attention, got {kind!r}")
        self.kind = kind
        self.pool = AdditiveAttention(cfg.dim, cfg.attention_dim)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens[rows].long()
        mask = tokens > 0
        words = self.dropout(self.embedding(tokens))
        if self.kind == "cnn":
            context = torch.relu(self.context(words.transpose(1, 2))).transpose(1, 2)
        else:
            context = self.context(self.project(words), mask)
        return self.pool(self.dropout(context), mask)


class PLMView(nn.Module):
    """Cached hidden states of the frozen PLM layers → trainable top layers → additive attention → projection."""

    def __init__(self, states: torch.Tensor, mask: torch.Tensor, top: nn.Module, cfg: NewsEncoderConfig) -> None:
        super().__init__()
        self.register_buffer("states", states, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self.top, self.dropout = top, nn.Dropout(cfg.dropout)
        self.top_lr = cfg.plm.lr  # the optimizer's rate for ``top`` (train.module.parameter_groups)
        self.pool = AdditiveAttention(states.shape[-1], cfg.attention_dim)
        self.project = nn.Linear(states.shape[-1], cfg.dim)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        mask = self.mask[rows]
        hidden = self.top(self.states[rows].float(), mask)
        return self.project(self.pool(self.dropout(hidden), mask))


class CategoryView(nn.Module):
    def __init__(self, ids: torch.Tensor, cfg: NewsEncoderConfig) -> None:
        super().__init__()
        self.register_buffer("ids", ids, persistent=False)
        self.embedding = nn.Embedding(int(ids.max()) + 1, cfg.category_dim, padding_idx=0)
        self.project = nn.Sequential(nn.Linear(cfg.category_dim, cfg.dim), nn.ReLU())

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.project(self.embedding(self.ids[rows]))


class IdView(nn.Module):
    """A learned vector per news item (the item-ID feature of CTR models): lets a model learn item popularity."""

    def __init__(self, rows: int, cfg: NewsEncoderConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(rows, cfg.dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.01)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.embedding(rows)


class VectorsView(nn.Module):
    """Precomputed vectors (LLM, Node2Vec, GloVe) fused into one news vector (LECOP).

    Each source is mapped to the news vector size by its own linear layer and layer-normalised, so no source
    dominates by its scale; a news item a source has no vector for (an all-zero row: a news never read before the
    graphs' cut, or without known keywords) gets that source's learned ``unseen`` vector instead. Fusion: ``add``
    (the paper's direct addition), ``concat`` (+ linear) or ``attention`` (additive attention over the sources).
    """

    def __init__(self, sources: list[torch.Tensor], fusion: str, cfg: NewsEncoderConfig) -> None:
        super().__init__()
        if fusion not in ("add", "concat", "attention"):
            raise ValueError(f"vectors view fusion must be add, concat or attention, got {fusion!r}")
        for index, matrix in enumerate(sources):
            self.register_buffer(f"source{index}", matrix, persistent=False)
            self.register_buffer(f"found{index}", matrix.abs().sum(1) > 0, persistent=False)
        self.projections = nn.ModuleList(nn.Sequential(nn.Linear(matrix.shape[1], cfg.dim), nn.LayerNorm(cfg.dim))
                                         for matrix in sources)
        self.unseen = nn.Parameter(torch.zeros(len(sources), cfg.dim))
        self.fusion = fusion
        self.mix: nn.Module | None = None
        if fusion == "concat":
            self.mix = nn.Linear(cfg.dim * len(sources), cfg.dim)
        elif fusion == "attention":
            self.mix = AdditiveAttention(cfg.dim, cfg.attention_dim)

    def source_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """[*rows, sources, dim]: each source projected and normalised, or its unseen vector."""
        vectors = []
        for index, project in enumerate(self.projections):
            found = getattr(self, f"found{index}")[rows].unsqueeze(-1)
            vectors.append(torch.where(found, project(getattr(self, f"source{index}")[rows]), self.unseen[index]))
        return torch.stack(vectors, dim=-2)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        vectors = self.source_vectors(rows)
        if self.fusion == "add":
            return vectors.sum(-2)
        if self.fusion == "concat":
            return self.mix(vectors.flatten(-2))
        return self.mix(vectors, torch.ones(vectors.shape[:-1], dtype=torch.bool, device=vectors.device))


class NewsEncoder(nn.Module):
    """Views combined by additive attention (NAML), sum, or concatenation + linear; rows [n] → [n, dim]."""

    def __init__(self, cfg: NewsEncoderConfig, inputs: NewsInputs) -> None:
        super().__init__()
        self.dim, self.combine = cfg.dim, cfg.combine
        embedding = None
        if inputs.word_vectors is not None:
            embedding = nn.Embedding.from_pretrained(inputs.word_vectors.clone(), freeze=False, padding_idx=0)
        self.word_embedding = embedding
        self.views = nn.ModuleList(self._view(view, cfg, inputs) for view in cfg.views)
        if cfg.combine not in ("attention", "sum", "concat"):
            raise ValueError(f"news.combine must be attention, sum or concat, got {cfg.combine!r}")
        self.mix: nn.Module | None = None  # one view needs no mixing (and DDP rejects unused parameters)
        if len(cfg.views) > 1 and cfg.combine == "attention":
            self.mix = AdditiveAttention(cfg.dim, cfg.attention_dim)
        elif len(cfg.views) > 1 and cfg.combine == "concat":
            self.mix = nn.Linear(cfg.dim * len(cfg.views), cfg.dim)

    def _view(self, view: NewsViewConfig, cfg: NewsEncoderConfig, inputs: NewsInputs) -> nn.Module:
        if view.kind == "text":
            assert self.word_embedding is not None
            return TextView(inputs.words[view.column], self.word_embedding, view.text_encoder, cfg)
        if view.kind == "plm":
            states, mask = inputs.plm_hidden[view.column]
            assert inputs.plm_top is not None
            return PLMView(states, mask, inputs.plm_top, cfg)
        if view.kind == "category":
            return CategoryView(inputs.categories[view.column], cfg)
        if view.kind == "vectors":
            return VectorsView([inputs.vectors[source] for source in view.sources], view.fusion, cfg)
        if view.kind == "id":
            return IdView(inputs.rows, cfg)
        raise ValueError(f"news view kind must be text, plm, category, vectors or id, got {view.kind!r}")

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        outputs = [view(rows) for view in self.views]
        if len(outputs) == 1:
            return outputs[0]
        if self.combine == "sum":
            return torch.stack(outputs).sum(0)
        if self.combine == "concat":
            return self.mix(torch.cat(outputs, dim=-1))
        stacked = torch.stack(outputs, dim=1)
        return self.mix(stacked, torch.ones(stacked.shape[:2], dtype=torch.bool, device=stacked.device))
