"""``newsrec encoder finetune``: LoRA contrastive fine-tuning of the news encoder with the DeepSpeed engine.

Title → abstract InfoNCE with in-batch negatives (LECOP), optional hard negatives, large effective
batches through gradient caching (``contrastive.py``). The same code runs as one CPU process here
(gloo) and under ``deepspeed``/``torchrun``/``srun`` on GPU nodes; the ZeRO stage comes from
``conf/deepspeed/<name>.json``. DeepSpeed checkpoints (trainable parameters and optimiser state only)
are written every ``checkpoint_every`` steps; a killed run resumes from the last one, and because
each step draws its batch and dropout from ``seed + step`` the result equals an uninterrupted run.
DeepSpeed unpickles its checkpoints with ``weights_only=False``; resume reads them weights-only instead (the
four DeepSpeed classes they hold allowed), and one that cannot be read so restarts the run from step 0.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from newsrec_dist.config import EncoderConfig, FinetuneConfig, conf_dir
from newsrec_dist.checkpoints import load_weights, weights_only_loads
from newsrec_dist.embed.node2vec import resolve_device
from newsrec_dist.encoder.contrastive import contrastive_step, info_nce
from newsrec_dist.encoder.distributed import process_group
from newsrec_dist.encoder.models import TextEncoder, encode_texts, load_backbone, model_dir, tokenize, with_lora
from newsrec_dist.encoder.pairs import Pairs, load_pairs
from newsrec_dist.encoder.retrieval import recall_at
from newsrec_dist.io import Manifest, ResumableDir, artifact_fingerprint, is_up_to_date, read_manifest, sha256_file
from newsrec_dist.progress import ProgressFactory, no_progress

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
CHECKPOINT_DIR = "deepspeed"
SUMMARY_FILE = "summary.json"
LATEST = "latest"  # DeepSpeed's file naming the newest complete tag
TAG_PATTERN = re.compile(r"step-\d+")  # the tags _checkpoint writes


def deepspeed_json(name: str) -> dict[str, Any]:
    """A DeepSpeed config by name (``conf/deepspeed/<name>.json``) or path."""
    path = Path(name) if name.endswith(".json") else conf_dir() / "deepspeed" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"DeepSpeed config {path} not found (encoder.finetune.deepspeed: zero0, zero2, "
                                f"zero3 or a .json path)")
    return json.loads(path.read_text())


def engine_config(base: dict[str, Any], ft: FinetuneConfig, towers: int, world: int, bf16: bool) -> dict[str, Any]:
    """Fill the batch bookkeeping: every chunk's backward is one DeepSpeed micro-step.

    ``contrastive_step`` calls ``backward`` once per chunk of every tower, so a step is
    ``towers × ceil(local rows / chunk)`` micro-steps; DeepSpeed reduces and steps the optimiser after
    the last one. Its sample counters therefore count tower rows, not pairs.
    """
    local_rows = ft.batch_size // world
    micro_rows = min(ft.chunk_size, local_rows)
    micro_steps = towers * math.ceil(local_rows / micro_rows)
    config = {**base, "train_micro_batch_size_per_gpu": micro_rows, "gradient_accumulation_steps": micro_steps,
              "train_batch_size": micro_rows * micro_steps * world}
    if config.get("bf16", {}).get("enabled") == "auto":
        config["bf16"] = {**config["bf16"], "enabled": bf16}
    return config


def batch_rows(n_pairs: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Pair indices of global step ``step``: a fresh permutation per epoch (seed + epoch), last partial batch dropped."""
    steps_per_epoch = n_pairs // batch_size
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(n_pairs)
    return order[offset * batch_size:(offset + 1) * batch_size]


