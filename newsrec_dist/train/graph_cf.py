"""Graph collaborative filtering (``model.kind: graph_cf``): LightGCN and PFR on the user-news click graph.

**Time split.** Training edges are every history click (before the logged window) and every click of the
``train`` split; test edges are the clicks of ``train.eval_split`` (MIND's dev day follows its train days: the
split is checked to start after training ends). Every click row is accounted for: kept, or rejected with its
reason (news missing from news.tsv, a repeat of an edge, a test user without any training click, a test click on
news the user had already clicked). News without a training edge are the **cold items**.

**Evaluation** (``eval.topk``): per test user, the pool (``eval.topk_pool``: the news shown in the test split's
impressions, or the whole catalogue) minus what the user clicked in training is ranked; ``all`` ranks the pool,
``cold_items`` only its cold news (can a model order news nobody clicked yet?), ``warm_items`` only its news with
training clicks. Negatives for BPR are drawn from warm news, the items plain LightGCN can know at training time,
or (PFR, ``model.graph.negatives: all``) from every news item, cold ones included: their text vectors must learn
to rank below what users click.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from newsrec_dist.arrays import first_occurrences
from newsrec_dist.eval.impressions import ImpressionSet, NewsCatalog, load_catalog, load_impressions
from newsrec_dist.eval.significance import PER_USER_FILE, write_per_impression
from newsrec_dist.eval.topk import Csr, ScoreChunk, top_items, topk_means, topk_per_user
from newsrec_dist.models.lightgcn import GraphRecommender
from newsrec_dist.progress import ProgressFactory
from newsrec_dist.train.features import vector_source
from newsrec_dist.train.samples import EpochBatches

GROUPS = ("all", "cold_items", "warm_items")
UNKNOWN_NEWS = "news id not in news.tsv"


@dataclass
class ClickGraph:
    catalog: NewsCatalog
    user_ids: np.ndarray  # row -> user id (users with a training edge)
    edges: np.ndarray  # [2, E] (user row, news code), distinct
    test_users: np.ndarray  # test edges, distinct
    test_items: np.ndarray
    warm: np.ndarray  # [news] has a training edge
    shown: np.ndarray  # [news] shown in a test impression
    accounting: dict[str, Any]
    profiles: torch.Tensor | None
    coverage: dict[str, Any]

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def train_csr(self) -> Csr:
        return Csr.of_pairs(self.edges[0], self.edges[1], self.n_users)

    def test_csr(self) -> Csr:
        return Csr.of_pairs(self.test_users, self.test_items, self.n_users)


class Ledger:
    """Per source: rows read, kept, rejected by reason (read = kept + rejected)."""

    def __init__(self) -> None:
        self.sources: dict[str, dict[str, Any]] = {}

    def read(self, source: str, rows: int) -> None:
        self.sources[source] = {"rows": rows, "kept": rows, "rejected": {}}

    def reject(self, source: str, reason: str, keep: np.ndarray) -> np.ndarray:
        dropped = int((~keep).sum())
        if dropped:
            entry = self.sources[source]
            entry["kept"] -= dropped
            entry["rejected"][reason] = entry["rejected"].get(reason, 0) + dropped
        return keep


def _pairs(impressions: ImpressionSet, clicked_only: bool) -> tuple[pa.Array, np.ndarray]:
    """(user id, news code) per click (``clicked_only``) or per history entry."""
    if clicked_only:
        assert impressions.labels is not None
        clicked = impressions.labels.astype(bool)
        owner = impressions.candidate_owner()[clicked]
        return impressions.user_id.take(pa.array(owner)), impressions.candidates[clicked]
    owner = np.repeat(np.arange(impressions.size), impressions.history_lengths())
    return impressions.user_id.take(pa.array(owner)), impressions.history


def _distinct(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Mask keeping the first of each repeated (user, news) pair."""
    return first_occurrences(users.astype(np.int64) * n_items + items)


def _check_time_split(train: ImpressionSet, test: ImpressionSet, split: str, prepared: Path) -> None:
    if train.size and test.size and test.time.min() < train.time.max():
        raise ValueError(f"{prepared}: split {split!r} starts at {int(test.time.min())}, before the train split ends "
                         f"({int(train.time.max())}): not a time split, test clicks would leak into training")


