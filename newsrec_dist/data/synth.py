"""MIND-format synthetic data with planted signal (``newsrec data synth``).

What is planted (every knob is in :class:`~newsrec_dist.config.SynthConfig`; docs/data.md says which
method each one is for):

* **Topics in text.** Real English words: each subcategory's topic words are GloVe neighbours of its
  seed words (``vocabulary.py``); titles and abstracts mix them with category, topic-free and other
  topics' words, and each abstract restates three words of its own title.
* **Stories.** Items come in latent stories below the subcategory (``story_size_mean`` items published
  over about ``story_days``), each with one or two story words and, for ``place_share`` of them, a
  real place; a story's items name its words and place in some titles and abstracts, not all.
* **Users.** A sparse interest mixture over subcategories, a home region, and a history read in
  sessions: each next click continues the session's story with probability ``story_continuation``.
  A ``cold_user_share`` of users has at most ``cold_history_max`` history clicks.
* **Clicks.** Candidates are fresh items shown ∝ popularity**``exposure_bias``; utility =
  ``affinity_weight`` × interest + ``popularity_weight`` × log popularity + ``story_weight`` × (a story
  of the history) + ``region_weight`` × (about the home region) + Gumbel noise, and the top 1+Poisson
  of an impression are clicked (Plackett–Luce). ``conformity_share`` of impressions are clicked by
  popularity alone.
* **Oracle.** Each dev candidate's true utility goes to ``oracle/dev`` under the output directory, with
  the latent story/region of every item (``oracle/news.parquet``) and user (``oracle/users``): only the
  evaluation's ``oracle`` row and the tests read them. The summary gives each signal's AUC alone.

The generator streams users in chunks of bounded size and appends to the output files; a progress
file lets a killed run resume at the last finished chunk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from newsrec_dist.arrays import first_occurrences, offsets_from_lengths
from newsrec_dist.config import SynthConfig
from newsrec_dist.data.vocabulary import GENERAL_WORDS, PLACES, TOPICS, word_lists
from newsrec_dist.eval.metrics import impression_metrics
from newsrec_dist.io import Manifest, ResumableDir, atomic_write_text, is_up_to_date
from newsrec_dist.progress import progress_bar

DAY = 86400.0
NEWS_ID_BASE = 100_000  # ids N100000.. have a fixed width, which lets rows be rendered as byte blocks
USER_ID_BASE = 1_000_000
MAX_CANDIDATES = 300
MAX_HISTORY = 500


@dataclass(frozen=True)
class ScaleSpec:
    n_users: int
    n_news: int
    n_impressions: int
    clicks_per_impression: float


SCALES: dict[str, ScaleSpec] = {
    # micro: the end-to-end tests' whole pipeline in a few minutes; tiny: unit tests and learnability
    "micro": ScaleSpec(n_users=150, n_news=500, n_impressions=1_000, clicks_per_impression=1.5),
    "tiny": ScaleSpec(n_users=400, n_news=1_500, n_impressions=3_000, clicks_per_impression=1.5),
    "small": ScaleSpec(n_users=5_000, n_news=8_000, n_impressions=40_000, clicks_per_impression=1.5),
    # Official MIND counts (ENVIRONMENT.md): users, news, impressions, clicks / impressions.
    "mind-small": ScaleSpec(50_000, 65_238, 230_117, 347_727 / 230_117),
    "mind-large": ScaleSpec(1_000_000, 161_013, 15_777_377, 24_155_470 / 15_777_377),
}


def resolve_scale(cfg: SynthConfig) -> ScaleSpec:
    """The preset named by ``cfg.scale`` with any explicit counts from the config applied."""
    if cfg.scale not in SCALES:
        raise ValueError(f"unknown synth scale {cfg.scale!r}; choose one of {sorted(SCALES)}")
    base = SCALES[cfg.scale]
    spec = ScaleSpec(
        n_users=cfg.n_users or base.n_users,
        n_news=cfg.n_news or base.n_news,
        n_impressions=cfg.n_impressions or base.n_impressions,
        clicks_per_impression=cfg.clicks_per_impression or base.clicks_per_impression,
    )
    if spec.n_impressions < spec.n_users:
        raise ValueError("n_impressions must be >= n_users: every user has at least one impression")
    if spec.n_news + NEWS_ID_BASE >= 10 * NEWS_ID_BASE:
        raise ValueError(f"n_news must be < {9 * NEWS_ID_BASE} (fixed-width news ids)")
    if spec.clicks_per_impression < 1:
        raise ValueError("clicks_per_impression must be >= 1 (MIND impressions have at least one click)")
    return spec


# ---------------------------------------------------------------------------------------------
# Vectorised sampling helpers
# ---------------------------------------------------------------------------------------------


def dirichlet_rows(rng: np.random.Generator, alpha: float, rows: int, cols: int) -> np.ndarray:
    """``rows`` independent symmetric Dirichlet draws (gamma trick, vectorised)."""
    gammas = rng.gamma(alpha, size=(rows, cols)) + 1e-12
    return gammas / gammas.sum(axis=1, keepdims=True)


class GroupedSampler:
    """Draw items inside groups with probability ∝ weight, many draws in one ``searchsorted``.

    Each group's normalised CDF is shifted by its group index, so all CDFs live in one sorted
    array: a draw for group g with uniform u is ``searchsorted(keys, g + u)``.
    """

    def __init__(self, items: np.ndarray, groups: np.ndarray, weights: np.ndarray, n_groups: int) -> None:
        order = np.lexsort((items, groups))
        sorted_groups, sorted_weights = groups[order], weights[order].astype(np.float64)
        group_totals = np.bincount(sorted_groups, weights=sorted_weights, minlength=n_groups)
        before = (np.cumsum(group_totals) - group_totals)[sorted_groups]
        within = (np.cumsum(sorted_weights) - before) / group_totals[sorted_groups]
        self.keys = sorted_groups + np.minimum(within, 1.0)
        self.items = items[order]
        self.non_empty = group_totals > 0

    def draw(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.non_empty[groups].all():
            raise ValueError("draw requested from a group without items")
        targets = groups + rng.random(len(groups)) * (1 - 1e-12)
        positions = np.searchsorted(self.keys, targets, side="left")
        return self.items[np.minimum(positions, len(self.items) - 1)]


def categorical_rows(probabilities: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per entry of ``rows`` from ``probabilities[row]``."""
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative /= cumulative[:, -1:]
    n_rows, n_cols = probabilities.shape
    keys = (np.arange(n_rows)[:, None] + cumulative).ravel()
    targets = rows + rng.random(len(rows)) * (1 - 1e-12)
    flat = np.searchsorted(keys, targets, side="left")
    return np.minimum(flat - rows * n_cols, n_cols - 1)