def training_identity(cfg: EncoderConfig, prepared_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    inputs = {"prepared": artifact_fingerprint(prepared_dir)}
    inputs.update({f"pairs:{file}": sha256_file(Path(file)) for file in cfg.finetune.pair_files})
    finetune = {key: value for key, value in vars(cfg.finetune).items() if key not in ("checkpoint_every",)}
    config = {"model": vars(cfg.model), "lora": vars(cfg.lora), "finetune": finetune}
    return inputs, config


def finished(cfg: EncoderConfig, prepared_dir: Path) -> dict[str, Any] | None:
    final = Path(cfg.output_dir)
    if is_up_to_date(final, "encoder-finetune", *training_identity(cfg, prepared_dir)):
        return dict(read_manifest(final)["extra"])
    return None


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _towers(tokenizer: Any, rows: Any, cfg: EncoderConfig, device: torch.device) -> list[dict[str, torch.Tensor]]:
    columns = ["query", "positive", *(["negative"] if "negative" in rows else [])]
    return [{key: value.to(device) for key, value in tokenize(tokenizer, rows[column].tolist(), cfg.model).items()}
            for column in columns]


def finetune(cfg: EncoderConfig, prepared_dir: Path, progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Train the LoRA adapter into ``cfg.output_dir``; a no-op when current, resumes a killed run."""
    done = finished(cfg, prepared_dir)
    if done is not None:
        return done
    with process_group(resolve_device(cfg.device)) as (rank, world):
        return _train(cfg, prepared_dir, rank, world, progress)


def _train(cfg: EncoderConfig, prepared_dir: Path, rank: int, world: int, progress: ProgressFactory) -> dict[str, Any]:
    import deepspeed

    ft = cfg.finetune
    pairs = load_pairs(prepared_dir, ft.holdout_fraction, list(ft.pair_files), ft.hard_negatives, ft.strict_pairs,
                       ft.seed)
    _check_batching(ft, world, len(pairs.train))
    inputs, config = training_identity(cfg, prepared_dir)
    final = Path(cfg.output_dir)
    work_path = final.parent / f".partial-{final.name}"
    if rank == 0:
        work = ResumableDir(final, Manifest(stage="encoder-finetune", inputs=inputs, config=config).fingerprint())
        check_checkpoint(work, work_path / CHECKPOINT_DIR)  # every rank's files, before any rank loads its own
        work.save({"started": True})
        base_dir = model_dir(cfg.model, Path(cfg.cache_dir))  # rank 0 writes the tiny model once
    _barrier()
    base_dir = model_dir(cfg.model, Path(cfg.cache_dir))
    tokenizer, backbone = load_backbone(base_dir, cfg.model)
    if ft.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(ft.seed)  # LoRA A's initialisation: same adapter start on every rank and every run
    peft_model = with_lora(backbone, cfg.lora)
    trainable = [param for param in peft_model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=ft.lr, weight_decay=ft.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, ft.warmup_steps)))
    towers = 3 if ft.hard_negatives != "none" else 2
    ds_config = engine_config(deepspeed_json(ft.deepspeed), ft, towers, world, cfg.model.dtype == "bfloat16")
    engine, _, _, _ = deepspeed.initialize(model=TextEncoder(peft_model, cfg.model.pooling), optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    start, losses = _resume(engine, work_path / CHECKPOINT_DIR)
    summary = _train_loop(engine, tokenizer, pairs, cfg, start, losses, rank, world, work_path,
                          progress if rank == 0 else no_progress)
    _save_adapter(engine, peft_model, work_path / ADAPTER_DIR, ds_config, rank)
    del engine
    if rank == 0:
        summary["retrieval"] = evaluate_retrieval(cfg, base_dir, work_path / ADAPTER_DIR, pairs)
        if ft.merge_adapter:
            merge_adapter(cfg, base_dir, work_path / ADAPTER_DIR, work_path / MERGED_DIR)
        shutil.rmtree(work_path / CHECKPOINT_DIR, ignore_errors=True)
        summary.update(pairs=pairs.sources, rejected=dict(pairs.rejected), heldout=len(pairs.heldout),
                       base_model=str(base_dir), zero_stage=ds_config["zero_optimization"]["stage"])
        (work_path / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        Manifest(stage="encoder-finetune", inputs=inputs, config=config, rows={"pairs": len(pairs.train)},
                 extra=summary).write(work_path)
        work.publish()
    _barrier()
    return finished(cfg, prepared_dir) or summary


def _check_batching(ft: FinetuneConfig, world: int, n_pairs: int) -> None:
    if ft.batch_size % world:
        raise ValueError(f"encoder.finetune.batch_size ({ft.batch_size}) must divide evenly over {world} ranks")
    if ft.batch_size > n_pairs:
        raise ValueError(f"encoder.finetune.batch_size ({ft.batch_size}) exceeds the {n_pairs} training pairs")


def deepspeed_globals() -> tuple[type, ...]:
    """The classes a DeepSpeed checkpoint pickles besides tensors and containers (ZeRO optimiser state; measured
    on 0.19 for ZeRO 0/2/3, fp32 and bf16): plain data, safe to rebuild. Imported late: DeepSpeed picks its
    accelerator at import, after :func:`process_group` has set the environment."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler


def _latest_tag(latest: Path) -> Path:
    """The tag directory ``latest`` names; it must be one we write (``step-N``, no path) and hold files."""
    tag = latest.read_text(encoding="utf-8").strip()
    if not TAG_PATTERN.fullmatch(tag):
        raise ValueError(f"names tag {tag[:40]!r}, not step-<n>")
    if not any((latest.parent / tag).glob("*.pt")):
        raise FileNotFoundError(f"its tag {tag} holds no checkpoint files")
    return latest.parent / tag


def check_checkpoint(work: ResumableDir, checkpoint_dir: Path) -> None:
    """Read every file of the checkpoint a resume would load, weights-only: a torn one, or one whose pickle
    holds anything but tensors, containers and :func:`deepspeed_globals`, warns naming it and empties the work
    directory (the run starts at step 0) before DeepSpeed opens anything."""
    latest = checkpoint_dir / LATEST
    if not latest.is_file():
        return
    tag = work.restore(latest, _latest_tag)
    if tag is None:
        return
    allowed = deepspeed_globals()
    for file in sorted(tag.glob("*.pt")):
        if work.restore(file, lambda path: load_weights(path, allowed=allowed)) is None:
            return


def _resume(engine: Any, checkpoint_dir: Path) -> tuple[int, list[float]]:
    """(step, losses) of the checkpoint, loaded into ``engine``; every ``torch.load`` DeepSpeed makes is
    weights-only here (a pickle that would run code raises instead)."""
    if not (checkpoint_dir / LATEST).is_file():
        return 0, []
    with weights_only_loads(deepspeed_globals()):
        _, client = engine.load_checkpoint(str(checkpoint_dir), load_module_strict=False)
    return int(client["step"]), list(client["losses"])


def _train_loop(engine: Any, tokenizer: Any, pairs: Pairs, cfg: EncoderConfig, start: int, losses: list[float],
                rank: int, world: int, work_path: Path, progress: ProgressFactory) -> dict[str, Any]:
    ft = cfg.finetune
    local = ft.batch_size // world

    def loss_fn(*embeddings: torch.Tensor) -> torch.Tensor:
        return info_nce(embeddings[0], embeddings[1], ft.temperature, embeddings[2] if len(embeddings) > 2 else None)

    def backward(surrogate: torch.Tensor) -> None:
        engine.backward(surrogate, scale_wrt_gas=False)  # cached gradients are already the full-batch ones
        engine.step()

    tokens, started = 0, time.perf_counter()
    engine.train()
    with progress(f"encoder finetune ({cfg.name})", ft.steps - start) as advance:
        for step in range(start, ft.steps):
            torch.manual_seed(ft.seed + step)
            rows = pairs.train.iloc[batch_rows(len(pairs.train), ft.batch_size, step, ft.seed)[rank * local:(rank + 1) * local]]
            towers = _towers(tokenizer, rows, cfg, engine.device)
            tokens += sum(int(tower["attention_mask"].sum()) for tower in towers)
            losses.append(contrastive_step(lambda batch: engine(**batch), towers, loss_fn, ft.chunk_size, backward))
            if (step + 1) % ft.checkpoint_every == 0 or step + 1 == ft.steps:
                _checkpoint(engine, work_path / CHECKPOINT_DIR, step + 1, losses, rank)
            advance(1)
    seconds = time.perf_counter() - started
    steps = ft.steps - start
    total_tokens = torch.tensor([tokens], dtype=torch.long)
    dist.all_reduce(total_tokens)
    return {"steps": ft.steps, "resumed_at_step": start, "losses": losses, "train_seconds": seconds, "world_size": world,
            "pairs_per_second": steps * ft.batch_size / max(seconds, 1e-9),
            "tokens_per_second": int(total_tokens) / max(seconds, 1e-9)}


def _checkpoint(engine: Any, checkpoint_dir: Path, step: int, losses: list[float], rank: int) -> None:
    """Trainable weights + optimiser state under tag ``step-N``; older tags go once ``latest`` names the new one."""
    engine.save_checkpoint(str(checkpoint_dir), tag=f"step-{step}", client_state={"step": step, "losses": losses},
                           exclude_frozen_parameters=True)
    _barrier()
    if rank == 0:
        for old in checkpoint_dir.glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old, ignore_errors=True)


def _save_adapter(engine: Any, peft_model: Any, directory: Path, ds_config: dict[str, Any], rank: int) -> None:
    """PEFT-format adapter (``PeftModel.from_pretrained`` loads it); ZeRO-3 shards are gathered first."""
    import deepspeed

    trainable = [param for param in engine.module.parameters() if param.requires_grad]
    with deepspeed.zero.GatheredParameters(trainable, enabled=ds_config["zero_optimization"]["stage"] == 3):
        if rank == 0:
            peft_model.save_pretrained(str(directory))
    _barrier()


def load_adapted(cfg: EncoderConfig, base_dir: Path, adapter_dir: Path | None, device: torch.device) -> tuple[Any, Any]:
    """(tokenizer, PEFT-wrapped backbone) — the adapter loaded the way any PEFT user would."""
    from peft import PeftModel

    tokenizer, backbone = load_backbone(base_dir, cfg.model)
    model = PeftModel.from_pretrained(backbone, str(adapter_dir)) if adapter_dir else backbone
    return tokenizer, model.to(device)


def evaluate_retrieval(cfg: EncoderConfig, base_dir: Path, adapter_dir: Path, pairs: Pairs) -> dict[str, Any]:
    """Title → abstract recall@1/@10 on held-out news, base model vs adapted (adapter on/off, same weights)."""
    device = resolve_device(cfg.device)
    tokenizer, model = load_adapted(cfg, base_dir, adapter_dir, device)
    encoder = TextEncoder(model, cfg.model.pooling)
    heldout = pairs.heldout.head(cfg.finetune.eval_max_items)
    queries, documents = heldout["query"].tolist(), heldout["positive"].tolist()

    def scores() -> dict[str, float]:
        q = encode_texts(encoder, tokenizer, queries, cfg.model, 64, device)
        d = encode_texts(encoder, tokenizer, documents, cfg.model, 64, device)
        return recall_at(q, d, (1, 10))

    adapted = scores()
    with model.disable_adapter():
        base = scores()
    return {"items": len(heldout), "base": base, "adapted": adapted}


def merge_adapter(cfg: EncoderConfig, base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Base weights with the LoRA update folded in, saved as a plain model (no PEFT needed to load)."""
    tokenizer, model = load_adapted(cfg, base_dir, adapter_dir, torch.device("cpu"))
    model.merge_and_unload().save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
