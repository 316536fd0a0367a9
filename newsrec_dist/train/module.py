"""One LightningModule for every recommender: softmax over 1 + k candidates (matching) or BCE (ranking)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

from newsrec_dist.config import TrainConfig
from newsrec_dist.models.recommender import Recommender

RNG_KEY = "newsrec_torch_rng"


def recommendation_loss(logits: torch.Tensor, ranking: bool) -> torch.Tensor:
    """Logits [B, 1 + k] with the clicked news first."""
    if ranking:
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class RecommenderModule(pl.LightningModule):
    def __init__(self, model: Recommender, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["history"], batch["candidates"], batch["users"])
        loss = recommendation_loss(logits, self.model.ranking)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    # Dropout and LSTUR's user masking draw from torch's RNG: a resumed run continues the same stream.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:
            torch.set_rng_state(checkpoint[RNG_KEY])