def load_click_graph(prepared: Path, eval_split: str, profiles_path: str | None, keywords_path: str) -> ClickGraph:
    catalog = load_catalog(prepared)
    train, test = load_impressions(prepared, "train", catalog), load_impressions(prepared, eval_split, catalog)
    if test.labels is None or train.labels is None:
        raise ValueError(f"{prepared}: graph CF needs labeled train and {eval_split!r} splits (clicks)")
    _check_time_split(train, test, eval_split, prepared)
    sources = {"history (train)": _pairs(train, False), f"history ({eval_split})": _pairs(test, False),
               "train clicks": _pairs(train, True), f"{eval_split} clicks": _pairs(test, True)}
    every_user = pa.concat_arrays([users for users, _ in sources.values()]).unique()
    ledger, n = Ledger(), catalog.size
    codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (users, items) in sources.items():
        ledger.read(name, len(items))
        user_codes = pc.index_in(users, value_set=every_user).to_numpy()
        keep = ledger.reject(name, UNKNOWN_NEWS, items >= 0)
        codes[name] = (user_codes[keep], items[keep])
    train_names, test_name = list(sources)[:3], f"{eval_split} clicks"
    train_users, train_items = (np.concatenate([codes[name][i] for name in train_names]) for i in (0, 1))
    distinct = _distinct(train_users, train_items, n)
    _reject_repeats(ledger, train_names, [len(codes[name][0]) for name in train_names], distinct)
    train_users, train_items = train_users[distinct], train_items[distinct]
    graph_users, rows = np.unique(train_users, return_inverse=True)
    test_users, test_items = _test_edges(ledger, test_name, *codes[test_name], graph_users, rows, train_items, n)
    warm, shown = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    warm[train_items] = True
    shown[test.candidates[test.candidates >= 0]] = True
    profiles, coverage = _profiles(catalog, profiles_path, keywords_path)
    return ClickGraph(catalog=catalog, user_ids=np.asarray(every_user.take(pa.array(graph_users)).to_pylist()),
                      edges=np.stack([rows, train_items]), test_users=test_users, test_items=test_items, warm=warm,
                      shown=shown,
                      accounting=ledger.sources | {"cold_items": int((~warm).sum()), "shown_items": int(shown.sum()),
                                                   "cold_test_edges": int((~warm[test_items]).sum())},
                      profiles=profiles, coverage=coverage)


def _reject_repeats(ledger: Ledger, names: list[str], sizes: list[int], distinct: np.ndarray) -> None:
    """Repeats are charged to the source that repeated an earlier pair (history first, then train clicks)."""
    for name, part in zip(names, np.split(distinct, np.cumsum(sizes)[:-1])):
        ledger.reject(name, "repeat of a training pair", part)


def _test_edges(ledger: Ledger, name: str, users: np.ndarray, items: np.ndarray, graph_users: np.ndarray,
                rows: np.ndarray, train_items: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    position = np.minimum(np.searchsorted(graph_users, users), max(len(graph_users) - 1, 0))
    known = ledger.reject(name, "user without a training click", graph_users[position] == users)
    users, items = position[known], items[known]
    train_keys = np.sort(rows.astype(np.int64) * n + train_items)
    keys = users * n + items
    at = np.minimum(np.searchsorted(train_keys, keys), len(train_keys) - 1)
    fresh = ledger.reject(name, "clicked already in training (not re-recommended)", train_keys[at] != keys)
    users, items = users[fresh], items[fresh]
    distinct = ledger.reject(name, "repeat click in the test period", _distinct(users, items, n))
    return users[distinct], items[distinct]


def _profiles(catalog: NewsCatalog, path: str | None, keywords_path: str) -> tuple[torch.Tensor | None, dict[str, Any]]:
    if path is None:
        return None, {}
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no item-profile vectors; run `newsrec generate item_profile` and "
                                f"`newsrec encoder embed --profiles` first")
    vectors, coverage = vector_source(catalog, path, keywords_path)
    return vectors[1:], {"profiles": coverage}


class GraphBatches(EpochBatches):
    """One sample per training edge: (user, clicked news, a news drawn uniformly from ``negatives``: warm news or
    all) per epoch."""

    def __init__(self, graph: ClickGraph, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 negatives: str = "warm") -> None:
        if negatives not in ("warm", "all"):
            raise ValueError(f"model.graph.negatives must be warm or all, got {negatives!r}")
        self.graph = graph
        self.candidates = np.flatnonzero(graph.warm) if negatives == "warm" else np.arange(len(graph.warm))
        super().__init__(graph.edges.shape[1], batch_size, seed, rank, world_size)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return self.candidates[rng.integers(0, len(self.candidates), self.samples)]

    def batch(self, drawn: np.ndarray, samples: np.ndarray) -> dict[str, torch.Tensor]:
        return {"users": torch.from_numpy(self.graph.edges[0, samples]),
                "positives": torch.from_numpy(self.graph.edges[1, samples]),
                "negatives": torch.from_numpy(drawn[samples])}


PerUser = dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]  # group of news → (test users, metric → values)


def _write_per_user(directory: Path, groups: PerUser) -> None:
    """One row per test user (graph row: the same users in every arm of the same data), ``<group>/<metric>``
    columns, NaN where a group has no relevant news for the user."""
    everyone = np.unique(np.concatenate([users for users, _ in groups.values()]))
    columns = {}
    for group, (users, metrics) in groups.items():
        position = np.searchsorted(everyone, users)
        for name, values in metrics.items():
            column = np.full(len(everyone), np.nan)
            column[position] = values
            columns[f"{group}/{name}"] = column
    write_per_impression(directory, everyone, columns, PER_USER_FILE, "user")


