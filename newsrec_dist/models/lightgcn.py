"""LightGCN (torch-geometric) on the user-news click graph, and PFR's item profiles.

Nodes are users (rows ``0..n_users-1``) then news (``n_users + code``). Plain LightGCN: random layer-0
embeddings, BPR with L2 on the batch's layer-0 rows. PFR (``graph.profile.vectors`` set), given each news
item's profile embedding p_i (an LLM-written profile through the text encoder), scores every news item with

    v_i = z_i + W p_i        (z_i: the propagated LightGCN vector, 0 for news without a training click)

trained end to end by BPR, so the text map W meets the ranking loss, and cold news (z_i = 0, scored by W p_i
alone) are sampled as negatives too (``graph.negatives: all``) and learn to rank below what users click.
Optional: **init**, layer-0 news embeddings start as the top ``embedding_dim`` principal components of the
profiles, scaled to ``init_std``; **align**, the pull ``align_weight`` · mean ||z_i - W p_i||² over a batch's warm
news, toward the text.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LightGCN

from newsrec_dist.config import GraphCFConfig


def profile_components(profiles: torch.Tensor, dim: int, std: float) -> torch.Tensor:
    """[items, dim] projections of the centred profiles on their top principal directions, scaled to ``std``."""
    centred = profiles - profiles.mean(dim=0, keepdim=True)
    q = min(dim, *centred.shape)
    _, _, directions = torch.pca_lowrank(centred, q=q, center=False)
    projected = centred @ directions[:, :q]
    out = torch.zeros(len(profiles), dim)
    out[:, :q] = projected * (std / projected.std().clamp_min(1e-12))
    return out


class GraphRecommender(nn.Module):
    """Scores users against every news item; ``loss`` is BPR (+ PFR's alignment) on a batch of clicks."""

    def __init__(self, cfg: GraphCFConfig, n_users: int, n_items: int, edges: torch.Tensor, warm: torch.Tensor,
                 profiles: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg, self.n_users, self.n_items = cfg, n_users, n_items
        # the normalisation is computed once here, not by every layer on every step
        self.gcn = LightGCN(n_users + n_items, cfg.embedding_dim, cfg.layers, normalize=False)
        nn.init.normal_(self.gcn.embedding.weight, std=cfg.init_std)
        user_nodes, item_nodes = edges[0], edges[1] + n_users
        graph = torch.stack([torch.cat([user_nodes, item_nodes]), torch.cat([item_nodes, user_nodes])])
        index, weight = gcn_norm(graph, num_nodes=n_users + n_items, add_self_loops=False)
        self.register_buffer("edge_index", index, persistent=False)
        self.register_buffer("edge_weight", weight, persistent=False)
        self.register_buffer("warm", warm, persistent=False)  # news with a training click
        self.project: nn.Linear | None = None
        if profiles is not None:
            self.register_buffer("profiles", profiles, persistent=False)
            self.project = nn.Linear(profiles.shape[1], cfg.embedding_dim, bias=False)
            if cfg.profile.init:
                with torch.no_grad():
                    self.gcn.embedding.weight[n_users:] = profile_components(profiles, cfg.embedding_dim, cfg.init_std)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagated user vectors and every news item's scoring vector."""
        z = self.gcn.get_embedding(self.edge_index, self.edge_weight)
        return z[: self.n_users], self.item_vectors(z[self.n_users:], torch.arange(self.n_items, device=z.device))

    def item_vectors(self, z_items: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scoring vectors of news ``items`` from their propagated rows ``z_items``: PFR's z_i + W p_i."""
        if self.project is None:
            return z_items
        return torch.where(self.warm[items, None], z_items, 0.0) + self.project(self.profiles[items])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """BPR over (user, clicked news, sampled news) triples, L2 on their layer-0 rows, and PFR's pull."""
        z = self.gcn.get_embedding(self.edge_index, self.edge_weight)
        users, positives, negatives = batch["users"], batch["positives"], batch["negatives"]
        user_vectors = z[users]
        positive = (user_vectors * self.item_vectors(z[self.n_users + positives], positives)).sum(-1)
        negative = (user_vectors * self.item_vectors(z[self.n_users + negatives], negatives)).sum(-1)
        nodes = torch.cat([users, self.n_users + positives, self.n_users + negatives])
        loss = self.gcn.recommendation_loss(positive, negative, node_id=nodes, lambda_reg=self.cfg.reg_weight)
        if self.project is not None and self.cfg.profile.align_weight > 0:
            items = torch.unique(torch.cat([positives, negatives]))
            items = items[self.warm[items]]  # a cold item's z is 0 by definition: nothing to align
            gap = z[self.n_users + items] - self.project(self.profiles[items])
            loss = loss + self.cfg.profile.align_weight * gap.pow(2).sum(-1).mean()
        return loss

    def score_chunk(self, users: torch.Tensor, items: torch.Tensor, start: int, count: int,
                    columns: torch.Tensor | None = None) -> torch.Tensor:
        """[count, items] scores of users start..start+count-1 (``columns``: only these news)."""
        chosen = items if columns is None else items[columns]
        return users[start: start + count] @ chosen.T
