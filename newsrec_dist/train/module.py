"""One LightningModule for every recommender: the model's own ``loss(batch)`` (impression softmax/BCE, or
LightGCN's BPR), Adam, and torch's RNG carried through checkpoints."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from newsrec_dist.config import TrainConfig
from newsrec_dist.models.news import PLMView

RNG_KEY = "newsrec_torch_rng"


class RecommenderModule(pl.LightningModule):
    def __init__(self, model: torch.nn.Module, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["users"]))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameter_groups(self.model, self.cfg.lr), weight_decay=self.cfg.weight_decay)

    # Dropout and LSTUR's user masking draw from torch's RNG: a resumed run continues the same stream.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:
            torch.set_rng_state(checkpoint[RNG_KEY])


def parameter_groups(model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
    """Adam's groups: a PLM view's pretrained top layers at their own (lower) rate, every other parameter at ``lr``."""
    pretrained = [(view.top_lr, list(view.top.parameters())) for view in model.modules() if isinstance(view, PLMView)]
    taken = {id(parameter) for _, parameters in pretrained for parameter in parameters}
    rest = [parameter for parameter in model.parameters() if id(parameter) not in taken]
    return [{"params": rest, "lr": lr}, *({"params": parameters, "lr": rate} for rate, parameters in pretrained if parameters)]