def _restricted(pairs: Csr, columns: np.ndarray, n_items: int, n_users: int) -> Csr:
    """``pairs`` kept to ``columns``, items renumbered to their position among them."""
    local = np.full(n_items, -1)
    local[columns] = np.arange(len(columns))
    users = np.repeat(np.arange(n_users), pairs.lengths())
    mapped = local[pairs.items]
    return Csr.of_pairs(users[mapped >= 0], mapped[mapped >= 0], n_users)


def _scorer(model: GraphRecommender, users: torch.Tensor, items: torch.Tensor, columns: torch.Tensor | None
            ) -> ScoreChunk:
    return lambda start, count: model.score_chunk(users, items, start, count, columns).cpu()


class GraphTask:
    """What the shared trainer needs from graph CF: data, model, batches, top-k evaluation, export."""

    unit = "users"

    def __init__(self, ks: list[int], pool: str) -> None:
        if pool not in ("shown", "catalogue"):
            raise ValueError(f"eval.topk_pool must be shown or catalogue, got {pool!r}")
        self.ks, self.pool = list(ks), pool
        self.monitor = f"ndcg@{max(self.ks)}"
        self.logged = tuple(f"{metric}@{k}" for metric in ("recall", "ndcg") for k in self.ks)

    def load(self, run: Any, progress: ProgressFactory) -> ClickGraph:
        return load_click_graph(run.prepared, run.train.eval_split, run.model.graph.profile.vectors,
                                run.model.news.keywords_path)

    def build(self, run: Any, data: ClickGraph) -> GraphRecommender:
        torch.manual_seed(run.train.seed)
        return GraphRecommender(run.model.graph, data.n_users, data.catalog.size, torch.from_numpy(data.edges),
                                torch.from_numpy(data.warm), data.profiles)

    def batches(self, run: Any, data: ClickGraph, rank: int, world_size: int) -> GraphBatches:
        return GraphBatches(data, run.train.batch_size, run.train.seed, rank, world_size, run.model.graph.negatives)

    @torch.no_grad()
    def evaluate(self, model: GraphRecommender, run: Any, data: ClickGraph, device: torch.device
                 ) -> tuple[dict[str, Any], PerUser]:
        """Each group's means, and the per-user metrics behind them (``export`` writes those: no second pass)."""
        per_user = self._per_user(model, data)
        return {group: topk_means(*values) for group, values in per_user.items()}, per_user

    @torch.no_grad()
    def _per_user(self, model: GraphRecommender, data: ClickGraph) -> PerUser:
        """Per group of news: the test users it scores and their top-k metrics."""
        model.eval()
        users, items = model.embeddings()
        train, test, n = data.train_csr(), data.test_csr(), data.catalog.size
        results = {}
        for group, columns in self._groups(data).items():
            chosen = torch.from_numpy(columns).to(items.device)
            results[group] = topk_per_user(_scorer(model, users, items, chosen), data.n_users,
                                           _restricted(test, columns, n, data.n_users),
                                           _restricted(train, columns, n, data.n_users), self.ks, len(columns))
        model.train()
        return results

    def _groups(self, data: ClickGraph) -> dict[str, np.ndarray]:
        """The news each group ranks: the pool (shown or every news item), and its cold and warm parts."""
        pool = data.shown if self.pool == "shown" else np.ones_like(data.shown)
        return {"all": np.flatnonzero(pool), "cold_items": np.flatnonzero(pool & ~data.warm),
                "warm_items": np.flatnonzero(pool & data.warm)}

    @torch.no_grad()
    def export(self, directory: Path, model: GraphRecommender, run: Any, data: ClickGraph, per_user: PerUser
               ) -> dict[str, Any]:
        """``recommendations.parquet``: each test user's top max(k) news (training clicks excluded); and
        ``per_user.parquet``, each test user's metrics per group (from ``evaluate``), for the report's paired
        tests over users."""
        _write_per_user(directory, per_user)
        model.eval()
        users, items = model.embeddings()
        pool = self._groups(data)["all"]
        user_ids, ranked = [], []
        for rows, top in top_items(_scorer(model, users, items, torch.from_numpy(pool).to(items.device)),
                                   np.unique(data.test_users),
                                   _restricted(data.train_csr(), pool, data.catalog.size, data.n_users),
                                   max(self.ks), data.n_users):
            user_ids += data.user_ids[rows].tolist()
            ranked += [data.catalog.ids.take(pa.array(pool[row])).to_pylist() for row in top]
        pq.write_table(pa.table({"user_id": pa.array(user_ids, pa.string()),
                                 "news_ids": pa.array(ranked, pa.list_(pa.string()))}),
                       directory / "recommendations.parquet")
        return {"coverage": data.coverage, "split": data.accounting, "eval_rows": len(user_ids)}

    def rows(self, data: ClickGraph) -> dict[str, int]:
        return {"train_edges": int(data.edges.shape[1]), "test_edges": int(len(data.test_items))}
