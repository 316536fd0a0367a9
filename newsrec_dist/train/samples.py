"""Training samples and batches from an :class:`ImpressionSet`: one sample per click, k negatives each.

Negatives come from the clicked impression's non-clicked candidates (uniform, with replacement when it shows
fewer than k). **POPK** (LLM4Rec) adds ``popk_count`` news drawn from the ``popk_pool`` most clicked news in the
``popk_window_hours`` before the impression's time, as the seed describes (``popk_mode: add``: 1 + k + popk
candidates); ``replace`` swaps them in for the first impression negatives (the k + 0 ablation). Popular draws are
distinct and never a news the user clicked in the impression or has in the history. Batches are gathered from flat arrays by index (no per-sample Python).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from newsrec_dist.config import SamplerConfig
from newsrec_dist.eval.impressions import ClickCounter, ImpressionSet

HOUR = 3600.0


def history_rows(impressions: ImpressionSet, index: np.ndarray, max_history: int) -> np.ndarray:
    """[len(index), max_history] news rows of the most recent clicks, valid first, 0 after (and for unknown news)."""
    end = impressions.history_offsets[index + 1]
    count = np.minimum(end - impressions.history_offsets[index], max_history)
    slots = np.arange(max_history)
    valid = slots < count[:, None]
    positions = np.where(valid, (end - count)[:, None] + slots, 0)
    codes = impressions.history[positions] if len(impressions.history) else np.zeros_like(positions)
    return np.where(valid, codes + 1, 0)


@dataclass(frozen=True)
class Clicks:
    """Every click of a split: its impression and the clicked news, plus each impression's non-clicked news."""

    owner: np.ndarray
    news: np.ndarray
    negative_offsets: np.ndarray
    negatives: np.ndarray

    @classmethod
    def of(cls, impressions: ImpressionSet) -> Clicks:
        assert impressions.labels is not None
        owner, clicked = impressions.candidate_owner(), impressions.labels.astype(bool)
        negative_counts = np.bincount(owner[~clicked], minlength=impressions.size)
        return cls(owner=owner[clicked], news=impressions.candidates[clicked],
                   negative_offsets=np.concatenate([[0], np.cumsum(negative_counts)]),
                   negatives=impressions.candidates[~clicked])

    @property
    def size(self) -> int:
        return len(self.owner)


