"""Tests for newsrec_dist.eval.metrics (MIND per-impression metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from newsrec_dist.eval.metrics import (
    diversity_metrics,
    impression_metrics,
    prediction_ranks,
    summarize,
    topk_positions,
    write_prediction_file,
)

L2_3 = 1 / math.log2(3)  # discount at rank 2
L2_4 = 1 / math.log2(4)  # discount at rank 3
L2_5 = 1 / math.log2(5)  # discount at rank 4


# --------------------------------------------------------------------------- #
# Reference: per-impression transcription of MIND's evaluate.py formulas
# (argsort made stable and descending to pin the documented tie rule).
# --------------------------------------------------------------------------- #
def mrr_score(y_true: np.ndarray, y_score: np.ndarray) -> float:
    order = np.argsort(-y_score, kind="stable")
    y_sorted = np.take(y_true, order)
    rr = y_sorted / (np.arange(len(y_sorted)) + 1)
    return float(np.sum(rr) / np.sum(y_true))


def dcg_score(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    order = np.argsort(-y_score, kind="stable")
    y_sorted = np.take(y_true, order[:k])
    gains = 2.0**y_sorted - 1
    discounts = np.log2(np.arange(len(y_sorted)) + 2)
    return float(np.sum(gains / discounts))


def ndcg_score(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    return dcg_score(y_true, y_score, k) / dcg_score(y_true, y_true, k)


def flatten(groups: list[tuple[list[float], list[int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in groups])
    labels = np.concatenate([np.asarray(y, dtype=np.int64) for _, y in groups])
    offsets = np.concatenate(([0], np.cumsum([len(s) for s, _ in groups]))).astype(np.int64)
    return scores, labels, offsets


def random_impressions(seed: int, n_groups: int, decimals: int | None) -> tuple[np.ndarray, ...]:
    """Variable-length impressions; rounding scores to few decimals creates ties."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, n_groups)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    total = int(offsets[-1])
    if decimals is None:
        scores = rng.permutation(total).astype(np.float64) / total  # all distinct
    else:
        scores = np.round(rng.random(total), decimals)
    labels = (rng.random(total) < 0.25).astype(np.int64)
    return scores, labels, offsets


def assert_same(a: np.ndarray, b: np.ndarray, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=atol, equal_nan=True)


# --------------------------------------------------------------------------- #
# Hand-computed cases
# --------------------------------------------------------------------------- #
HAND = [
    # 0: sorted desc -> labels 1,0,0,1 (ranks of positives: 1 and 4).
    ([0.9, 0.2, 0.5, 0.1], [1, 0, 0, 1]),
    # 1: ties. Stable order idx0(y0), idx1(y1), idx2(y0), idx3(y1) -> positives at ranks 2, 4.
    ([0.5, 0.5, 0.5, 0.2], [0, 1, 0, 1]),
    # 2: no positive.
    ([0.3, 0.1], [0, 0]),
    # 3: single positive candidate (no negative).
    ([0.7], [1]),
    # 4: only positives, reversed: sorted labels 1,1.
    ([0.1, 0.2], [1, 1]),
]


