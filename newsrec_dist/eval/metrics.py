"""Vectorised MIND per-impression ranking and diversity metrics.

Impressions are *flattened*: ``scores``/``labels`` hold every candidate of every
impression back to back and ``offsets`` (length G+1, int64) delimits them, so
impression ``g`` owns ``offsets[g]:offsets[g + 1]``. Every impression must have
at least one candidate.

Definitions follow MIND's official ``evaluate.py`` (Microsoft recommenders):

* AUC: ``sklearn.metrics.roc_auc_score`` per impression, i.e. Mann-Whitney U
  with midranks for tied scores. NaN when the impression lacks a positive or a
  negative.
* MRR: ``sum(y_sorted / rank) / sum(y)``, the reciprocal rank averaged over
  *all* positives. NaN without positives.
* nDCG@k: ``DCG@k(predicted order) / DCG@k(ideal order)`` with gain
  ``2**rel - 1`` (== rel for the 0/1 labels accepted here) and discount
  ``log2(rank + 1)``. NaN without positives.

Tie rule (MRR, nDCG, ranks, top-k): candidates are ordered by descending score
and, among equal scores, the earlier candidate (lower index) comes first, i.e.
``np.argsort(-scores, kind="stable")`` within each impression.

There is no Python loop per impression: each chunk of impressions is sorted
once (row-wise on length-bucketed padded blocks) and per-impression sums use
``np.bincount``.
Chunking (``chunk_size`` candidates at a time) bounds temporaries so that
millions of impressions fit in a few hundred MB.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "impression_metrics",
    "topk_positions",
    "prediction_ranks",
    "write_prediction_file",
    "diversity_metrics",
    "summarize",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# ~2M candidates per chunk keeps each temporary around 16 MB and the working
# set in the low hundreds of MB regardless of the total number of impressions.
DEFAULT_CHUNK_SIZE = 1 << 21


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
def _check_offsets(offsets: ArrayLike, total: int) -> IntArray:
    off = np.asarray(offsets)
    if off.ndim != 1 or off.size == 0:
        raise ValueError("offsets must be a non-empty 1-D array of length G+1")
    if not np.issubdtype(off.dtype, np.integer):
        raise ValueError(f"offsets must have an integer dtype, got {off.dtype}")
    off = off.astype(np.int64, copy=False)
    if off[0] != 0:
        raise ValueError(f"offsets must start at 0, got {int(off[0])}")
    steps = np.diff(off)
    if np.any(steps < 0):
        raise ValueError("offsets must be non-decreasing")
    if np.any(steps == 0):
        bad = int(np.flatnonzero(steps == 0)[0])
        raise ValueError(f"impression {bad} is empty; every impression needs >=1 candidate")
    if off[-1] != total:
        raise ValueError(f"offsets must end at the number of candidates ({total}), got {int(off[-1])}")
    return off


# The checks below return the caller's arrays without full-size copies; each
# chunk is cast to float64/int64 on the fly, which keeps peak memory flat.
def _check_scores(scores: ArrayLike) -> np.ndarray:
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    # NaN has no place in an ordering; +/-inf is fine.
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s


def _check_per_candidate(name: str, values: ArrayLike, total: int) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if v.shape[0] != total:
        raise ValueError(f"length mismatch: {name} has {v.shape[0]} entries, scores has {total}")
    return v


def _check_labels(labels: ArrayLike, total: int) -> np.ndarray:
    y = _check_per_candidate("labels", labels, total)
    if y.dtype != np.bool_ and not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be binary (0/1)")
    return y


def _check_codes(name: str, values: ArrayLike, total: int) -> np.ndarray:
    v = _check_per_candidate(name, values, total)
    if not (np.issubdtype(v.dtype, np.integer) or v.dtype == np.bool_):
        raise ValueError(f"{name} must be integer codes, got dtype {v.dtype}")
    return v


def _f64(values: np.ndarray) -> FloatArray:
    return values.astype(np.float64, copy=False)


# --------------------------------------------------------------------------- #
# Shared sorting core
# --------------------------------------------------------------------------- #
def _chunks(offsets: IntArray, chunk_size: int) -> Iterator[tuple[int, int]]:
    """Yield impression ranges ``[a, b)`` holding roughly ``chunk_size`` candidates."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    n_groups = offsets.size - 1
    targets = np.arange(chunk_size, int(offsets[-1]), chunk_size, dtype=np.int64)
    # Cut at impression boundaries; an impression bigger than chunk_size just
    # forms its own (larger) chunk.
    cuts = np.unique(np.searchsorted(offsets, targets, side="left"))
    bounds = np.concatenate(([0], cuts[(cuts > 0) & (cuts < n_groups)], [n_groups]))
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            yield int(a), int(b)