class PopularNews:
    """The ``pool`` most clicked news in the ``window_hours`` before each ``bucket_hours`` boundary (POPK)."""

    def __init__(self, clicks: ClickCounter, news_count: int, times: np.ndarray, cfg: SamplerConfig) -> None:
        self.bucket = cfg.popk_bucket_hours * HOUR
        # not min(initial=0): that is 0 for Unix times, one bucket per hour since 1970 (minutes, gigabytes)
        self.start = float(times.min()) if times.size else 0.0
        boundaries = self.start + self.bucket * np.arange(int((times.max(initial=0) - self.start) // self.bucket) + 1)
        items, pool = np.arange(news_count), min(cfg.popk_pool, news_count)
        window = cfg.popk_window_hours * HOUR if cfg.popk_window_hours else None
        counts = np.stack([self._recent(clicks, items, b, window) for b in boundaries])
        top = np.argpartition(-counts, pool - 1, axis=1)[:, :pool]
        # news without any click yet are not popular: -1 marks an empty slot of the pool
        self.top = np.where(np.take_along_axis(counts, top, axis=1) > 0, top, -1)

    @staticmethod
    def _recent(clicks: ClickCounter, items: np.ndarray, boundary: float, window: float | None) -> np.ndarray:
        now = clicks.before(items, np.full(len(items), int(boundary)))
        return now if window is None else now - clicks.before(items, np.full(len(items), int(boundary - window)))

    def at(self, times: np.ndarray) -> np.ndarray:
        """[len(times), pool] most clicked news strictly before each time's bucket start (-1: none)."""
        bucket = np.clip(((times - self.start) // self.bucket).astype(np.int64), 0, len(self.top) - 1)
        return self.top[bucket]


def draw_candidates(impressions: ImpressionSet, clicks: Clicks, negatives: int, cfg: SamplerConfig,
                    popular: PopularNews | None, rng: np.random.Generator) -> np.ndarray:
    """[clicks, 1 + negatives (+ popk_count in add mode)] news codes per sample, the clicked news first."""
    drawn = impression_negatives(impressions, clicks, negatives, rng)
    if cfg.kind == "uniform":
        return np.concatenate([clicks.news[:, None], drawn], axis=1)
    if cfg.kind != "popk":
        raise ValueError(f"train.sampler.kind must be uniform or popk, got {cfg.kind!r}")
    if cfg.popk_mode not in ("add", "replace"):
        raise ValueError(f"train.sampler.popk_mode must be add or replace, got {cfg.popk_mode!r}")
    most = negatives if cfg.popk_mode == "replace" else None  # replace mode swaps within the k negatives
    if popular is None or cfg.popk_count < 1 or (most is not None and cfg.popk_count > most):
        bound = f"1..{most} (train.negatives)" if most else "at least 1"
        raise ValueError(f"train.sampler.popk_count must be {bound} in popk_mode {cfg.popk_mode}, got {cfg.popk_count}")
    choice = popular_negatives(impressions, clicks, cfg.popk_count, popular, rng)
    if cfg.popk_mode == "add":
        # a slot the pool cannot fill (too few popular news the user has not clicked) takes another impression
        # negative: every sample keeps 1 + negatives + popk_count candidates
        extra = impression_negatives(impressions, clicks, cfg.popk_count, rng)
        return np.concatenate([clicks.news[:, None], drawn, np.where(choice < 0, extra, choice)], axis=1)
    drawn[:, :cfg.popk_count] = np.where(choice < 0, drawn[:, :cfg.popk_count], choice)
    return np.concatenate([clicks.news[:, None], drawn], axis=1)


def impression_negatives(impressions: ImpressionSet, clicks: Clicks, count: int,
                         rng: np.random.Generator) -> np.ndarray:
    """[clicks, count] non-clicked news of each click's impression, uniform with replacement."""
    start = clicks.negative_offsets[clicks.owner]
    available = clicks.negative_offsets[clicks.owner + 1] - start
    picks = (rng.random((clicks.size, count)) * np.maximum(available, 1)[:, None]).astype(np.int64)
    drawn = clicks.negatives[np.minimum(start[:, None] + picks, len(clicks.negatives) - 1)] if len(clicks.negatives) \
        else np.zeros((clicks.size, count), np.int64)
    # an impression without non-clicked news borrows random catalog news (MIND always shows some)
    return np.where(available[:, None] > 0, drawn, rng.integers(0, max(int(impressions.candidates.max(initial=0)), 1),
                                                                drawn.shape))


def popular_negatives(impressions: ImpressionSet, clicks: Clicks, count: int, popular: PopularNews,
                      rng: np.random.Generator) -> np.ndarray:
    """[clicks, count] distinct news from the popular pool at each click's time, drawn without replacement among
    those its user neither clicked in the impression nor has in the history (false negatives); -1 where the pool
    has fewer than ``count`` such news."""
    pool = popular.at(impressions.time[clicks.owner])
    pool = np.pad(pool, ((0, 0), (0, max(count - pool.shape[1], 0))), constant_values=-1)  # count > popk_pool
    barred = (pool < 0) | user_clicked(impressions, clicks.owner, pool)
    keys = np.where(barred, np.inf, rng.random(pool.shape))  # a random order of the allowed news, barred last
    order = np.argsort(keys, axis=1, kind="stable")[:, :count]
    picked = np.take_along_axis(pool, order, axis=1)
    return np.where(np.isinf(np.take_along_axis(keys, order, axis=1)), -1, picked)


def user_clicked(impressions: ImpressionSet, owner: np.ndarray, news: np.ndarray) -> np.ndarray:
    """Whether ``news[i, j]`` is a click of impression ``owner[i]`` or in that impression's user history."""
    assert impressions.labels is not None
    clicked = impressions.labels.astype(bool)
    width = int(max(impressions.candidates.max(initial=0), impressions.history.max(initial=0),
                    news.max(initial=0))) + 1
    history_owner = np.repeat(np.arange(impressions.size), impressions.history_lengths())
    in_catalog = impressions.history >= 0  # -1: a history id missing from news.tsv
    known = np.concatenate([impressions.candidate_owner()[clicked] * width + impressions.candidates[clicked],
                            history_owner[in_catalog] * width + impressions.history[in_catalog]])
    return (news >= 0) & np.isin(owner[:, None] * width + np.maximum(news, 0), known)


@dataclass
class SplitArrays:
    impressions: ImpressionSet
    users: np.ndarray  # user row per impression


def trim_padding(rows: np.ndarray) -> np.ndarray:
    """Rows cut after the last column any of them uses (at least one column kept): the columns dropped are padding
    that every user encoder masks, so scores are unchanged and the user side costs the batch's longest history,
    not ``max_history`` (what BST and DIN pay per candidate)."""
    used = np.flatnonzero((rows > 0).any(axis=0))
    return rows[:, : used[-1] + 1 if len(used) else 1]


def to_batch(split: SplitArrays, owner: np.ndarray, candidates: np.ndarray, max_history: int) -> dict[str, torch.Tensor]:
    history = trim_padding(history_rows(split.impressions, owner, max_history))
    return {"history": torch.from_numpy(history.astype(np.int64, copy=False)),
            "candidates": torch.from_numpy(candidates.astype(np.int64, copy=False) + 1),
            "users": torch.from_numpy(split.users[owner])}


class EpochBatches(ABC):
    """An epoch of shuffled batches for one rank; resumable mid-epoch (Lightning saves ``state_dict``).

    Epoch ``e`` is fully determined by ``seed`` and ``e`` (what ``draw`` samples, and the order), so a resumed run
    sees exactly the batches an uninterrupted one would. ``__len__`` is defined, so Lightning does not prefetch and
    the saved position is the number of batches consumed. Subclasses say what an epoch draws and what a batch is.
    """

    def __init__(self, samples: int, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise ValueError(f"{samples} training clicks make no batch of {batch_size} on {world_size} rank(s)")

    @abstractmethod
    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """What one epoch samples for every training sample (its negatives), from the epoch's generator."""

    @abstractmethod
    def batch(self, drawn: np.ndarray, samples: np.ndarray) -> dict[str, torch.Tensor]:
        """The tensors of these samples, given the epoch's draw."""

    def __len__(self) -> int:
        return self.samples // (self.batch_size * self.world_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.position >= len(self):  # the previous epoch was consumed: start the next one
            self.epoch, self.position = self.epoch + 1, 0
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = self.draw(rng)
        order = rng.permutation(self.samples)[: len(self) * self.batch_size * self.world_size]
        mine = order.reshape(len(self), self.world_size, self.batch_size)[:, self.rank]
        while self.position < len(self):
            samples = mine[self.position]
            self.position += 1
            yield self.batch(drawn, samples)


class TrainBatches(EpochBatches):
    """One sample per click of the split: the clicked news and k negatives (uniform or POPK)."""

    def __init__(self, split: SplitArrays, negatives: int, sampler: SamplerConfig, popular: PopularNews | None,
                 batch_size: int, max_history: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.split, self.clicks = split, Clicks.of(split.impressions)
        self.negatives, self.sampler, self.popular, self.max_history = negatives, sampler, popular, max_history
        super().__init__(self.clicks.size, batch_size, seed, rank, world_size)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return draw_candidates(self.split.impressions, self.clicks, self.negatives, self.sampler, self.popular, rng)

    def batch(self, drawn: np.ndarray, samples: np.ndarray) -> dict[str, torch.Tensor]:
        return to_batch(self.split, self.clicks.owner[samples], drawn[samples], self.max_history)


def impression_batches(split: SplitArrays, max_history: int, batch_impressions: int, order: np.ndarray
                       ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, np.ndarray]]:
    """(batch, candidate mask, the valid candidates' positions in ``split.impressions.candidates``) over every
    impression in ``order``, candidates padded to the batch's longest impression."""
    impressions = split.impressions
    lengths = np.diff(impressions.offsets)
    for start in range(0, impressions.size, batch_impressions):
        index = order[start:start + batch_impressions]
        slots = np.arange(int(lengths[index].max(initial=1)))
        valid = slots < lengths[index, None]
        positions = np.where(valid, impressions.offsets[index, None] + slots, 0)
        candidates = np.where(valid, impressions.candidates[positions], -1)
        yield to_batch(split, index, candidates, max_history), torch.from_numpy(valid), positions[valid]


def pair_batches(split: SplitArrays, max_history: int, batch_pairs: int
                 ) -> Iterator[tuple[dict[str, torch.Tensor], np.ndarray]]:
    """(batch of one candidate per row, those candidates' positions in ``split.impressions.candidates``) over every
    (impression, candidate) pair, ordered by the impression's history length so a batch pads almost nothing."""
    impressions = split.impressions
    owner = impressions.candidate_owner()
    order = np.argsort(np.minimum(impressions.history_lengths(), max_history)[owner], kind="stable")
    for start in range(0, len(order), batch_pairs):
        positions = order[start:start + batch_pairs]
        yield to_batch(split, owner[positions], impressions.candidates[positions, None], max_history), positions