def test_hand_computed_ranking_metrics() -> None:
    m = impression_metrics(*flatten(HAND), ks=(2, 5, 10))
    # AUC 0: P=2, N=2; pos 0.9 beats both negatives (2), pos 0.1 beats none (0): 2/4.
    # AUC 1: pos 0.5 ties both negatives (0.5 + 0.5), pos 0.2 beats none: 1/4.
    assert_same(m["auc"], np.array([0.5, 0.25, np.nan, np.nan, np.nan]))
    # MRR 0: (1/1 + 1/4) / 2 = 0.625;  MRR 1: (1/2 + 1/4) / 2 = 0.375;
    # MRR 3: 1/1;  MRR 4: (1/1 + 1/2) / 2 = 0.75.
    assert_same(m["mrr"], np.array([0.625, 0.375, np.nan, 1.0, 0.75]))
    # nDCG 0: DCG = 1/log2(2) + 1/log2(5); IDCG = 1 + 1/log2(3) (2 positives).
    # nDCG 1: DCG = 1/log2(3) + 1/log2(5); same IDCG.  @2 drops the rank-4 term.
    idcg2 = 1 + L2_3
    assert_same(m["ndcg@5"], np.array([(1 + L2_5) / idcg2, (L2_3 + L2_5) / idcg2, np.nan, 1.0, 1.0]))
    assert_same(m["ndcg@10"], m["ndcg@5"])
    assert_same(m["ndcg@2"], np.array([1 / idcg2, L2_3 / idcg2, np.nan, 1.0, 1.0]))
    for values in m.values():
        assert values.dtype == np.float64 and values.shape == (5,)


def test_hand_computed_positions_and_summary() -> None:
    scores, labels, offsets = flatten(HAND)
    # Impression 0 desc order is idx 0,2,1,3; impression 1 keeps stable tie order.
    expected = np.array([0, 2, 1, 3, 0, 1, 2, 3, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(topk_positions(scores, offsets), expected)
    np.testing.assert_array_equal(prediction_ranks(scores, offsets), expected + 1)

    s = summarize(impression_metrics(scores, labels, offsets))
    assert s["auc"] == pytest.approx((0.5 + 0.25) / 2)
    assert s["mrr"] == pytest.approx((0.625 + 0.375 + 1 + 0.75) / 4)  # NaN (no positive) skipped
    assert s["impressions"] == 5
    assert s["auc_undefined"] == 3

    mask = np.array([False, True, True, False, False])
    s = summarize(impression_metrics(scores, labels, offsets), mask)
    assert s["auc"] == pytest.approx(0.25)
    assert s["mrr"] == pytest.approx(0.375)
    assert (s["impressions"], s["auc_undefined"]) == (2, 1)

    only_nan = summarize({"auc": np.array([np.nan, 0.5])}, np.array([True, False]))
    assert math.isnan(only_nan["auc"]) and only_nan["auc_undefined"] == 1


# --------------------------------------------------------------------------- #
# Against references
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("chunk_size", [50, 1 << 21])
def test_auc_matches_sklearn_with_ties(chunk_size: int) -> None:
    scores, labels, offsets = random_impressions(seed=1, n_groups=600, decimals=1)
    auc = impression_metrics(scores, labels, offsets, chunk_size=chunk_size)["auc"]
    n_defined = 0
    for g in range(offsets.size - 1):
        y, s = labels[offsets[g]:offsets[g + 1]], scores[offsets[g]:offsets[g + 1]]
        if 0 < y.sum() < y.size:
            assert auc[g] == pytest.approx(roc_auc_score(y, s), abs=1e-12, rel=0)
            n_defined += 1
        else:
            assert math.isnan(auc[g])
    assert n_defined > 400  # the data really exercises the defined case


@pytest.mark.parametrize("decimals", [None, 1])
def test_mrr_ndcg_match_mind_reference(decimals: int | None) -> None:
    scores, labels, offsets = random_impressions(seed=2, n_groups=500, decimals=decimals)
    m = impression_metrics(scores, labels, offsets, chunk_size=300)
    for g in range(offsets.size - 1):
        y, s = labels[offsets[g]:offsets[g + 1]], scores[offsets[g]:offsets[g + 1]]
        if y.sum() == 0:
            assert all(math.isnan(m[key][g]) for key in ("mrr", "ndcg@5", "ndcg@10"))
            continue
        assert m["mrr"][g] == pytest.approx(mrr_score(y, s), abs=1e-12, rel=0)
        assert m["ndcg@5"][g] == pytest.approx(ndcg_score(y, s, 5), abs=1e-12, rel=0)
        assert m["ndcg@10"][g] == pytest.approx(ndcg_score(y, s, 10), abs=1e-12, rel=0)


@pytest.mark.parametrize("k", [5, 10])
def test_ndcg_mean_matches_torchmetrics(k: int) -> None:
    import torch
    from torchmetrics.retrieval import RetrievalNormalizedDCG

    scores, labels, offsets = random_impressions(seed=3, n_groups=400, decimals=None)
    ours = impression_metrics(scores, labels, offsets, ks=(k,))[f"ndcg@{k}"]
    # Binary labels: torchmetrics' linear gain rel equals MIND's 2^rel - 1.
    # "skip" drops impressions without positives, as our NaN-aware mean does.
    metric = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")
    group = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    metric.update(torch.from_numpy(scores), torch.from_numpy(labels), indexes=torch.from_numpy(group))
    assert np.isnan(ours).sum() > 0  # the skip path is exercised
    assert float(np.nanmean(ours)) == pytest.approx(float(metric.compute()), abs=1e-6)


def test_chunking_does_not_change_results() -> None:
    scores, labels, offsets = random_impressions(seed=4, n_groups=300, decimals=1)
    whole = impression_metrics(scores, labels, offsets)
    pieces = impression_metrics(scores, labels, offsets, chunk_size=7)
    for key in whole:
        np.testing.assert_array_equal(whole[key], pieces[key])
    np.testing.assert_array_equal(topk_positions(scores, offsets), topk_positions(scores, offsets, chunk_size=7))


# --------------------------------------------------------------------------- #
# Hypothesis properties
# --------------------------------------------------------------------------- #
@st.composite
def impressions(draw: st.DrawFn, tie_free: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = draw(st.lists(st.integers(1, 10), min_size=1, max_size=8))
    total = sum(sizes)
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=total, max_size=total)), dtype=np.int64)
    if tie_free:
        scores = np.array(draw(st.permutations(range(total))), dtype=np.float64)
    else:
        scores = np.array(draw(st.lists(st.integers(-3, 3), min_size=total, max_size=total)), dtype=np.float64)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    return scores, labels, offsets


