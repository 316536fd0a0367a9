"""Encoder building blocks: InfoNCE, gradient caching (one process and two gloo ranks), pooling, tokenising, pairs."""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import Planted

from newsrec_dist.config import EncoderModelConfig, LoraConfig
from newsrec_dist.encoder.contrastive import contrastive_step, info_nce, replayed_rng
from newsrec_dist.encoder.distributed import process_group
from newsrec_dist.encoder.finetune import CHECKPOINT_DIR, _checkpoint, _resume, check_checkpoint, deepspeed_json
from newsrec_dist.encoder.models import TextEncoder, load_backbone, model_dir, tokenize, with_lora
from newsrec_dist.encoder.pairs import PairFileError, load_pairs, read_pair_file, subcategory_negatives
from newsrec_dist.encoder.pooling import pool
from newsrec_dist.encoder.retrieval import recall_at
from newsrec_dist.io import ResumableDir

TINY_GLM4 = EncoderModelConfig(source="tiny-glm4", pooling="last", append_eos=True, max_length=32)
GLM_LORA = LoraConfig(r=4, alpha=8, dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"])
TEXTS = [f"story {i} about {'rain storm' if i % 2 else 'market shares'} number {i * 7}" for i in range(12)]


def test_info_nce_equals_row_wise_cross_entropy() -> None:
    torch.manual_seed(0)
    q, p, n = torch.randn(6, 8), torch.randn(6, 8), torch.randn(6, 8)
    loss = info_nce(q, p, 0.1, n)
    qn, cn = F.normalize(q, dim=-1), F.normalize(torch.cat([p, n]), dim=-1)
    expected = np.mean([-(torch.log_softmax(qn[i] @ cn.T / 0.1, dim=0)[i]).item() for i in range(6)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    aligned = info_nce(p, p, 0.01)  # every query is its own positive, far from the others
    assert aligned.item() < loss.item()


@pytest.fixture(scope="module")
def tiny_glm4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir(TINY_GLM4, tmp_path_factory.mktemp("models"))


def _encoder(directory: Path, lora: LoraConfig = GLM_LORA) -> tuple[object, TextEncoder]:
    tokenizer, backbone = load_backbone(directory, TINY_GLM4)
    torch.manual_seed(0)
    model = with_lora(backbone, lora)
    with torch.no_grad():  # LoRA B starts at zero; perturb it so every adapter weight gets a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return tokenizer, TextEncoder(model, "last")


def _grads(encoder: TextEncoder) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in encoder.named_parameters() if param.requires_grad}


# 12 pairs: chunks of 5 cache gradients; 24 rows fit one chunk, embedded once with their graphs
@pytest.mark.parametrize("chunk_size", [5, 24])
def test_contrastive_step_equals_full_batch_gradient(tiny_glm4: Path, chunk_size: int) -> None:
    tokenizer, encoder = _encoder(tiny_glm4)
    queries, positives = tokenize(tokenizer, TEXTS, TINY_GLM4), tokenize(tokenizer, TEXTS[::-1], TINY_GLM4)
    info_nce(encoder(**queries), encoder(**positives), 0.05).backward()
    full = _grads(encoder)
    encoder.zero_grad()
    calls: list[float] = []
    loss = contrastive_step(lambda batch: encoder(**batch), [queries, positives], lambda q, p: info_nce(q, p, 0.05),
                            chunk_size=chunk_size, backward=lambda s: (calls.append(1), s.backward()))
    assert len(calls) == 2 * -(-len(TEXTS) // min(chunk_size, len(TEXTS)))  # one backward per chunk of each tower
    cached = _grads(encoder)
    assert loss == pytest.approx(info_nce(encoder(**queries), encoder(**positives), 0.05).item(), rel=1e-5)
    assert any("gate_up_proj" in name for name in cached)
    for name in full:
        assert torch.allclose(full[name], cached[name], atol=1e-6, rtol=1e-4), name


def test_one_chunk_per_tower_steps_with_the_cached_passs_dropout_masks(tiny_glm4: Path) -> None:
    """With dropout, the direct step (24 rows ≤ chunk 24) equals the cached one with a chunk per tower (12)."""
    tokenizer, _ = _encoder(tiny_glm4)
    towers = [tokenize(tokenizer, TEXTS, TINY_GLM4), tokenize(tokenizer, TEXTS[::-1], TINY_GLM4)]
    grads = []
    for chunk_size in (12, 24):
        _, encoder = _encoder(tiny_glm4, replace(GLM_LORA, dropout=0.3))
        encoder.train()
        torch.manual_seed(5)
        contrastive_step(lambda batch: encoder(**batch), towers, lambda q, p: info_nce(q, p, 0.05),
                         chunk_size=chunk_size, backward=lambda s: s.backward())
        grads.append(_grads(encoder))
    _, without_dropout = _encoder(tiny_glm4)
    contrastive_step(lambda batch: without_dropout(**batch), towers, lambda q, p: info_nce(q, p, 0.05),
                     chunk_size=24, backward=lambda s: s.backward())
    assert any(not torch.allclose(grad, _grads(without_dropout)[name]) for name, grad in grads[0].items())
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name


def test_replayed_rng_repeats_dropout_masks() -> None:
    layer = torch.nn.Dropout(0.5)
    with replayed_rng(None) as state:
        first = layer(torch.ones(100))
    torch.rand(10)  # other RNG use in between
    with replayed_rng(state):
        again = layer(torch.ones(100))
    assert torch.equal(first, again)
    assert not torch.equal(first, layer(torch.ones(100)))


def _rank_gradients(rank: int, world: int, port: int, model_path: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    share = len(TEXTS) // world
    mine = slice(rank * share, (rank + 1) * share)
    results = {}
    for chunk_size in (4, 2 * share):  # gradients cached in chunks; this rank's 2 × 6 rows in one chunk
        tokenizer, encoder = _encoder(Path(model_path))
        towers = [tokenize(tokenizer, TEXTS[mine], TINY_GLM4), tokenize(tokenizer, TEXTS[::-1][mine], TINY_GLM4)]
        contrastive_step(lambda batch: encoder(**batch), towers, lambda q, p: info_nce(q, p, 0.05),
                         chunk_size=chunk_size, backward=lambda s: s.backward())
        for param in encoder.parameters():  # what DeepSpeed's data parallelism does: average over ranks
            if param.requires_grad:
                dist.all_reduce(param.grad)
                param.grad /= world
        results.update({f"{chunk_size}/{name}": grad for name, grad in _grads(encoder).items()})
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def test_two_ranks_see_each_others_negatives(tiny_glm4: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "grads.pt"
    mp.spawn(_rank_gradients, args=(2, port, str(tiny_glm4), str(out)), nprocs=2, join=True)
    distributed = torch.load(out, weights_only=True)
    tokenizer, encoder = _encoder(tiny_glm4)
    queries, positives = tokenize(tokenizer, TEXTS, TINY_GLM4), tokenize(tokenizer, TEXTS[::-1], TINY_GLM4)
    info_nce(encoder(**queries), encoder(**positives), 0.05).backward()
    for chunk_size in (4, len(TEXTS)):
        for name, grad in _grads(encoder).items():
            assert torch.allclose(grad, distributed[f"{chunk_size}/{name}"], atol=1e-6, rtol=1e-4), (chunk_size, name)


def test_pooling_reads_the_last_real_token_on_either_padding_side() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool(hidden, right, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pool(hidden, left, "last"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert torch.allclose(pool(hidden, right, "mean")[0], hidden[0, :2].mean(0))
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, right, "max")


def test_tokenize_appends_eos_after_truncation(tiny_glm4: Path) -> None:
    tokenizer, _ = load_backbone(tiny_glm4, TINY_GLM4)
    batch = tokenize(tokenizer, ["short", " ".join(["word"] * 200)], TINY_GLM4)
    lengths = batch["attention_mask"].sum(1)
    assert TINY_GLM4.max_length - 1 <= int(lengths[1]) <= TINY_GLM4.max_length  # truncated, EOS kept
    for row, length in enumerate(lengths):
        assert int(batch["input_ids"][row, int(length) - 1]) == tokenizer.sep_token_id


def test_recall_counts_ties_against_the_query() -> None:
    docs = np.eye(3, dtype=np.float32)
    assert recall_at(docs, docs, (1,)) == {"recall@1": 1.0}
    assert recall_at(docs, np.ones((3, 3), dtype=np.float32), (1, 3)) == {"recall@1": 0.0, "recall@3": 1.0}


def test_pair_files_account_for_every_row(tmp_path: Path) -> None:
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join([json.dumps({"query": "q1", "positive": "p1"}), "{not json",
                                json.dumps({"query": "q2", "positive": ""}),
                                json.dumps({"query": "q3", "positive": "p3", "negative": "n3"})]) + "\n")
    kept, rejected = read_pair_file(jsonl, strict=False)
    assert kept["query"].tolist() == ["q1", "q3"] and kept["negative"].tolist()[1] == "n3"
    assert sum(rejected.values()) == 2 and any("invalid JSON" in reason for reason in rejected)
    with pytest.raises(PairFileError, match=r"pairs\.jsonl:2: invalid JSON"):
        read_pair_file(jsonl, strict=True)
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["a", None], "positive": ["b", "c"]}), parquet)
    with pytest.raises(PairFileError, match=r"pairs\.parquet: row 1: 'query'"):
        read_pair_file(parquet, strict=True)
    with pytest.raises(PairFileError, match="must be .jsonl or .parquet"):
        read_pair_file(tmp_path / "pairs.csv", strict=False)


def test_subcategory_negatives_come_from_another_item_of_the_same_subcategory() -> None:
    train = pd.DataFrame({"subcategory": ["a"] * 5 + ["b"] * 3 + ["c"],
                          "positive": [f"abstract {i}" for i in range(9)]})
    negatives = subcategory_negatives(train, seed=3)
    for index, negative in negatives.items():
        assert negative != train.positive[index]
        source = int(negative.split()[1])
        if train.subcategory[index] != "c":
            assert train.subcategory[source] == train.subcategory[index]


def test_news_pairs_hold_out_a_stable_share(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    prepared, _ = tiny
    first = load_pairs(prepared, 0.1, [], "subcategory", False, seed=1)
    again = load_pairs(prepared, 0.1, [], "none", False, seed=2)
    assert set(first.heldout.news_id) == set(again.heldout.news_id)
    assert 0.05 < len(first.heldout) / (len(first.heldout) + len(first.train)) < 0.15
    assert not set(first.heldout["query"]) & set(first.train["query"])
    assert (first.train["negative"] != first.train["positive"]).all()
    assert "negative" not in again.train


def _tiny_engine(stage: str, seed: int):  # noqa: ANN202 - a DeepSpeedEngine
    import deepspeed

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)  # frozen, like the backbone under LoRA
    optimizer = torch.optim.AdamW([param for param in model.parameters() if param.requires_grad], lr=0.1)
    config = {**deepspeed_json(stage), "bf16": {"enabled": False}, "train_micro_batch_size_per_gpu": 2,
              "gradient_accumulation_steps": 1, "train_batch_size": 2}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.backward(engine(torch.randn(2, 4)).sum())
    engine.step()
    return engine


def _trainable(engine) -> list[torch.Tensor]:  # noqa: ANN001
    import deepspeed

    params = [param for param in engine.module.parameters() if param.requires_grad]
    with deepspeed.zero.GatheredParameters(params):
        return [param.detach().clone() for param in params]


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _deepspeed_resume(_rank: int, stage: str, root: str) -> None:
    """The test's DeepSpeed part, in a fresh process: DeepSpeed's global state outlives one process group."""
    root_dir, warnings = Path(root), _Warnings()
    logging.getLogger("newsrec_dist.io").addHandler(warnings)
    marker = root_dir / "pwned"
    with process_group(torch.device("cpu")):
        work = ResumableDir(root_dir / "out", "fingerprint")
        checkpoints = work.path / CHECKPOINT_DIR
        saved = _tiny_engine(stage, seed=0)
        _checkpoint(saved, checkpoints, 3, [0.5, 0.25], rank=0)
        check_checkpoint(work, checkpoints)
        assert not warnings.messages
        resumed = _tiny_engine(stage, seed=1)
        assert _resume(resumed, checkpoints) == (3, [0.5, 0.25])
        assert all(torch.equal(a, b) for a, b in zip(_trainable(saved), _trainable(resumed), strict=True))

        optimizer_file = next((checkpoints / "step-3").glob("*optim_states.pt"))
        torch.save({"optimizer_state_dict": Planted(marker)}, optimizer_file)
        with pytest.raises(pickle.UnpicklingError):
            _resume(_tiny_engine(stage, seed=2), checkpoints)
        assert not marker.exists()
        check_checkpoint(work, checkpoints)
    refused = [message for message in warnings.messages if str(optimizer_file) in message and "afresh" in message]
    assert refused, warnings.messages
    assert work.path.is_dir() and not any(work.path.iterdir())


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_resume_reads_weights_only_and_refuses_a_planted_pickle(stage: str, tmp_path: Path) -> None:
    """A genuine checkpoint (ZeRO optimiser state and all) resumes through the weights-only load; a file whose
    pickle would run code is refused, by DeepSpeed's own load too, and the check empties the work directory
    with a warning naming the file, so the run starts at step 0. The planted code never runs."""
    mp.spawn(_deepspeed_resume, args=(stage, str(tmp_path)), nprocs=1, join=True)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("tag", ["../../elsewhere", "", "step-4"])
def test_latest_must_name_a_step_tag_that_holds_files(tag: str, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """``latest`` naming a path outside the checkpoint directory, nothing, or a tag without files (lost in a crash)
    restarts the run with a warning instead of pointing DeepSpeed at it."""
    work = ResumableDir(tmp_path / "out", "fingerprint")
    checkpoints = work.path / CHECKPOINT_DIR
    (checkpoints / "step-4").mkdir(parents=True)
    (checkpoints / "latest").write_text(tag)
    with caplog.at_level(logging.WARNING, logger="newsrec_dist.io"):
        check_checkpoint(work, checkpoints)
    assert any(str(checkpoints / "latest") in record.getMessage() for record in caplog.records)
    assert work.path.is_dir() and not any(work.path.iterdir())
