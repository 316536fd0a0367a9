"""Training samples and batches from an :class:`ImpressionSet`: one sample per click, k negatives each.

Negatives come from the clicked impression's non-clicked candidates (uniform, with replacement when it shows
fewer than k), and with **POPK** ``popk_count`` of them are news drawn from the ``popk_pool`` most clicked news
in the ``popk_window_hours`` before the impression's time. Batches are gathered from flat arrays by index (no per-sample Python).
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
    """[clicks, 1 + negatives] news codes per sample, the clicked news first."""
    start = clicks.negative_offsets[clicks.owner]
    available = clicks.negative_offsets[clicks.owner + 1] - start
    picks = (rng.random((clicks.size, negatives)) * np.maximum(available, 1)[:, None]).astype(np.int64)
    drawn = clicks.negatives[np.minimum(start[:, None] + picks, len(clicks.negatives) - 1)] if len(clicks.negatives) \
        else np.zeros((clicks.size, negatives), np.int64)
    # an impression without non-clicked news borrows random catalog news (MIND always shows some)
    drawn = np.where(available[:, None] > 0, drawn, rng.integers(0, max(int(impressions.candidates.max(initial=0)), 1),
                                                                 drawn.shape))
    if cfg.kind == "popk":
        if popular is None or not 0 < cfg.popk_count <= negatives:
            raise ValueError(f"train.sampler.popk_count must be 1..{negatives} (train.negatives)")
        pool = popular.at(impressions.time[clicks.owner])
        choice = pool[np.arange(clicks.size)[:, None], rng.integers(0, pool.shape[1], (clicks.size, cfg.popk_count))]
        # a pick equal to the clicked news, or an empty slot, keeps its impression negative
        keep = (choice == clicks.news[:, None]) | (choice < 0)
        drawn[:, :cfg.popk_count] = np.where(keep, drawn[:, :cfg.popk_count], choice)
    elif cfg.kind != "uniform":
        raise ValueError(f"train.sampler.kind must be uniform or popk, got {cfg.kind!r}")
    return np.concatenate([clicks.news[:, None], drawn], axis=1)


@dataclass
class SplitArrays:
    impressions: ImpressionSet
    users: np.ndarray  # user row per impression


def to_batch(split: SplitArrays, owner: np.ndarray, candidates: np.ndarray, max_history: int) -> dict[str, torch.Tensor]:
    return {"history": torch.from_numpy(history_rows(split.impressions, owner, max_history)),
            "candidates": torch.from_numpy(candidates + 1),
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


def impression_batches(split: SplitArrays, max_history: int, batch_impressions: int
                       ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(batch, candidate mask) over every impression, candidates padded to the batch's longest impression."""
    impressions = split.impressions
    lengths = np.diff(impressions.offsets)
    for start in range(0, impressions.size, batch_impressions):
        index = np.arange(start, min(start + batch_impressions, impressions.size))
        slots = np.arange(int(lengths[index].max(initial=1)))
        valid = slots < lengths[index, None]
        positions = np.where(valid, impressions.offsets[index, None] + slots, 0)
        candidates = np.where(valid, impressions.candidates[positions], -1)
        yield to_batch(split, index, candidates, max_history), torch.from_numpy(valid)