def permute_within(offsets: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([lo + rng.permutation(hi - lo) for lo, hi in zip(offsets[:-1], offsets[1:])])


FAST = settings(max_examples=60, deadline=None)


@FAST
@given(impressions())
def test_metrics_are_bounded_and_match_references(data: tuple[np.ndarray, ...]) -> None:
    scores, labels, offsets = data
    m = impression_metrics(scores, labels, offsets)
    for values in m.values():
        finite = values[~np.isnan(values)]
        assert np.all((finite >= 0) & (finite <= 1))
    for g in range(offsets.size - 1):
        y, s = labels[offsets[g]:offsets[g + 1]], scores[offsets[g]:offsets[g + 1]]
        assert math.isnan(m["auc"][g]) == (y.min() == y.max())
        if not math.isnan(m["auc"][g]):
            assert m["auc"][g] == pytest.approx(roc_auc_score(y, s), abs=1e-12, rel=0)
        ranks = topk_positions(s, np.array([0, s.size]))
        np.testing.assert_array_equal(ranks, np.argsort(np.argsort(-s, kind="stable"), kind="stable"))


@FAST
@given(impressions())
def test_invariant_under_increasing_transform(data: tuple[np.ndarray, ...]) -> None:
    scores, labels, offsets = data
    before = impression_metrics(scores, labels, offsets)
    after = impression_metrics(np.exp(scores) * 3.0 - 7.0, labels, offsets)  # keeps order and ties
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


@FAST
@given(impressions(), st.integers(0, 2**32 - 1))
def test_auc_invariant_under_permutation(data: tuple[np.ndarray, ...], seed: int) -> None:
    scores, labels, offsets = data
    perm = permute_within(offsets, seed)
    before = impression_metrics(scores, labels, offsets)["auc"]
    after = impression_metrics(scores[perm], labels[perm], offsets)["auc"]
    assert_same(before, after)


@FAST
@given(impressions(tie_free=True), st.integers(0, 2**32 - 1))
def test_all_metrics_invariant_under_permutation_without_ties(data: tuple[np.ndarray, ...], seed: int) -> None:
    scores, labels, offsets = data
    perm = permute_within(offsets, seed)
    before = impression_metrics(scores, labels, offsets)
    after = impression_metrics(scores[perm], labels[perm], offsets)
    for key in before:
        assert_same(before[key], after[key])


@FAST
@given(impressions())
def test_perfect_ranking(data: tuple[np.ndarray, ...]) -> None:
    _, labels, offsets = data
    m = impression_metrics(labels.astype(np.float64), labels, offsets)  # positives strictly on top
    n_pos = np.add.reduceat(labels, offsets[:-1])
    sizes = np.diff(offsets)
    defined_auc = (n_pos > 0) & (n_pos < sizes)
    np.testing.assert_array_equal(m["auc"][defined_auc], 1.0)
    # DCG and ideal DCG are summed in different orders: equal up to rounding.
    np.testing.assert_allclose(m["ndcg@5"][n_pos > 0], 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m["ndcg@10"][n_pos > 0], 1.0, rtol=0, atol=1e-12)
    # MIND's MRR averages over all positives: ranks 1..P give H_P / P (== 1 iff P == 1).
    harmonic = np.array([sum(1 / r for r in range(1, p + 1)) / p if p else np.nan for p in n_pos])
    assert_same(m["mrr"], harmonic)


@FAST
@given(impressions(tie_free=True))
def test_reversed_ranking_gives_complementary_auc(data: tuple[np.ndarray, ...]) -> None:
    scores, labels, offsets = data
    assert_same(impression_metrics(-scores, labels, offsets)["auc"],
                1.0 - impression_metrics(scores, labels, offsets)["auc"])


# --------------------------------------------------------------------------- #
# Diversity and prediction file
# --------------------------------------------------------------------------- #
def test_diversity_hand_case() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.4])
    offsets = np.array([0, 4, 6])
    items = np.array([10, 11, 12, 13, 10, 14])
    categories = np.array([0, 0, 1, 2, 5, 5])
    popularity = np.array([4.0, 2.0, 6.0, 100.0, 1.0, 3.0])
    d = diversity_metrics(scores, offsets, items, categories, popularity, k=3)
    # Impression 0 top-3 = idx 0,1,2 -> categories {0: 2, 1: 1}:
    #   entropy = -(2/3 ln 2/3 + 1/3 ln 1/3); coverage = 2 of {0,1,2} = 2/3; pop = (4+2+6)/3 = 4.
    # Impression 1 has 2 candidates (k capped to 2), both category 5:
    #   entropy = 0; coverage = 1/1; pop = (1+3)/2 = 2.
    h0 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert_same(d["category_entropy@3"], np.array([h0, 0.0]))
    assert_same(d["category_coverage@3"], np.array([2 / 3, 1.0]))
    assert_same(d["mean_popularity@3"], np.array([4.0, 2.0]))
    # Items in any top-k {10,11,12,14} out of {10,11,12,13,14}.
    assert d["item_coverage@3"] == pytest.approx(4 / 5)