# Padded row widths 1, 2, 3, 4, 6, 8, 12, ...: at most ~50% padding per bucket
# while keeping the number of buckets logarithmic in the longest impression.
_WIDTHS = np.unique(np.concatenate([2 ** np.arange(40), 3 * 2 ** np.arange(40)])).astype(np.int64)


def _within_group_order(scores: FloatArray, starts: IntArray, sizes: IntArray) -> IntArray:
    """Stable descending sort of every impression, returned as a flat permutation.

    A global ``np.lexsort((-scores, group))`` costs O(T log T) twice; instead
    impressions of similar length are padded into a 2-D block and sorted
    row-wise (O(T log L)), which is ~5x faster for MIND-sized impressions.
    """
    order = np.empty(scores.size, dtype=np.int64)
    bucket = np.searchsorted(_WIDTHS, sizes)
    for b in np.unique(bucket):
        rows = np.flatnonzero(bucket == b)
        row_start, row_size = starts[rows, None], sizes[rows, None]
        cols = np.arange(int(row_size.max()), dtype=np.int64)[None, :]
        real = cols < row_size
        flat = row_start + cols
        # Padding = +inf on the negated scores sorts last; being to the right of
        # every real entry it also loses ties against real -inf scores.
        keys = np.where(real, -scores[np.where(real, flat, 0)], np.inf)
        # kind="stable": equal scores keep candidate order (documented tie rule).
        srt = np.argsort(keys, axis=1, kind="stable")
        order[flat[real]] = (row_start + srt)[real]
    return order


def _chunk_topk_positions(scores: FloatArray, local_offsets: IntArray) -> IntArray:
    starts, sizes = local_offsets[:-1], np.diff(local_offsets)
    order = _within_group_order(scores, starts, sizes)
    pos = np.empty(scores.size, dtype=np.int64)
    # Sorting stays inside impressions, so sorted slot i has rank i - start.
    pos[order] = np.arange(scores.size, dtype=np.int64) - np.repeat(starts, sizes)
    return pos


def _discounts(k: int) -> FloatArray:
    """``cum[m]`` = ideal DCG with ``m`` relevant items in the top ``m`` (m <= k)."""
    return np.concatenate(([0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))))


