"""Temperature-scaled InfoNCE with in-batch (and optional hard) negatives, and gradient caching.

LECOP trains with 512 (title, abstract) pairs per step. In-batch negatives make the loss of one pair
depend on every other pair in the batch, so plain gradient accumulation over micro-batches would
change the objective (each micro-batch would only see its own negatives). We use **gradient
caching** (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"): embed the whole batch chunk by chunk without a graph, compute the full-batch loss on those
embeddings and its gradient with respect to them, then re-run each chunk with a graph and
back-propagate the cached gradient. The parameter gradient equals the full-batch one exactly; peak
activation memory is one chunk's. A batch that fits one chunk (small models, CPU) skips the cache:
the extra forward is a quarter to a third of a step's compute. Across data-parallel ranks the embeddings are all-gathered first,
so every rank sees every other rank's pairs as negatives too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]
Embed = Callable[[Batch], torch.Tensor]


def info_nce(queries: torch.Tensor, positives: torch.Tensor, temperature: float,
             hard_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each query against all positives (and hard negatives) of the batch.

    Row i's target is positive i; the other positives (and every hard negative) are its negatives.
    Inputs are L2-normalised here, so logits are cosine similarities / temperature.
    """
    queries, positives = F.normalize(queries, dim=-1), F.normalize(positives, dim=-1)
    candidates = positives
    if hard_negatives is not None:
        candidates = torch.cat([positives, F.normalize(hard_negatives, dim=-1)])
    logits = queries @ candidates.T / temperature
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def chunked(batch: Batch, size: int) -> list[Batch]:
    """Split a tokenised batch (same first dimension everywhere) into chunks of ``size`` rows."""
    rows = len(next(iter(batch.values())))
    return [{key: value[start:start + size] for key, value in batch.items()} for start in range(0, rows, size)]


@contextmanager
def replayed_rng(state: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """Run a block with the RNG state captured at its first run, so dropout masks repeat exactly."""
    if state is None:
        state = {"cpu": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None}
        yield state
        return
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if state["cuda"] else []):
        torch.set_rng_state(state["cpu"])
        if state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])
        yield state


def _gather(local: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, in rank order (no gradient: only the local slice's gradient is used)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)


def _local_slice(total_rows: int, local_rows: int) -> slice:
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return slice(rank * local_rows, (rank + 1) * local_rows) if total_rows != local_rows else slice(0, total_rows)


def _embed_without_graph(embed: Embed, chunks: Sequence[Batch]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    states, parts = [], []
    with torch.no_grad():
        for chunk in chunks:
            with replayed_rng(None) as state:
                parts.append(embed(chunk))
            states.append(state)
    return torch.cat(parts), states


def contrastive_step(embed: Embed, towers: Sequence[Batch], loss_fn: Callable[..., torch.Tensor],
                     chunk_size: int, backward: Callable[[torch.Tensor], None]) -> float:
    """One contrastive step over the full batch with activation memory of at most ``chunk_size`` rows.

    ``towers`` are the tokenised inputs of each side (queries, positives[, hard negatives]) of this
    rank's share of the batch; ``loss_fn(*embeddings)`` is the full-batch loss over all ranks' rows;
    ``backward(surrogate)`` back-propagates a scalar (the DeepSpeed engine's ``backward``, or
    ``Tensor.backward``) and is called once per chunk of every tower, so the caller steps the optimiser
    after the last one. Returns the loss value.
    """
    chunk_lists = [chunked(tower, chunk_size) for tower in towers]
    if sum(len(next(iter(tower.values()))) for tower in towers) <= chunk_size:
        # One chunk per tower: each is embedded once, with its graph. Its forwards draw the RNG in the cached
        # pass's order, so dropout masks (and the result) are the same.
        held = [embed(chunks[0]) for chunks in chunk_lists]
        loss, grads = _embedding_gradients([embedding.detach() for embedding in held], loss_fn)
        for embedding, grad in zip(held, grads):
            backward((embedding * grad).sum())
        return loss
    cached = [_embed_without_graph(embed, chunks) for chunks in chunk_lists]
    loss, grads = _embedding_gradients([local for local, _ in cached], loss_fn)
    for (_, states), chunks, grad in zip(cached, chunk_lists, grads):
        for chunk, state, chunk_grad in zip(chunks, states, grad.split(chunk_size)):
            with replayed_rng(state):
                backward((embed(chunk) * chunk_grad).sum())
    return loss


def _embedding_gradients(local: list[torch.Tensor], loss_fn: Callable[..., torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """The full-batch loss over all ranks' rows and its gradient with respect to this rank's embeddings."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    gathered = [_gather(embeddings).detach().requires_grad_(True) for embeddings in local]
    loss = loss_fn(*gathered)
    grads = torch.autograd.grad(loss, gathered)
    # DeepSpeed averages gradients over ranks; the full-batch gradient is their sum, hence × world.
    return float(loss.detach()), [grad[_local_slice(len(grad), len(mine))] * world for grad, mine in zip(grads, local)]