# (n_categories, code scale, item scale): dense codes, sparse codes that get
# re-coded, and many categories (sort-based instead of counting-table path).
@pytest.mark.parametrize(("n_cat", "scale", "item_scale"), [(6, 1, 1), (6, 10**12, 10**9), (5000, 1, 1)])
def test_diversity_matches_per_impression_loop(n_cat: int, scale: int, item_scale: int) -> None:
    rng = np.random.default_rng(5)
    scores, _, offsets = random_impressions(seed=5, n_groups=200, decimals=2)
    items = rng.integers(0, 3000, scores.size) * item_scale
    cats = rng.integers(0, n_cat, scores.size) * scale
    pop = rng.random(scores.size)
    d = diversity_metrics(scores, offsets, items, cats, pop, k=5, chunk_size=100)
    top_items: set[int] = set()
    for g in range(offsets.size - 1):
        sl = slice(offsets[g], offsets[g + 1])
        top = np.argsort(-scores[sl], kind="stable")[:5]
        _, counts = np.unique(cats[sl][top], return_counts=True)
        p = counts / counts.sum()
        assert d["category_entropy@5"][g] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
        assert d["category_coverage@5"][g] == pytest.approx(counts.size / np.unique(cats[sl]).size)
        assert d["mean_popularity@5"][g] == pytest.approx(pop[sl][top].mean())
        top_items.update(items[sl][top].tolist())
    assert d["item_coverage@5"] == pytest.approx(len(top_items) / np.unique(items).size)