# --------------------------------------------------------------------------- #
# Ranking metrics
# --------------------------------------------------------------------------- #
def _chunk_metrics(scores: FloatArray, labels: np.ndarray, local_offsets: IntArray,
                   ks: Sequence[int]) -> dict[str, FloatArray]:
    starts, sizes = local_offsets[:-1], np.diff(local_offsets)
    n = scores.size
    order = _within_group_order(scores, starts, sizes)
    s_sorted = scores[order]
    # With 0/1 labels every metric is a sum over positives only, so after the
    # sort all remaining work is done on the (few) positive slots.
    hit = np.flatnonzero(labels[order])  # sorted slots holding a positive
    group = np.searchsorted(local_offsets, hit, side="right") - 1
    rank = hit - starts[group]  # 0-based, stable tie rule
    n_groups = sizes.size
    n_pos = np.bincount(group, minlength=n_groups).astype(np.float64)
    n_neg = sizes - n_pos

    # Runs of equal scores inside an impression share the average rank.
    new_run = np.ones(n, dtype=bool)
    np.not_equal(s_sorted[1:], s_sorted[:-1], out=new_run[1:])
    new_run[starts] = True
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], n)
    run = np.searchsorted(run_start, hit, side="right") - 1
    mid_desc = (run_start[run] + run_end[run] - 1) / 2.0 - starts[group]  # 0-based, descending
    asc_rank = sizes[group] - mid_desc  # 1-based ascending midrank

    with np.errstate(divide="ignore", invalid="ignore"):
        # Mann-Whitney: U = (rank sum of positives) - P(P+1)/2, AUC = U / (P N).
        rank_sum = np.bincount(group, weights=asc_rank, minlength=n_groups)
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
        auc[(n_pos == 0) | (n_neg == 0)] = np.nan
        out: dict[str, FloatArray] = {"auc": auc}
        # 0/0 below gives NaN exactly for impressions without positives.
        out["mrr"] = np.bincount(group, weights=1.0 / (rank + 1), minlength=n_groups) / n_pos
        discount = 1.0 / np.log2(rank + 2.0)  # gain 2^1 - 1 = 1 per positive
        for k in ks:
            dcg = np.bincount(group, weights=np.where(rank < k, discount, 0.0), minlength=n_groups)
            # Binary labels: the ideal order puts min(P, k) ones at the top.
            idcg = _discounts(k)[np.minimum(n_pos.astype(np.int64), k)]
            out[f"ndcg@{k}"] = dcg / idcg
    return out


def impression_metrics(scores: ArrayLike, labels: ArrayLike, offsets: ArrayLike, *,
                       ks: Sequence[int] = (5, 10),
                       chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, FloatArray]:
    """Per-impression ``auc``, ``mrr`` and ``ndcg@k`` (each float64, length G).

    See the module docstring for the exact definitions, NaN rules and tie rule.
    """
    s = _check_scores(scores)
    y = _check_labels(labels, s.size)
    off = _check_offsets(offsets, s.size)
    if any(int(k) < 1 for k in ks):
        raise ValueError("every k in ks must be >= 1")
    names = ["auc", "mrr", *(f"ndcg@{int(k)}" for k in ks)]
    n_groups = off.size - 1
    out = {name: np.empty(n_groups, dtype=np.float64) for name in names}
    for a, b in _chunks(off, chunk_size):
        lo, hi = off[a], off[b]
        part = _chunk_metrics(_f64(s[lo:hi]), y[lo:hi], off[a:b + 1] - lo, [int(k) for k in ks])
        for name in names:
            out[name][a:b] = part[name]
    return out