def negative_binomial_lengths(
    rng: np.random.Generator, size: int, minimum: int, mean: float | np.ndarray, maximum: int
) -> np.ndarray:
    """Skewed counts ≥ ``minimum`` with the given mean (one, or one per count; over-dispersed like MIND's)."""
    extra_mean = np.maximum(np.asarray(mean, dtype=np.float64) - minimum, 1e-3)
    dispersion = 1.5
    draws = rng.negative_binomial(dispersion, dispersion / (dispersion + extra_mean), size=size)
    return np.clip(minimum + draws, minimum, maximum)


# ---------------------------------------------------------------------------------------------
# The catalogue: stories of news items with topics, places, publication times and popularity
# ---------------------------------------------------------------------------------------------

REGIONS = tuple(PLACES)
# Users' home regions and stories' places: mostly the US, as MIND's readers and news are.
REGION_WEIGHTS = np.array([0.2, 0.22, 0.18, 0.18, 0.07, 0.06, 0.05, 0.04])
NO_PLACE = len(REGIONS)  # the region index of items about no place
MAX_STORY_SIZE = 60
STORY_DAYS_SIGMA = 1.5  # log-normal story durations: most run a few days, one in five over ten (ongoing stories)
CONFORMITY_POPULARITY_WEIGHT = 1.0  # a conformist impression's utility: log popularity alone


@dataclass
class Catalogue:
    categories: list[str]
    subcategories: list[str]
    sub_to_cat: np.ndarray
    category: np.ndarray  # per item, index into categories
    subcategory: np.ndarray  # per item, index into subcategories
    story: np.ndarray  # per item, index of its latent story
    region: np.ndarray  # per item, index into REGIONS, NO_PLACE when it is about no place
    published: np.ndarray  # seconds since the epoch, sorted ascending (item index = time order)
    base_popularity: np.ndarray
    id_number: np.ndarray  # item index -> number in its id N<number>
    story_place: np.ndarray  # per story, the place word ("" for none)
    story_words: list[tuple[str, ...]]  # per story, its one or two entity-like words

    @property
    def size(self) -> int:
        return len(self.category)

    @property
    def n_stories(self) -> int:
        return len(self.story_place)


def topic_tables() -> tuple[list[str], list[str], np.ndarray]:
    categories = list(TOPICS)
    subcategories: list[str] = []
    sub_to_cat: list[int] = []
    for cat_index, (_, subs) in enumerate(TOPICS.values()):
        subcategories.extend(subs)
        sub_to_cat.extend([cat_index] * len(subs))
    return categories, subcategories, np.asarray(sub_to_cat)