def test_prediction_file_format_and_round_trip(tmp_path: Path) -> None:
    scores, _, offsets = random_impressions(seed=6, n_groups=250, decimals=1)
    ids = np.arange(1, offsets.size)
    path = tmp_path / "prediction.txt"
    write_prediction_file(path, ids, scores, offsets, chunk_size=64)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == offsets.size  # trailing newline, one line per impression
    ranks = prediction_ranks(scores, offsets)
    for g, line in enumerate(lines[:-1]):
        imp_id, body = line.split(" ")
        assert imp_id == str(ids[g]) and body[0] == "[" and body[-1] == "]"
        parsed = np.array([int(x) for x in body[1:-1].split(",")])
        np.testing.assert_array_equal(parsed, ranks[offsets[g]:offsets[g + 1]])
        np.testing.assert_array_equal(np.sort(parsed), np.arange(1, parsed.size + 1))


def test_prediction_file_exact_text(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    write_prediction_file(path, [7, 8, 9], np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.2]), np.array([0, 3, 4, 6]))
    # 0.5 > 0.3 > 0.1 -> ranks 3,1,2; the tie keeps candidate order -> 1,2.
    assert path.read_text(encoding="utf-8") == "7 [3,1,2]\n8 [1]\n9 [1,2]\n"


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("scores", "labels", "offsets", "message"),
    [
        ([0.1, 0.2], [1], [0, 2], "length mismatch"),
        ([0.1, 0.2], [1, 0], [1, 2], "start at 0"),
        ([0.1, 0.2, 0.3], [1, 0, 1], [0, 2, 1, 3], "non-decreasing"),
        ([0.1, 0.2], [1, 0], [0, 1], "end at the number of candidates"),
        ([0.1, 0.2], [1, 0], [0, 0, 2], "impression 0 is empty"),
        ([0.1, 0.2], [1, 2], [0, 2], "binary"),
        ([0.1, np.nan], [1, 0], [0, 2], "NaN"),
        ([0.1, 0.2], [1, 0], [0.0, 2.0], "integer dtype"),
    ],
)
def test_impression_metrics_validation(scores: list, labels: list, offsets: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        impression_metrics(np.array(scores), np.array(labels), np.array(offsets))


def test_other_validation_errors(tmp_path: Path) -> None:
    s, off = np.array([0.1, 0.2]), np.array([0, 2])
    with pytest.raises(ValueError, match="length mismatch: categories"):
        diversity_metrics(s, off, [1, 2], [1], [0.0, 0.0], k=1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        diversity_metrics(s, off, [1, 2], [1, 1], [0.0, 0.0], k=0)
    with pytest.raises(ValueError, match="empty"):
        topk_positions(np.array([0.1]), np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="impression_ids"):
        write_prediction_file(tmp_path / "x.txt", [1, 2], s, off)
    with pytest.raises(ValueError, match="mask"):
        summarize({"auc": np.array([0.5, 0.5])}, np.array([True]))
    with pytest.raises(ValueError, match="length mismatch"):
        summarize({"auc": np.array([0.5, 0.5]), "mrr": np.array([1.0])})