def topk_positions(scores: ArrayLike, offsets: ArrayLike, *,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> IntArray:
    """0-based rank of every candidate inside its impression (original order).

    Descending score; equal scores keep candidate order (earlier = better).
    """
    s = _check_scores(scores)
    off = _check_offsets(offsets, s.size)
    pos = np.empty(s.size, dtype=np.int64)
    for a, b in _chunks(off, chunk_size):
        lo, hi = off[a], off[b]
        pos[lo:hi] = _chunk_topk_positions(_f64(s[lo:hi]), off[a:b + 1] - lo)
    return pos


def prediction_ranks(scores: ArrayLike, offsets: ArrayLike, *,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> IntArray:
    """1-based ranks in original candidate order (MIND ``prediction.txt``)."""
    return topk_positions(scores, offsets, chunk_size=chunk_size) + 1


def write_prediction_file(path: str | os.PathLike[str], impression_ids: ArrayLike,
                          scores: ArrayLike, offsets: ArrayLike, *,
                          chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
    """Write MIND leaderboard lines ``"{impression_id} [r1,r2,...]"``.

    Written chunk by chunk; within a chunk the text is assembled from
    pre-formatted rank tokens with a single ``str.join`` (no per-line loop).
    """
    s = _check_scores(scores)
    off = _check_offsets(offsets, s.size)
    ids = np.asarray(impression_ids)
    if ids.ndim != 1 or ids.size != off.size - 1:
        raise ValueError(f"length mismatch: {ids.size} impression_ids for {off.size - 1} impressions")
    max_len = int(np.diff(off).max()) if ids.size else 0
    # Token tables indexed by 0-based rank: "r," inside a list, "r]\n" at its end.
    mid_tok = np.array([f"{r}," for r in range(1, max_len + 1)], dtype=object)
    end_tok = np.array([f"{r}]\n" for r in range(1, max_len + 1)], dtype=object)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for a, b in _chunks(off, chunk_size):
            lo, hi = off[a], off[b]
            local = off[a:b + 1] - lo
            pos = _chunk_topk_positions(_f64(s[lo:hi]), local)
            is_end = np.zeros(hi - lo, dtype=bool)
            is_end[local[1:] - 1] = True
            tokens = np.where(is_end, end_tok[pos], mid_tok[pos])
            # Interleave one "id [" prefix before each impression's tokens.
            pieces = np.empty(tokens.size + (b - a), dtype=object)
            prefix_at = local[:-1] + np.arange(b - a)
            is_prefix = np.zeros(pieces.size, dtype=bool)
            is_prefix[prefix_at] = True
            pieces[prefix_at] = np.strings.add(ids[a:b].astype(str), " [").astype(object)
            pieces[~is_prefix] = tokens
            fh.write("".join(pieces.tolist()))


# --------------------------------------------------------------------------- #
# Diversity
# --------------------------------------------------------------------------- #
def _dense_codes(values: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Map codes onto ``0..n-1`` as ``(array, shift, n)``: code = array - shift.

    Dense code ranges are only shifted (no copy, no sort); sparse ones are
    re-coded once with ``np.unique``.
    """
    if values.size == 0:
        return values, 0, 0
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 8 * values.size + 1024:
        return values, lo, hi - lo + 1
    uniq, inverse = np.unique(values, return_inverse=True)
    return inverse, 0, int(uniq.size)


def _count_distinct(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 8 * values.size + 1024:  # dense codes: an O(n) bitmap beats sorting
        seen = np.zeros(hi - lo + 1, dtype=bool)
        # Blocks keep the int64 index temporaries small for huge inputs.
        for start in range(0, values.size, DEFAULT_CHUNK_SIZE):
            seen[values[start:start + DEFAULT_CHUNK_SIZE].astype(np.int64) - lo] = True
        return int(np.count_nonzero(seen))
    return int(np.unique(values).size)


def _pair_counts(group: IntArray, codes: IntArray, n_codes: int,
                 n_groups: int) -> tuple[IntArray, IntArray]:
    """Distinct (group, code) pairs as (group of each pair, occurrences of it)."""
    key = group * n_codes + codes
    n_keys = n_groups * n_codes
    if n_keys <= 4 * key.size + 1024:  # few categories: a counting table beats a sort
        counts = np.bincount(key, minlength=n_keys)
        present = np.flatnonzero(counts)
        return present // n_codes, counts[present]
    uniq, counts = np.unique(key, return_counts=True)
    return uniq // n_codes, counts


def _chunk_diversity(scores: FloatArray, local_offsets: IntArray, cat: IntArray, n_cat: int,
                     popularity: FloatArray, k: int) -> tuple[dict[str, FloatArray], NDArray[np.bool_]]:
    n_groups = local_offsets.size - 1
    sizes = np.diff(local_offsets)
    group = np.repeat(np.arange(n_groups, dtype=np.int64), sizes)
    top = _chunk_topk_positions(scores, local_offsets) < k
    k_eff = np.minimum(sizes, k).astype(np.float64)
    top_group = group[top]

    pair_group, pair_count = _pair_counts(top_group, cat[top], n_cat, n_groups)
    p = pair_count / k_eff[pair_group]
    # -p ln p summed per impression; + 0.0 turns a single-category -0.0 into 0.0.
    entropy = np.bincount(pair_group, weights=-p * np.log(p), minlength=n_groups) + 0.0
    distinct_top = np.bincount(pair_group, minlength=n_groups)
    distinct_all = np.bincount(_pair_counts(group, cat, n_cat, n_groups)[0], minlength=n_groups)
    mean_pop = np.bincount(top_group, weights=popularity[top], minlength=n_groups) / k_eff
    out = {
        f"category_entropy@{k}": entropy,
        f"category_coverage@{k}": distinct_top / distinct_all,
        f"mean_popularity@{k}": mean_pop,
    }
    return out, top


def diversity_metrics(scores: ArrayLike, offsets: ArrayLike, items: ArrayLike,
                      categories: ArrayLike, popularity: ArrayLike, k: int, *,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, FloatArray | float]:
    """Diversity of each impression's top-k (k capped at the impression length).

    Per impression (float64, length G):
      ``category_entropy@k``  Shannon entropy (nats) of top-k categories;
      ``category_coverage@k`` distinct top-k categories / distinct categories
                              among the impression's candidates;
      ``mean_popularity@k``   mean ``popularity`` of the top-k candidates.
    Scalar:
      ``item_coverage@k``     distinct ``items`` in any top-k / distinct
                              ``items`` among all candidates.
    ``items`` and ``categories`` are integer codes per candidate; top-k uses
    the same tie rule as :func:`topk_positions`.
    """
    s = _check_scores(scores)
    off = _check_offsets(offsets, s.size)
    item_codes = _check_codes("items", items, s.size)
    cat_codes, cat_shift, n_cat = _dense_codes(_check_codes("categories", categories, s.size))
    pop = _check_per_candidate("popularity", popularity, s.size)
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    n_groups = off.size - 1
    names = [f"category_entropy@{k}", f"category_coverage@{k}", f"mean_popularity@{k}"]
    per_imp = {name: np.empty(n_groups, dtype=np.float64) for name in names}
    in_top = np.zeros(s.size, dtype=bool)
    for a, b in _chunks(off, chunk_size):
        lo, hi = off[a], off[b]
        cat = cat_codes[lo:hi].astype(np.int64) - cat_shift
        part, top = _chunk_diversity(_f64(s[lo:hi]), off[a:b + 1] - lo, cat, n_cat, _f64(pop[lo:hi]), k)
        for name in names:
            per_imp[name][a:b] = part[name]
        in_top[lo:hi] = top
    n_items = _count_distinct(item_codes)
    out: dict[str, FloatArray | float] = dict(per_imp)
    out[f"item_coverage@{k}"] = _count_distinct(item_codes[in_top]) / n_items if n_items else float("nan")
    return out


# --------------------------------------------------------------------------- #
# Aggregation
# --------------------------------------------------------------------------- #
def summarize(per_impression: dict[str, np.ndarray],
              mask: np.ndarray | None = None) -> dict[str, float]:
    """NaN-aware means of per-impression metrics over the impressions in ``mask``.

    Adds ``impressions`` (number selected) and, when ``auc`` is present,
    ``auc_undefined`` (selected impressions whose AUC is NaN). A metric whose
    selected values are all NaN (or none selected) summarises to NaN.
    """
    if not per_impression:
        raise ValueError("per_impression is empty")
    lengths = set()
    for name, values in per_impression.items():
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"summarize expects 1-D per-impression arrays; {name!r} has shape {arr.shape}")
        lengths.add(arr.shape[0])
    if len(lengths) != 1:
        raise ValueError(f"length mismatch among per-impression arrays: {sorted(lengths)}")
    n = lengths.pop()
    if mask is None:
        sel = np.ones(n, dtype=bool)
    else:
        sel = np.asarray(mask)
        if sel.dtype != np.bool_ or sel.shape != (n,):
            raise ValueError(f"mask must be a boolean array of length {n}")
    out: dict[str, float] = {}
    for name, values in per_impression.items():
        picked = np.asarray(values, dtype=np.float64)[sel]
        finite = picked[~np.isnan(picked)]
        out[name] = float(finite.mean()) if finite.size else float("nan")
    out["impressions"] = float(np.count_nonzero(sel))
    if "auc" in per_impression:
        out["auc_undefined"] = float(np.isnan(np.asarray(per_impression["auc"], dtype=np.float64)[sel]).sum())
    return out