def story_sizes_and_durations(cfg: SynthConfig, n_news: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Over-dispersed story sizes (1..MAX_STORY_SIZE, summing to exactly ``n_news``) and durations in days.

    Longer stories have more items (mean size ∝ √duration, scaled so the overall mean is ``story_size_mean``),
    so an ongoing story keeps publishing rather than thinning out.
    """
    guess = int(np.ceil(2 * n_news / max(cfg.story_size_mean, 1.0))) + 8
    days = np.clip(rng.lognormal(np.log(cfg.story_days), STORY_DAYS_SIGMA, size=guess), 0.25, 30.0)
    relative = np.sqrt(days / cfg.story_days)
    mean = 1 + (cfg.story_size_mean - 1) * relative / np.exp(STORY_DAYS_SIGMA ** 2 / 8)  # E[√lognormal] = e^(σ²/8)
    sizes = negative_binomial_lengths(rng, guess, 1, mean, MAX_STORY_SIZE)
    if sizes.sum() < n_news:
        raise ValueError(f"story sizes reach {sizes.sum()} of {n_news} news: lower story_size_mean's spread")
    count = int(np.searchsorted(np.cumsum(sizes), n_news)) + 1
    sizes = sizes[:count].copy()
    sizes[-1] -= sizes.sum() - n_news
    return sizes, days[:count]


def story_entities(
    cfg: SynthConfig, story_sub: np.ndarray, subcategories: list[str], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Per story: its region, place word and one or two story words from its subcategory's story words."""
    n = len(story_sub)
    has_place = rng.random(n) < cfg.place_share
    region = np.where(has_place, rng.choice(len(REGIONS), size=n, p=REGION_WEIGHTS), NO_PLACE)
    place_pick = rng.integers(0, 1 << 30, size=n)
    place = np.array([PLACES[REGIONS[r]][p % len(PLACES[REGIONS[r]])] if r < NO_PLACE else ""
                      for r, p in zip(region.tolist(), place_pick.tolist())], dtype=object)
    pools = [word_lists()[sub]["story"] for sub in subcategories]
    first = rng.integers(0, 1 << 30, size=n)
    second = rng.integers(1, 1 << 30, size=n)
    two = rng.random(n) < 0.5
    words = []
    for sub, a, b, both in zip(story_sub.tolist(), first.tolist(), second.tolist(), two.tolist()):
        pool = pools[sub]
        picks = (a % len(pool), (a + 1 + b % (len(pool) - 1)) % len(pool))  # two different words
        words.append(tuple(pool[i] for i in (picks if both else picks[:1])))
    return region, place, words


def build_catalogue(cfg: SynthConfig, spec: ScaleSpec, window_start: float, rng: np.random.Generator) -> Catalogue:
    """Items come in latent stories: one subcategory, place and story words each, published over a few days."""
    categories, subcategories, sub_to_cat = topic_tables()
    # Category sizes are skewed like MIND's (news and sports dominate).
    sub_weights = rng.dirichlet(np.full(len(subcategories), 2.0))
    sizes, days = story_sizes_and_durations(cfg, spec.n_news, rng)
    story_sub = rng.choice(len(subcategories), size=len(sizes), p=sub_weights)
    span_start = window_start - (cfg.history_days + cfg.freshness_days) * DAY
    span_end = window_start + (cfg.train_days + cfg.dev_days) * DAY
    duration = days * DAY
    start = rng.uniform(span_start - duration, span_end)
    story = np.repeat(np.arange(len(sizes)), sizes)
    low, high = np.maximum(start, span_start)[story], np.minimum(start + duration, span_end)[story]
    when = low + rng.random(spec.n_news) * (high - low)
    order = np.argsort(when, kind="stable")
    story, published = story[order], when[order]
    region, place, words = story_entities(cfg, story_sub, subcategories, rng)
    zipf_rank = rng.permutation(spec.n_news) + 1
    subcategory = story_sub[story]
    return Catalogue(
        categories=categories, subcategories=subcategories, sub_to_cat=sub_to_cat,
        category=sub_to_cat[subcategory], subcategory=subcategory, story=story, region=region[story],
        published=published, base_popularity=zipf_rank.astype(np.float64) ** -0.9,
        id_number=NEWS_ID_BASE + rng.permutation(spec.n_news), story_place=place, story_words=words,
    )


TEXT_POOL_SHARES = (0.4, 0.25, 0.27, 0.08)  # subcategory, category, topic-free, off-topic noise words


@dataclass(frozen=True)
class WordPools:
    """All words in one array; per subcategory, the [start, stop) slices of its four pools."""

    words: np.ndarray
    starts: np.ndarray  # (subcategories, 4)
    sizes: np.ndarray  # (subcategories, 4)


def word_pools() -> WordPools:
    words: list[str] = list(GENERAL_WORDS)
    general = (0, len(GENERAL_WORDS))
    topical_start = len(words)
    slices: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for cat_words, subs in TOPICS.values():
        cat_slice = (len(words), len(cat_words))
        words.extend(cat_words)
        for sub in subs:
            sub_words = word_lists()[sub]["topic"]
            slices.append(((len(words), len(sub_words)), cat_slice))
            words.extend(sub_words)
    off_topic = (topical_start, len(words) - topical_start)
    table = np.array([[sub, cat, general, off_topic] for sub, cat in slices])  # (subs, 4, 2)
    return WordPools(words=np.array(words, dtype=object), starts=table[:, :, 0], sizes=table[:, :, 1])


def random_texts(
    pools: WordPools, subcategory: np.ndarray, min_words: int, max_words: int, rng: np.random.Generator
) -> list[list[str]]:
    """One word list per item: each word drawn from a pool chosen by TEXT_POOL_SHARES (vectorised)."""
    lengths = rng.integers(min_words, max_words + 1, size=len(subcategory))
    owner_sub = np.repeat(subcategory, lengths)
    pool = rng.choice(4, size=len(owner_sub), p=TEXT_POOL_SHARES)
    word_ids = pools.starts[owner_sub, pool] + (rng.random(len(pool)) * pools.sizes[owner_sub, pool]).astype(np.int64)
    words = pools.words[word_ids].tolist()
    offsets = offsets_from_lengths(lengths).tolist()
    return [words[start:stop] for start, stop in zip(offsets[:-1], offsets[1:])]


ECHOED_TITLE_WORDS = 3  # title words each abstract restates


def insert_words(words: list[str], extra: list[str], rng: np.random.Generator) -> list[str]:
    """``words`` with each of ``extra`` inserted at a random place."""
    words = list(words)
    for word in extra:
        words.insert(int(rng.integers(0, len(words) + 1)), word)
    return words


def echoed(title: list[str], rng: np.random.Generator) -> list[str]:
    """``ECHOED_TITLE_WORDS`` of the title's words: real abstracts restate their headline, the per-item
    link title → abstract that the encoder's contrastive fine-tuning learns (topic words only tell the
    subcategory, story words only the story)."""
    picks = rng.choice(len(title), size=min(ECHOED_TITLE_WORDS, len(title)), replace=False)
    return [title[i] for i in picks]


def entity_json(words: list[str], text: str, entities: list[tuple[str, str, str]]) -> str:
    """MIND's entity list: each (word, type, Wikidata id) the text mentions, with its offsets. ``text`` is
    ``words`` joined by single spaces (then capitalised), so a word's offsets are the starts of its tokens."""
    starts: dict[str, list[int]] = {}
    at = 0
    for word in words:
        starts.setdefault(word, []).append(at)
        at += len(word) + 1
    found = [{"Label": word.capitalize(), "Type": kind, "WikidataId": wikidata, "Confidence": 1.0,
              "OccurrenceOffsets": starts[word], "SurfaceForms": [text[o:o + len(word)] for o in starts[word]]}
             for word, kind, wikidata in entities if word in starts]
    return json.dumps(found, separators=(", ", ": ")) if found else "[]"


def story_mentions(catalogue: Catalogue, share: float, rng: np.random.Generator) -> list[list[str]]:
    """Per item: the story's words and place that this text names, each with probability ``share``."""
    mentions = []
    keep = rng.random((catalogue.size, 3)) < share
    for item, story in enumerate(catalogue.story.tolist()):
        names = [*catalogue.story_words[story], catalogue.story_place[story]]
        mentions.append([name for name, kept in zip(names, keep[item]) if name and kept])
    return mentions


def entity_ids(catalogue: Catalogue) -> dict[str, tuple[str, str]]:
    """Every story word and place → (MIND entity type, a stable Wikidata-like id)."""
    ids = {word: ("O", f"Q{100_000 + i}") for i, word in
           enumerate(sorted({w for words in catalogue.story_words for w in words}))}
    ids |= {place: ("G", f"Q{90_000 + i}") for i, place in enumerate(p for places in PLACES.values() for p in places)}
    return ids


def news_rows(cfg: SynthConfig, catalogue: Catalogue, rng: np.random.Generator) -> list[str]:
    """news.tsv lines: topic words, some of the story's words and place, entities for those named."""
    pools = word_pools()
    title_words = random_texts(pools, catalogue.subcategory, 7, 14, rng)
    abstract_words = random_texts(pools, catalogue.subcategory, 18, 39, rng)
    in_title = story_mentions(catalogue, cfg.story_word_share, rng)
    in_abstract = story_mentions(catalogue, cfg.story_word_share, rng)
    ids = entity_ids(catalogue)
    rows = []
    for item, sub in enumerate(catalogue.subcategory.tolist()):
        news_id = f"N{catalogue.id_number[item]}"
        title = insert_words(title_words[item], in_title[item], rng)
        abstract = insert_words(abstract_words[item], echoed(title, rng) + in_abstract[item], rng)
        title_text, abstract_text = " ".join(title).capitalize(), " ".join(abstract).capitalize() + "."
        named = [(word, *ids[word]) for word in dict.fromkeys(in_title[item] + in_abstract[item])]
        rows.append("\t".join([
            news_id, catalogue.categories[catalogue.sub_to_cat[sub]], catalogue.subcategories[sub],
            title_text, abstract_text, f"https://synth.newsrec.invalid/{news_id}.html",
            entity_json(title, title_text, named), entity_json(abstract, abstract_text, named),
        ]))
    return rows


# ---------------------------------------------------------------------------------------------
# Users: interests, home regions, histories and impressions (one chunk of users at a time)
# ---------------------------------------------------------------------------------------------


@dataclass
class UserChunk:
    first_user: int
    impressions_per_user: np.ndarray
    interest: np.ndarray  # (users, subcategories), rows sum to 1
    home: np.ndarray  # per user, index into REGIONS
    history_items: np.ndarray
    history_offsets: np.ndarray


@dataclass
class ImpressionBlock:
    user: np.ndarray  # per impression, index into the chunk
    time: np.ndarray
    items: np.ndarray  # flat candidates
    labels: np.ndarray  # flat, int8
    offsets: np.ndarray
    signals: dict[str, np.ndarray]  # flat, per candidate: each planted term, and "oracle" (the true utility)


def user_interests(catalogue: Catalogue, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sparse interests per user: a mixture over categories times a mixture within each category."""
    n_cats = len(catalogue.categories)
    category_mix = dirichlet_rows(rng, 0.25, n, n_cats)
    within = dirichlet_rows(rng, 0.7, n, len(catalogue.subcategories))
    cat_of_sub = catalogue.sub_to_cat
    within_totals = np.zeros((n, n_cats))
    np.add.at(within_totals.T, cat_of_sub, within.T)
    return category_mix[:, cat_of_sub] * within / within_totals[:, cat_of_sub]


def history_lengths(cfg: SynthConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    cold = rng.random(n) < cfg.cold_user_share
    warm_lengths = negative_binomial_lengths(rng, n, cfg.cold_history_max + 1, cfg.history_mean, MAX_HISTORY)
    cold_lengths = rng.integers(0, cfg.cold_history_max + 1, size=n)
    return np.where(cold, cold_lengths, warm_lengths)


@dataclass(frozen=True)
class HistorySamplers:
    """Samplers over the news published before the log window, and P(region | subcategory, home region)."""

    by_sub_region: GroupedSampler  # groups: subcategory * (NO_PLACE + 1) + region
    by_story: GroupedSampler
    popular: GroupedSampler
    region_given_sub_home: np.ndarray  # rows: subcategory * len(REGIONS) + home; columns: region incl. NO_PLACE
    stocked_subs: np.ndarray


def history_samplers(cfg: SynthConfig, catalogue: Catalogue, window_start: float) -> HistorySamplers:
    pool = np.flatnonzero(catalogue.published < window_start)
    if len(pool) == 0:
        raise ValueError("no news published before the log window: raise n_news or history_days")
    weights = catalogue.base_popularity[pool]
    n_subs, n_regions = len(catalogue.subcategories), NO_PLACE + 1
    groups = catalogue.subcategory[pool] * n_regions + catalogue.region[pool]
    mass = np.bincount(groups, weights=weights, minlength=n_subs * n_regions).reshape(n_subs, n_regions)
    boost = np.exp(cfg.region_weight * (np.arange(n_regions)[None, :] == np.arange(len(REGIONS))[:, None]))
    region_table = (mass[:, None, :] * boost[None, :, :]).reshape(n_subs * len(REGIONS), n_regions)
    return HistorySamplers(
        by_sub_region=GroupedSampler(pool, groups, weights, n_subs * n_regions),
        by_story=GroupedSampler(pool, catalogue.story[pool], weights, catalogue.n_stories),
        popular=GroupedSampler(pool, np.zeros(len(pool), dtype=np.int64), weights, 1),
        region_given_sub_home=region_table + 1e-300,
        stocked_subs=mass.sum(axis=1) > 0,
    )


def sample_histories(
    cfg: SynthConfig, catalogue: Catalogue, interest: np.ndarray, home: np.ndarray, samplers: HistorySamplers,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """History clicks before the log window, in reading order, without repeats.

    Reading comes in sessions: a session starts with an item of a subcategory the user likes (about
    the home region with extra weight) or, for ``explore_share`` of sessions, a popular item; each next
    click continues the session's story with probability ``story_continuation``.
    """
    lengths = history_lengths(cfg, len(interest), rng)
    owner = np.repeat(np.arange(len(interest)), lengths)
    position = np.arange(len(owner)) - offsets_from_lengths(lengths)[owner]
    continues = (rng.random(len(owner)) < cfg.story_continuation) & (position > 0)
    session = np.cumsum(~continues) - 1
    starter = owner[~continues]
    stocked = interest * samplers.stocked_subs[None, :] + 1e-12
    subcategory = categorical_rows(stocked, starter, rng)
    region = categorical_rows(samplers.region_given_sub_home, subcategory * len(REGIONS) + home[starter], rng)
    first = samplers.by_sub_region.draw(subcategory * (NO_PLACE + 1) + region, rng)
    explore = rng.random(len(first)) < cfg.explore_share
    first[explore] = samplers.popular.draw(np.zeros(int(explore.sum()), dtype=np.int64), rng)
    items = first[session]
    items[continues] = samplers.by_story.draw(catalogue.story[items[continues]], rng)
    order = np.lexsort((catalogue.published[items], catalogue.published[first[session]], owner))
    owner, items = owner[order], items[order]
    keep = first_occurrences(owner * np.int64(catalogue.size) + items)  # drops repeats, keeps reading order
    return items[keep], offsets_from_lengths(np.bincount(owner[keep], minlength=len(interest)))


def current_log_popularity(cfg: SynthConfig, catalogue: Catalogue, items: np.ndarray, when: np.ndarray) -> np.ndarray:
    age_days = np.maximum(when - catalogue.published[items], 0.0) / DAY
    return np.log(catalogue.base_popularity[items]) - np.log(2.0) * age_days / cfg.popularity_half_life_days


def fresh_bounds(catalogue: Catalogue, when: np.ndarray, freshness_days: float) -> tuple[np.ndarray, np.ndarray]:
    """Per time: the [low, high) item range published in the ``freshness_days`` before it (item index = time order)."""
    low = np.minimum(np.searchsorted(catalogue.published, when - freshness_days * DAY, side="left"), catalogue.size - 1)
    high = np.maximum(np.searchsorted(catalogue.published, when, side="right"), low + 1)
    return low, high


def popular_fresh_items(
    catalogue: Catalogue, shown_weight_cdf: np.ndarray, when: np.ndarray, owner: np.ndarray, freshness_days: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One fresh item per entry of ``owner`` (an impression), drawn ∝ popularity**exposure_bias."""
    low, high = fresh_bounds(catalogue, when, freshness_days)
    cdf_low = np.where(low > 0, shown_weight_cdf[np.maximum(low - 1, 0)], 0.0)
    cdf_high = shown_weight_cdf[high - 1]
    targets = cdf_low[owner] + rng.random(len(owner)) * (cdf_high - cdf_low)[owner]
    return np.minimum(np.searchsorted(shown_weight_cdf, targets, side="right"), high[owner] - 1)


@dataclass(frozen=True)
class StoryTimeline:
    """Items sorted by (story, publication time), so a story's items of a time range are one slice."""

    items: np.ndarray
    keys: np.ndarray  # story * STORY_KEY_SPAN + seconds since the first publication

    @classmethod
    def of(cls, catalogue: Catalogue) -> "StoryTimeline":
        order = np.lexsort((catalogue.published, catalogue.story))
        return cls(items=order, keys=cls.key(catalogue, catalogue.story[order], catalogue.published[order]))

    @staticmethod
    def key(catalogue: Catalogue, story: np.ndarray, when: np.ndarray) -> np.ndarray:
        return story * STORY_KEY_SPAN + (when - catalogue.published[0])


STORY_KEY_SPAN = 1e9  # seconds: far more than any log window, and exact in float64 for 10^6 stories


def followed_fresh_items(
    catalogue: Catalogue, timeline: StoryTimeline, followed: np.ndarray, user: np.ndarray, when: np.ndarray,
    owner: np.ndarray, freshness_days: float, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """For each entry of ``owner``: a fresh item of a random story the impression's user follows; (owners, items)
    of the entries where that story has one (the production recommender's share of personalised slots)."""
    n_stories = np.int64(catalogue.n_stories)
    reader = user[owner]
    first = np.searchsorted(followed, reader * n_stories)
    count = np.searchsorted(followed, (reader + 1) * n_stories) - first
    has = count > 0
    pick = followed[first[has] + (rng.random(int(has.sum())) * count[has]).astype(np.int64)] % n_stories
    at = when[owner[has]]
    low = np.searchsorted(timeline.keys, StoryTimeline.key(catalogue, pick, at - freshness_days * DAY), side="left")
    high = np.searchsorted(timeline.keys, StoryTimeline.key(catalogue, pick, at), side="right")
    fresh = high > low
    chosen = low[fresh] + (rng.random(int(fresh.sum())) * (high - low)[fresh]).astype(np.int64)
    return owner[has][fresh], timeline.items[chosen]


def sample_candidates(
    cfg: SynthConfig, catalogue: Catalogue, shown_weight_cdf: np.ndarray, timeline: StoryTimeline,
    followed: np.ndarray, user: np.ndarray, when: np.ndarray, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh items shown at each impression time, no repeats inside an impression: an
    ``exposure_followed_share`` of slots from the user's followed stories, the rest ∝ popularity**exposure_bias."""
    n = len(when)
    wanted = negative_binomial_lengths(rng, n, 2, cfg.candidates_mean, MAX_CANDIDATES)
    personal = rng.binomial(wanted, cfg.exposure_followed_share)
    personal_owner, personal_items = followed_fresh_items(
        catalogue, timeline, followed, user, when, np.repeat(np.arange(n), personal), cfg.freshness_days, rng)
    popular_owner = np.repeat(np.arange(n), wanted + 2 + wanted // 4)  # oversample: repeats are dropped
    popular_items = popular_fresh_items(catalogue, shown_weight_cdf, when, popular_owner, cfg.freshness_days, rng)
    owner = np.concatenate([personal_owner, popular_owner])
    items = np.concatenate([personal_items, popular_items])
    order = np.argsort(owner, kind="stable")  # per impression: personalised slots first, then the popular draws
    owner, items = owner[order], items[order]
    keep = first_occurrences(owner * np.int64(catalogue.size) + items)  # unique candidates in drawn order
    owner, items = owner[keep], items[keep]
    rank = np.arange(len(owner)) - offsets_from_lengths(np.bincount(owner, minlength=n))[owner]
    owner, items = owner[rank < wanted[owner]], items[rank < wanted[owner]]
    # MIND does not list clicked or personalised items first. One float key (impression + U[0, 1)) sorts as
    # lexsort((random, owner)) does, 4x faster.
    shuffle = np.argsort(owner + rng.random(len(owner)))
    return items[shuffle], offsets_from_lengths(np.bincount(owner, minlength=n))


def choose_clicks(
    utility: np.ndarray, offsets: np.ndarray, clicks_per_impression: float, rng: np.random.Generator
) -> np.ndarray:
    """Top-k of utility + Gumbel noise per impression (Plackett–Luce without replacement)."""
    n_impressions = len(offsets) - 1
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(n_impressions), lengths)
    perturbed = utility + rng.gumbel(size=len(utility))
    # One float key sorts by impression, then by descending utility (|perturbed| << 1e3 spacing).
    order = np.argsort(owner * 1e3 - np.clip(perturbed, -400, 400))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - offsets[owner[order]]
    k = 1 + rng.poisson(clicks_per_impression - 1, size=n_impressions)
    k = np.minimum(k, np.maximum(lengths - 1, 1))
    return (rank < k[owner]).astype(np.int8)


def followed_stories(catalogue: Catalogue, chunk_users: int, history: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sorted keys user * n_stories + story of every story in each user's history."""
    owner = np.repeat(np.arange(chunk_users), np.diff(offsets))
    return np.unique(owner * np.int64(catalogue.n_stories) + catalogue.story[history])


def sample_impressions(
    cfg: SynthConfig, catalogue: Catalogue, chunk: UserChunk, shown_weight_cdf: np.ndarray, timeline: StoryTimeline,
    window: tuple[float, float], spec: ScaleSpec, rng: np.random.Generator,
) -> ImpressionBlock:
    """Candidates and clicks: utility = interest + popularity + followed story + home region (+ Gumbel noise);
    a ``conformity_share`` of impressions is clicked by popularity alone."""
    user = np.repeat(np.arange(len(chunk.impressions_per_user)), chunk.impressions_per_user)
    when = rng.uniform(window[0], window[1], size=len(user))
    followed = followed_stories(catalogue, len(chunk.impressions_per_user), chunk.history_items, chunk.history_offsets)
    items, offsets = sample_candidates(cfg, catalogue, shown_weight_cdf, timeline, followed, user, when, rng)
    owner = np.repeat(np.arange(len(user)), np.diff(offsets))
    reader = user[owner]
    keys = reader * np.int64(catalogue.n_stories) + catalogue.story[items]
    position = np.minimum(np.searchsorted(followed, keys), max(len(followed) - 1, 0))
    signals = {
        "interest": np.log(chunk.interest[reader, catalogue.subcategory[items]] + 1e-3) / np.log(1e3),
        "popularity": current_log_popularity(cfg, catalogue, items, when[owner]),
        "story": (followed[position] == keys).astype(np.float64) if len(followed) else np.zeros(len(items)),
        "region": (catalogue.region[items] == chunk.home[reader]).astype(np.float64),
    }
    interested = (cfg.affinity_weight * signals["interest"] + cfg.popularity_weight * signals["popularity"]
                  + cfg.story_weight * signals["story"] + cfg.region_weight * signals["region"])
    conformist = (rng.random(len(user)) < cfg.conformity_share)[owner]
    signals["oracle"] = np.where(conformist, CONFORMITY_POPULARITY_WEIGHT * signals["popularity"], interested)
    labels = choose_clicks(signals["oracle"], offsets, spec.clicks_per_impression, rng)
    return ImpressionBlock(user=user, time=when, items=items, labels=labels, offsets=offsets, signals=signals)


# ---------------------------------------------------------------------------------------------
# Rendering TSV rows as bytes, vectorised over tokens
# ---------------------------------------------------------------------------------------------


def id_byte_table(catalogue: Catalogue) -> np.ndarray:
    """(items, 7) uint8 table of b'N123456' for every item."""
    text = "".join(f"N{number}" for number in catalogue.id_number).encode()
    return np.frombuffer(text, dtype=np.uint8).reshape(catalogue.size, 7)


def render_token_lists(
    id_bytes: np.ndarray, items: np.ndarray, offsets: np.ndarray, labels: np.ndarray | None
) -> list[bytes]:
    """Space-separated id lists per row (``N1 N2`` or ``N1-0 N2-1``), built as one byte block."""
    width = id_bytes.shape[1] + (2 if labels is not None else 0) + 1
    block = np.empty((len(items), width), dtype=np.uint8)
    block[:, : id_bytes.shape[1]] = id_bytes[items]
    if labels is not None:
        block[:, -3] = ord("-")
        block[:, -2] = ord("0") + labels
    block[:, -1] = ord(" ")
    buffer = block.tobytes()
    starts, ends = offsets[:-1] * width, np.maximum(offsets[1:] * width - 1, offsets[:-1] * width)
    return [buffer[start:end] for start, end in zip(starts.tolist(), ends.tolist())]


def mind_time_table(window_start: float, n_days: int) -> tuple[list[str], list[str]]:
    """Per-day ``M/D/YYYY `` prefixes and per-second ``H:MM:SS AM`` suffixes (MIND's format)."""
    start = datetime.fromtimestamp(window_start, tz=timezone.utc)
    days = [f"{d.month}/{d.day}/{d.year} " for d in (start + timedelta(days=i) for i in range(n_days + 1))]
    clock = []
    for second in range(86400):
        hour, minute, sec = second // 3600, (second // 60) % 60, second % 60
        clock.append(f"{(hour % 12) or 12}:{minute:02d}:{sec:02d} {'AM' if hour < 12 else 'PM'}")
    return days, clock


# ---------------------------------------------------------------------------------------------
# Orchestration: resumable, chunked, streamed to disk
# ---------------------------------------------------------------------------------------------


@dataclass
class SynthProgress:
    next_chunk: int = 0
    bytes_written: dict[str, int] | None = None
    next_impression_id: dict[str, int] | None = None
    rows: dict[str, int] | None = None
    clicks: dict[str, int] | None = None
    candidates: dict[str, int] | None = None
    history_clicks: int = 0
    short_history_users: int = 0
    history_pairs: int = 0  # consecutive history clicks of one user ...
    history_story_pairs: int = 0  # ... and of those, the pairs inside one story
    home_region_clicks: int = 0
    dev_users: int = 0
    dev_only_users: int = 0  # users whose every impression is on the dev days
    dev_candidates_of_dev_news: int = 0  # dev candidates published on the dev days: no training click possible
    signal_auc_sums: dict[str, float] | None = None  # per planted signal, AUC summed over dev impressions
    signal_auc_impressions: int = 0


def chunk_bounds(impressions_per_user: np.ndarray, chunk_impressions: int) -> list[tuple[int, int]]:
    """User ranges holding about ``chunk_impressions`` impressions each (bounded memory)."""
    cumulative = np.cumsum(impressions_per_user)
    cuts = np.searchsorted(cumulative, np.arange(chunk_impressions, cumulative[-1], chunk_impressions))
    edges = np.unique(np.concatenate([[0], cuts + 1, [len(impressions_per_user)]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def window_start_seconds(cfg: SynthConfig) -> float:
    return datetime.strptime(cfg.start_date, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()


class SynthWriter:
    """Appends behaviors rows to train/dev files and tracks what a resumed run must skip."""

    def __init__(self, work: ResumableDir, progress: SynthProgress, splits: list[str]) -> None:
        self.work = work
        self.progress = progress
        self.splits = splits
        for name in ("bytes_written", "next_impression_id", "rows", "clicks", "candidates"):
            if getattr(progress, name) is None:
                setattr(progress, name, {split: (1 if name == "next_impression_id" else 0) for split in splits})
        self.handles = {}
        for split in splits:
            path = work.path / split / "behaviors.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            handle = open(path, "r+b")
            handle.truncate(progress.bytes_written[split])  # drop a partly written chunk
            handle.seek(0, 2)
            self.handles[split] = handle

    def write(self, split: str, lines: list[bytes], clicks: int, candidates: int) -> None:
        handle = self.handles[split]
        handle.write(b"".join(lines))
        self.progress.rows[split] += len(lines)
        self.progress.next_impression_id[split] += len(lines)
        self.progress.clicks[split] += clicks
        self.progress.candidates[split] += candidates

    def checkpoint(self, next_chunk: int) -> None:
        for split, handle in self.handles.items():
            handle.flush()
            self.progress.bytes_written[split] = handle.tell()
        self.progress.next_chunk = next_chunk
        self.work.save(asdict(self.progress))

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def generate(cfg: SynthConfig, out_dir: Path, *, show_progress: bool = True) -> dict[str, Any]:
    """Write ``out_dir/{train,dev}/{news,behaviors}.tsv`` in MIND's layout; returns statistics.

    Skips work when ``out_dir`` already holds data from the same config; resumes a killed run.
    """
    out_dir = Path(out_dir)
    config = asdict(cfg)
    if is_up_to_date(out_dir, "synth", {}, config):
        return json.loads((out_dir / "synth_stats.json").read_text())
    spec = resolve_scale(cfg)
    work = ResumableDir(out_dir, Manifest(stage="synth", inputs={}, config=config).fingerprint())
    progress = SynthProgress(**work.state) if work.state else SynthProgress()
    stats = _generate_into(cfg, spec, work, progress, show_progress)
    atomic_write_text(work.path / "synth_stats.json", json.dumps(stats, indent=2))
    Manifest(stage="synth", inputs={}, config=config, rows=stats["rows"]).write(work.path)
    work.publish()
    return stats


def _generate_into(
    cfg: SynthConfig, spec: ScaleSpec, work: ResumableDir, progress: SynthProgress, show_progress: bool
) -> dict[str, Any]:
    rng = np.random.default_rng([cfg.seed, 0])
    start = window_start_seconds(cfg)
    catalogue = build_catalogue(cfg, spec, start, rng)
    samplers = history_samplers(cfg, catalogue, start)
    shown_weight_cdf = np.cumsum(catalogue.base_popularity ** cfg.exposure_bias)
    timeline = StoryTimeline.of(catalogue)
    activity = rng.lognormal(0.0, 1.0, size=spec.n_users)
    impressions_per_user = 1 + rng.multinomial(spec.n_impressions - spec.n_users, activity / activity.sum())
    splits = ["train", "dev"]
    dev_start = start + cfg.train_days * DAY
    window = (start, dev_start + cfg.dev_days * DAY)
    if progress.next_chunk == 0:
        _write_news(cfg, catalogue, work.path, splits, np.random.default_rng([cfg.seed, 1]))
    writer = SynthWriter(work, progress, splits)
    days, clock = mind_time_table(start, cfg.train_days + cfg.dev_days)
    id_bytes = id_byte_table(catalogue)
    bounds = chunk_bounds(impressions_per_user, cfg.chunk_impressions)
    with progress_bar("synth impressions", total=spec.n_impressions, enabled=show_progress) as advance:
        advance(sum((progress.rows or {}).values()))  # rows written before a resume
        for chunk_index in range(progress.next_chunk, len(bounds)):
            first, last = bounds[chunk_index]
            chunk_rng = np.random.default_rng([cfg.seed, 2, chunk_index])
            interest = user_interests(catalogue, last - first, chunk_rng)
            home = chunk_rng.choice(len(REGIONS), size=last - first, p=REGION_WEIGHTS)
            history, history_offsets = sample_histories(cfg, catalogue, interest, home, samplers, chunk_rng)
            chunk = UserChunk(first, impressions_per_user[first:last], interest, home, history, history_offsets)
            block = sample_impressions(cfg, catalogue, chunk, shown_weight_cdf, timeline, window, spec, chunk_rng)
            _count_chunk(progress, cfg, catalogue, chunk, block, dev_start)
            dev_ids = _write_block(writer, chunk, block, id_bytes, (days, clock), start, dev_start)
            _write_latent_chunk(work.path, chunk_index, catalogue, chunk, block, block.time >= dev_start, dev_ids)
            writer.checkpoint(chunk_index + 1)
            advance(len(block.user))
    writer.close()
    return _statistics(spec, catalogue, progress, len(impressions_per_user), dev_start)


ORACLE = "oracle"  # the raw directory's latent side files: read by the evaluation's oracle row and by tests only


def _write_news(cfg: SynthConfig, catalogue: Catalogue, work: Path, splits: list[str], rng: np.random.Generator) -> None:
    text = "\n".join(news_rows(cfg, catalogue, rng)) + "\n"
    for split in splits:
        atomic_write_text(work / split / "news.tsv", text)
    latent = pa.table({
        "news_id": [f"N{number}" for number in catalogue.id_number],
        "story": pa.array(catalogue.story, pa.int32()),
        "region": [REGIONS[r] if r < NO_PLACE else None for r in catalogue.region.tolist()],
        "place": [catalogue.story_place[s] or None for s in catalogue.story.tolist()],
        "story_words": [list(catalogue.story_words[s]) for s in catalogue.story.tolist()],
    })
    (work / ORACLE).mkdir(parents=True, exist_ok=True)
    pq.write_table(latent, work / ORACLE / "news.parquet")


def _count_chunk(
    progress: SynthProgress, cfg: SynthConfig, catalogue: Catalogue, chunk: UserChunk, block: ImpressionBlock,
    dev_start: float,
) -> None:
    """The summary's counts for one chunk (kept in the progress file, so a resumed run adds up the same)."""
    lengths = np.diff(chunk.history_offsets)
    progress.history_clicks += len(chunk.history_items)
    progress.short_history_users += int((lengths <= cfg.cold_history_max).sum())
    same_user = np.repeat(np.arange(len(lengths)), lengths)
    stories = catalogue.story[chunk.history_items]
    consecutive = same_user[1:] == same_user[:-1]
    progress.history_pairs += int(consecutive.sum())
    progress.history_story_pairs += int((consecutive & (stories[1:] == stories[:-1])).sum())
    progress.home_region_clicks += int(block.signals["region"][block.labels == 1].sum())
    is_dev = block.time >= dev_start
    dev_impressions = np.bincount(block.user, weights=is_dev, minlength=len(lengths))
    progress.dev_users += int((dev_impressions > 0).sum())
    progress.dev_only_users += int((dev_impressions == chunk.impressions_per_user).sum())
    dev_candidate = np.repeat(is_dev, np.diff(block.offsets))
    progress.dev_candidates_of_dev_news += int((catalogue.published[block.items[dev_candidate]] >= dev_start).sum())
    sums, count = signal_aucs(block, is_dev)
    progress.signal_auc_sums = {name: (progress.signal_auc_sums or {}).get(name, 0.0) + value
                                for name, value in sums.items()}
    progress.signal_auc_impressions += count


def signal_aucs(block: ImpressionBlock, rows: np.ndarray) -> tuple[dict[str, float], int]:
    """Per planted signal: its AUC as the only scorer, summed over the chosen impressions (MIND's per-impression AUC)."""
    lengths = np.diff(block.offsets)
    candidate = np.repeat(rows, lengths)
    offsets = offsets_from_lengths(lengths[rows])
    if not rows.any():
        return {name: 0.0 for name in block.signals}, 0
    sums = {name: float(np.nansum(impression_metrics(values[candidate], block.labels[candidate], offsets,
                                                     ks=(1,))["auc"])) for name, values in block.signals.items()}
    return sums, int(rows.sum())


def _write_latent_chunk(
    work: Path, chunk_index: int, catalogue: Catalogue, chunk: UserChunk, block: ImpressionBlock,
    is_dev: np.ndarray, dev_ids: np.ndarray,
) -> None:
    """Users' home regions, and every dev candidate's true click utility (the oracle), one file per chunk."""
    lengths = np.diff(block.offsets)
    candidate = np.repeat(is_dev, lengths)
    offsets = pa.array(offsets_from_lengths(lengths[is_dev]).astype(np.int32))
    oracle = pa.table({
        "impression_id": pa.array(dev_ids, pa.int64()),
        "news_number": pa.ListArray.from_arrays(offsets, pa.array(catalogue.id_number[block.items[candidate]], pa.int32())),
        "utility": pa.ListArray.from_arrays(offsets, pa.array(block.signals["oracle"][candidate], pa.float32())),
    })
    users = pa.table({
        "user_id": [f"U{USER_ID_BASE + chunk.first_user + u}" for u in range(len(chunk.home))],
        "home_region": [REGIONS[r] for r in chunk.home.tolist()],
    })
    for kind, table in (("dev", oracle), ("users", users)):
        target = work / ORACLE / kind / f"part-{chunk_index:05d}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)  # a killed chunk never leaves half a file


def _write_block(
    writer: SynthWriter, chunk: UserChunk, block: ImpressionBlock, id_bytes: np.ndarray,
    time_table: tuple[list[str], list[str]], start: float, dev_start: float,
) -> np.ndarray:
    """Append the chunk's rows to each split; returns the impression ids given to its dev rows, in row order."""
    histories = render_token_lists(id_bytes, chunk.history_items, chunk.history_offsets, None)
    impressions = render_token_lists(id_bytes, block.items, block.offsets, block.labels)
    days, clock = time_table
    seconds = np.floor(block.time - start).astype(np.int64)
    day_index, second_of_day = (seconds // 86400).tolist(), (seconds % 86400).tolist()
    clicks = np.add.reduceat(block.labels.astype(np.int64), block.offsets[:-1]) if len(block.labels) else np.zeros(0)
    lengths = np.diff(block.offsets)
    is_dev = block.time >= dev_start
    dev_ids = np.zeros(0, dtype=np.int64)
    for split, mask in (("train", ~is_dev), ("dev", is_dev)):
        rows = np.flatnonzero(mask)
        next_id = writer.progress.next_impression_id[split]
        if split == "dev":
            dev_ids = next_id + np.arange(len(rows), dtype=np.int64)
        lines = [
            b"%d\tU%d\t%s\t%s\t%s\n" % (
                next_id + position, USER_ID_BASE + chunk.first_user + user,
                (days[day_index[row]] + clock[second_of_day[row]]).encode(), histories[user], impressions[row],
            )
            for position, (row, user) in enumerate(zip(rows.tolist(), block.user[rows].tolist()))
        ]
        writer.write(split, lines, int(clicks[rows].sum()), int(lengths[rows].sum()))
    return dev_ids


def _statistics(
    spec: ScaleSpec, catalogue: Catalogue, progress: SynthProgress, n_users: int, dev_start: float,
) -> dict[str, Any]:
    rows = dict(progress.rows or {})
    clicks = dict(progress.clicks or {})
    candidates = dict(progress.candidates or {})
    total_rows = sum(rows.values())
    scored = max(progress.signal_auc_impressions, 1)
    story_sizes_seen = np.bincount(catalogue.story)
    return {
        "requested": asdict(spec),
        "users": n_users,
        "history_clicks_per_user": progress.history_clicks / max(n_users, 1),
        "short_history_user_share": progress.short_history_users / max(n_users, 1),
        "news": catalogue.size,
        "impressions": total_rows,
        "clicks": sum(clicks.values()),
        "clicks_per_impression": sum(clicks.values()) / max(total_rows, 1),
        "candidates_per_impression": sum(candidates.values()) / max(total_rows, 1),
        "rows": rows,
        "clicks_by_split": clicks,
        "categories": len(catalogue.categories),
        "subcategories": len(catalogue.subcategories),
        "stories": catalogue.n_stories,
        "news_per_story": {"mean": float(story_sizes_seen.mean()), "max": int(story_sizes_seen.max())},
        "news_with_a_place_share": float((catalogue.region < NO_PLACE).mean()),
        "history_story_continuation_rate": progress.history_story_pairs / max(progress.history_pairs, 1),
        "home_region_click_share": progress.home_region_clicks / max(sum(clicks.values()), 1),
        "cold": {
            "news_published_on_dev_days": int((catalogue.published >= dev_start).sum()),
            "dev_candidate_share_of_dev_day_news": progress.dev_candidates_of_dev_news / max(candidates.get("dev", 0), 1),
            "dev_users": progress.dev_users,
            "dev_only_users": progress.dev_only_users,
        },
        # Each planted signal as the only scorer of the dev impressions; "oracle" is the true click utility.
        "dev_signal_auc": {name: value / scored for name, value in (progress.signal_auc_sums or {}).items()},
    }
