"""MIND-format synthetic data with planted signal (``newsrec data synth``).

What is planted, and the knobs that set it (all in :class:`~newsrec_dist.config.SynthConfig`):

* **Topics in text.** Every news item has a category and subcategory; its title and abstract are
  drawn from that subcategory's and category's words mixed with topic-free words, so a text
  encoder can recover the topic (``vocabulary.TOPICS``). Each abstract also restates three words of
  its own title, the per-item link title → abstract retrieval relies on.
* **Users.** Each user has a sparse latent mixture over subcategories (Dirichlet over categories,
  then within the category). A ``cold_user_share`` of users has at most ``cold_history_max``
  history clicks.
* **Popularity.** Items have a Zipf base popularity that halves every
  ``popularity_half_life_days`` after publication. Candidates shown in an impression are the
  items published in the last ``freshness_days``, drawn with weight ``popularity**shown_popularity_bias``.
* **Clicks.** Candidate utility = ``affinity_weight`` × user–subcategory affinity +
  ``popularity_weight`` × log(current popularity) + Gumbel noise; the top 1+Poisson utilities of
  an impression are clicked (Plackett–Luce sampling without replacement), so every impression has
  at least one click and one non-click. History clicks follow the same mixture, with an
  ``explore_share`` of popularity-only clicks; users who share interests co-click the same items,
  which is the structure the co-occurrence graphs capture.

The ratio ``affinity_weight / popularity_weight`` sets the difficulty: a popularity baseline lands
near 0.55–0.62 AUC and content-aware models around 0.70–0.80 (see ``docs/data.md``).

The generator streams users in chunks of bounded size and appends to the output files; a progress
file lets a killed run resume at the last finished chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from newsrec_dist.arrays import offsets_from_lengths
from newsrec_dist.config import SynthConfig
from newsrec_dist.data.vocabulary import GENERAL_WORDS, TOPICS
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
    rng: np.random.Generator, size: int, minimum: int, mean: float, maximum: int
) -> np.ndarray:
    """Skewed counts ≥ ``minimum`` with the given mean (over-dispersed like MIND's)."""
    extra_mean = max(mean - minimum, 1e-3)
    dispersion = 1.5
    draws = rng.negative_binomial(dispersion, dispersion / (dispersion + extra_mean), size=size)
    return np.clip(minimum + draws, minimum, maximum)


# ---------------------------------------------------------------------------------------------
# The catalogue: news items with topics, publication times, popularity and text
# ---------------------------------------------------------------------------------------------


@dataclass
class Catalogue:
    categories: list[str]
    subcategories: list[str]
    sub_to_cat: np.ndarray
    category: np.ndarray  # per item, index into categories
    subcategory: np.ndarray  # per item, index into subcategories
    published: np.ndarray  # seconds since the epoch, sorted ascending (item index = time order)
    base_popularity: np.ndarray
    id_number: np.ndarray  # item index -> number in its id N<number>

    @property
    def size(self) -> int:
        return len(self.category)


def topic_tables() -> tuple[list[str], list[str], np.ndarray]:
    categories = list(TOPICS)
    subcategories: list[str] = []
    sub_to_cat: list[int] = []
    for cat_index, (_, subs) in enumerate(TOPICS.values()):
        subcategories.extend(subs)
        sub_to_cat.extend([cat_index] * len(subs))
    return categories, subcategories, np.asarray(sub_to_cat)


def build_catalogue(cfg: SynthConfig, spec: ScaleSpec, window_start: float, rng: np.random.Generator) -> Catalogue:
    categories, subcategories, sub_to_cat = topic_tables()
    # Category sizes are skewed like MIND's (news and sports dominate).
    sub_weights = rng.dirichlet(np.full(len(subcategories), 2.0))
    subcategory = rng.choice(len(subcategories), size=spec.n_news, p=sub_weights)
    span_start = window_start - cfg.history_days * DAY
    span_end = window_start + (cfg.train_days + cfg.dev_days) * DAY
    published = np.sort(rng.uniform(span_start - cfg.freshness_days * DAY, span_end, size=spec.n_news))
    zipf_rank = rng.permutation(spec.n_news) + 1
    return Catalogue(
        categories=categories,
        subcategories=subcategories,
        sub_to_cat=sub_to_cat,
        category=sub_to_cat[subcategory],
        subcategory=subcategory,
        published=published,
        base_popularity=zipf_rank.astype(np.float64) ** -0.9,
        id_number=NEWS_ID_BASE + rng.permutation(spec.n_news),
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
        for sub_words in subs.values():
            slices.append(((len(words), len(sub_words)), cat_slice))
            words.extend(sub_words)
    off_topic = (topical_start, len(words) - topical_start)
    table = np.array([[sub, cat, general, off_topic] for sub, cat in slices])  # (subs, 4, 2)
    return WordPools(words=np.array(words, dtype=object), starts=table[:, :, 0], sizes=table[:, :, 1])


def random_texts(
    pools: WordPools, subcategory: np.ndarray, min_words: int, max_words: int, rng: np.random.Generator
) -> list[str]:
    """One text per item: each word drawn from a pool chosen by TEXT_POOL_SHARES (vectorised)."""
    lengths = rng.integers(min_words, max_words + 1, size=len(subcategory))
    owner_sub = np.repeat(subcategory, lengths)
    pool = rng.choice(4, size=len(owner_sub), p=TEXT_POOL_SHARES)
    word_ids = pools.starts[owner_sub, pool] + (rng.random(len(pool)) * pools.sizes[owner_sub, pool]).astype(np.int64)
    words = pools.words[word_ids].tolist()
    offsets = offsets_from_lengths(lengths).tolist()
    return [" ".join(words[start:stop]).capitalize() for start, stop in zip(offsets[:-1], offsets[1:])]


STORY_WORDS = 3  # title words each abstract restates


def echo_title_words(titles: list[str], abstracts: list[str], rng: np.random.Generator) -> list[str]:
    """Each abstract restates ``STORY_WORDS`` of its own title's words at random places.

    Real abstracts restate their headline; this is the per-item title ↔ abstract link that the
    encoder's contrastive fine-tuning learns (topic words alone only identify the subcategory).
    """
    echoed = []
    for title, abstract in zip(titles, abstracts):
        title_words, words = title.lower().split(), abstract.lower().split()
        for pick in rng.choice(len(title_words), size=min(STORY_WORDS, len(title_words)), replace=False):
            words.insert(int(rng.integers(0, len(words) + 1)), title_words[pick])
        echoed.append(" ".join(words).capitalize())
    return echoed


def entity_json(title: str, word: str, wikidata_number: int) -> str:
    """MIND's entity list: the subcategory's head word as an entity where the title mentions it."""
    offset = title.lower().find(word)
    if offset < 0:
        return "[]"
    entity = {
        "Label": word.capitalize(), "Type": "O", "WikidataId": f"Q{wikidata_number}", "Confidence": 1.0,
        "OccurrenceOffsets": [offset], "SurfaceForms": [title[offset:offset + len(word)]],
    }
    return json.dumps([entity], separators=(", ", ": "))


def news_rows(catalogue: Catalogue, rng: np.random.Generator) -> list[str]:
    """news.tsv lines: text from topic vocabularies, a title entity for some items."""
    pools = word_pools()
    titles = random_texts(pools, catalogue.subcategory, 7, 14, rng)
    abstracts = echo_title_words(titles, random_texts(pools, catalogue.subcategory, 18, 39, rng), rng)
    head_words = [str(pools.words[start]) for start in pools.starts[:, 0]]
    rows = []
    for item, sub in enumerate(catalogue.subcategory.tolist()):
        news_id = f"N{catalogue.id_number[item]}"
        rows.append("\t".join([
            news_id, catalogue.categories[catalogue.sub_to_cat[sub]], catalogue.subcategories[sub],
            titles[item], abstracts[item] + ".", f"https://synth.newsrec.invalid/{news_id}.html",
            entity_json(titles[item], head_words[sub], 1000 + sub), "[]",
        ]))
    return rows


# ---------------------------------------------------------------------------------------------
# Users: interests, histories and impressions (one chunk of users at a time)
# ---------------------------------------------------------------------------------------------


@dataclass
class UserChunk:
    first_user: int
    impressions_per_user: np.ndarray
    interest: np.ndarray  # (users, subcategories), rows sum to 1
    history_items: np.ndarray
    history_offsets: np.ndarray


@dataclass
class ImpressionBlock:
    user: np.ndarray  # per impression, index into the chunk
    time: np.ndarray
    items: np.ndarray  # flat candidates
    labels: np.ndarray  # flat, int8
    offsets: np.ndarray


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


def sample_histories(
    cfg: SynthConfig, catalogue: Catalogue, interest: np.ndarray, samplers: dict[str, GroupedSampler],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """History clicks before the log window, oldest first, without repeats."""
    lengths = history_lengths(cfg, len(interest), rng)
    owner = np.repeat(np.arange(len(interest)), lengths)
    # Small catalogues may lack old items in some subcategories: draw only from stocked ones.
    stocked = interest * samplers["history_by_sub"].non_empty[None, :] + 1e-12
    subcategory = categorical_rows(stocked, owner, rng)
    items = samplers["history_by_sub"].draw(subcategory, rng)
    explore = rng.random(len(owner)) < cfg.explore_share
    items[explore] = samplers["history_global"].draw(np.zeros(int(explore.sum()), dtype=np.int64), rng)
    pairs = np.unique(owner * np.int64(catalogue.size) + items)  # drops repeats, sorts by (owner, item)
    owner, items = pairs // catalogue.size, pairs % catalogue.size
    order = np.lexsort((catalogue.published[items], owner))  # item index is time order
    counts = np.bincount(owner, minlength=len(interest))
    return items[order], offsets_from_lengths(counts)


def current_log_popularity(cfg: SynthConfig, catalogue: Catalogue, items: np.ndarray, when: np.ndarray) -> np.ndarray:
    age_days = np.maximum(when - catalogue.published[items], 0.0) / DAY
    return np.log(catalogue.base_popularity[items]) - np.log(2.0) * age_days / cfg.popularity_half_life_days


def sample_candidates(
    cfg: SynthConfig, catalogue: Catalogue, shown_weight_cdf: np.ndarray, when: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh items shown at each impression time, ∝ popularity**bias, no repeats inside an impression."""
    wanted = negative_binomial_lengths(rng, len(when), 2, cfg.candidates_mean, MAX_CANDIDATES)
    owner = np.repeat(np.arange(len(when)), wanted + 2 + wanted // 4)  # oversample: repeats are dropped
    low = np.searchsorted(catalogue.published, when - cfg.freshness_days * DAY, side="left")
    low = np.minimum(low, catalogue.size - 1)
    high = np.maximum(np.searchsorted(catalogue.published, when, side="right"), low + 1)
    cdf_low = np.where(low > 0, shown_weight_cdf[np.maximum(low - 1, 0)], 0.0)
    cdf_high = shown_weight_cdf[high - 1]
    targets = cdf_low[owner] + rng.random(len(owner)) * (cdf_high - cdf_low)[owner]
    items = np.minimum(np.searchsorted(shown_weight_cdf, targets, side="right"), high[owner] - 1)
    _, first = np.unique(owner * np.int64(catalogue.size) + items, return_index=True)
    keep = np.sort(first)  # unique candidates in drawn order (np.unique sorts by item)
    owner, items = owner[keep], items[keep]
    rank = np.arange(len(owner)) - offsets_from_lengths(np.bincount(owner, minlength=len(when)))[owner]
    owner, items = owner[rank < wanted[owner]], items[rank < wanted[owner]]
    return items, offsets_from_lengths(np.bincount(owner, minlength=len(when)))


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


def sample_impressions(
    cfg: SynthConfig, catalogue: Catalogue, chunk: UserChunk, shown_weight_cdf: np.ndarray,
    window: tuple[float, float], spec: ScaleSpec, rng: np.random.Generator,
) -> ImpressionBlock:
    user = np.repeat(np.arange(len(chunk.impressions_per_user)), chunk.impressions_per_user)
    when = rng.uniform(window[0], window[1], size=len(user))
    items, offsets = sample_candidates(cfg, catalogue, shown_weight_cdf, when, rng)
    owner = np.repeat(np.arange(len(user)), np.diff(offsets))
    affinity = np.log(chunk.interest[user[owner], catalogue.subcategory[items]] + 1e-3)
    utility = (cfg.affinity_weight * affinity / np.log(1e3)
               + cfg.popularity_weight * current_log_popularity(cfg, catalogue, items, when[owner]))
    labels = choose_clicks(utility, offsets, spec.clicks_per_impression, rng)
    return ImpressionBlock(user=user, time=when, items=items, labels=labels, offsets=offsets)


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


def history_samplers(catalogue: Catalogue, window_start: float) -> dict[str, GroupedSampler]:
    """Samplers over news published before the log window: by subcategory, and popularity only."""
    pool = np.flatnonzero(catalogue.published < window_start)
    if len(pool) == 0:
        raise ValueError("no news published before the log window: raise n_news or history_days")
    weights = catalogue.base_popularity[pool]
    return {
        "history_by_sub": GroupedSampler(pool, catalogue.subcategory[pool], weights, len(catalogue.subcategories)),
        "history_global": GroupedSampler(pool, np.zeros(len(pool), dtype=np.int64), weights, 1),
    }


def _generate_into(
    cfg: SynthConfig, spec: ScaleSpec, work: ResumableDir, progress: SynthProgress, show_progress: bool
) -> dict[str, Any]:
    rng = np.random.default_rng([cfg.seed, 0])
    start = window_start_seconds(cfg)
    catalogue = build_catalogue(cfg, spec, start, rng)
    samplers = history_samplers(catalogue, start)
    shown_weight_cdf = np.cumsum(catalogue.base_popularity ** cfg.shown_popularity_bias)
    activity = rng.lognormal(0.0, 1.0, size=spec.n_users)
    impressions_per_user = 1 + rng.multinomial(spec.n_impressions - spec.n_users, activity / activity.sum())
    splits = ["train", "dev"]
    dev_start = start + cfg.train_days * DAY
    window = (start, dev_start + cfg.dev_days * DAY)
    if progress.next_chunk == 0:
        _write_news(catalogue, work.path, splits, np.random.default_rng([cfg.seed, 1]))
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
            history, history_offsets = sample_histories(cfg, catalogue, interest, samplers, chunk_rng)
            progress.history_clicks += len(history)
            progress.short_history_users += int((np.diff(history_offsets) <= cfg.cold_history_max).sum())
            chunk = UserChunk(first, impressions_per_user[first:last], interest, history, history_offsets)
            block = sample_impressions(cfg, catalogue, chunk, shown_weight_cdf, window, spec, chunk_rng)
            _write_block(writer, chunk, block, id_bytes, (days, clock), start, dev_start)
            writer.checkpoint(chunk_index + 1)
            advance(len(block.user))
    writer.close()
    return _statistics(spec, catalogue, progress, len(impressions_per_user))


def _write_news(catalogue: Catalogue, work: Path, splits: list[str], rng: np.random.Generator) -> None:
    text = "\n".join(news_rows(catalogue, rng)) + "\n"
    for split in splits:
        atomic_write_text(work / split / "news.tsv", text)


def _write_block(
    writer: SynthWriter, chunk: UserChunk, block: ImpressionBlock, id_bytes: np.ndarray,
    time_table: tuple[list[str], list[str]], start: float, dev_start: float,
) -> None:
    histories = render_token_lists(id_bytes, chunk.history_items, chunk.history_offsets, None)
    impressions = render_token_lists(id_bytes, block.items, block.offsets, block.labels)
    days, clock = time_table
    seconds = np.floor(block.time - start).astype(np.int64)
    day_index, second_of_day = (seconds // 86400).tolist(), (seconds % 86400).tolist()
    clicks = np.add.reduceat(block.labels.astype(np.int64), block.offsets[:-1]) if len(block.labels) else np.zeros(0)
    lengths = np.diff(block.offsets)
    is_dev = block.time >= dev_start
    for split, mask in (("train", ~is_dev), ("dev", is_dev)):
        rows = np.flatnonzero(mask)
        next_id = writer.progress.next_impression_id[split]
        lines = [
            b"%d\tU%d\t%s\t%s\t%s\n" % (
                next_id + position, USER_ID_BASE + chunk.first_user + user,
                (days[day_index[row]] + clock[second_of_day[row]]).encode(), histories[user], impressions[row],
            )
            for position, (row, user) in enumerate(zip(rows.tolist(), block.user[rows].tolist()))
        ]
        writer.write(split, lines, int(clicks[rows].sum()), int(lengths[rows].sum()))


def _statistics(
    spec: ScaleSpec, catalogue: Catalogue, progress: SynthProgress, n_users: int
) -> dict[str, Any]:
    rows = dict(progress.rows or {})
    clicks = dict(progress.clicks or {})
    candidates = dict(progress.candidates or {})
    total_rows = sum(rows.values())
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
    }
