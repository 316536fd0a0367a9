"""Benchmark ``newsrec_dist.eval.metrics`` at MIND scale against baselines.

Generates random impressions (uniform lengths with the requested mean, at
least one positive and one negative each), times our vectorised metrics on all
of them, then times torchmetrics' retrieval metrics and MIND's per-impression
reference loop on a subsample and extrapolates those linearly. Prints a
Markdown table.

    python benchmarks/eval_metrics.py --impressions 1000000 --candidates-mean 30 --seed 0
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from newsrec_dist.eval.metrics import diversity_metrics, impression_metrics, summarize, write_prediction_file


@dataclass
class Row:
    step: str
    impressions: int
    candidates: int
    seconds: float
    peak_rss_mb: float | None
    note: str = ""


def peak_rss_mb() -> float:
    # ru_maxrss is the process high-water mark, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def make_data(n_impressions: int, mean: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Uniform on [2, 2*mean - 2]: mean `mean`, every impression can hold a positive and a negative.
    sizes = rng.integers(2, 2 * mean - 1, n_impressions)
    offsets = np.zeros(n_impressions + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    labels = (rng.random(total, dtype=np.float32) < 0.04).astype(np.int8)
    # Force one positive and (right after it, cyclically) one negative per impression.
    pos = rng.integers(0, sizes)
    labels[offsets[:-1] + pos] = 1
    labels[offsets[:-1] + (pos + 1) % sizes] = 0
    return {
        "offsets": offsets,
        "scores": rng.random(total),  # float64
        "labels": labels,
        "items": rng.integers(0, 100_000, total, dtype=np.int32),
        "categories": rng.integers(0, 18, total, dtype=np.int16),
        "popularity": rng.random(total, dtype=np.float32),
    }


def subsample(data: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    end = int(data["offsets"][n])
    out = {key: value[:end] for key, value in data.items() if key != "offsets"}
    out["offsets"] = data["offsets"][: n + 1]
    return out


def torch_baselines(data: dict[str, np.ndarray], k: int) -> tuple[dict[str, float], dict[str, float]]:
    import torch
    from torchmetrics.retrieval import RetrievalAUROC, RetrievalNormalizedDCG

    offsets = data["offsets"]
    group = torch.from_numpy(np.repeat(np.arange(offsets.size - 1), np.diff(offsets)))
    preds = torch.from_numpy(data["scores"])
    target = torch.from_numpy(data["labels"].astype(np.int64))
    seconds, values = {}, {}
    for name, metric in [(f"ndcg@{k}", RetrievalNormalizedDCG(top_k=k)), ("auc", RetrievalAUROC())]:
        def run(metric: Any = metric) -> float:
            metric.update(preds, target, indexes=group)
            return float(metric.compute())

        values[name], seconds[name] = timed(run)
    return seconds, values


def mind_reference_loop(data: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """MIND evaluate.py style: one sklearn/numpy call per impression."""
    from sklearn.metrics import roc_auc_score

    off, s, y = data["offsets"], data["scores"], data["labels"].astype(np.int64)
    aucs, ndcgs = [], []
    for g in range(off.size - 1):
        ys, ss = y[off[g]:off[g + 1]], s[off[g]:off[g + 1]]
        aucs.append(roc_auc_score(ys, ss))
        order = np.argsort(-ss, kind="stable")
        dcg = np.sum((2.0 ** ys[order[:k]] - 1) / np.log2(np.arange(min(k, ys.size)) + 2))
        ideal = np.sort(ys)[::-1][:k]
        ndcgs.append(dcg / np.sum((2.0**ideal - 1) / np.log2(np.arange(ideal.size) + 2)))
    return {"auc": float(np.mean(aucs)), f"ndcg@{k}": float(np.mean(ndcgs))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--candidates-mean", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="top-k for diversity and the nDCG baseline")
    parser.add_argument("--baseline-impressions", type=int, default=20_000,
                        help="subsample size for torchmetrics / per-impression loop (extrapolated)")
    args = parser.parse_args()
    if args.candidates_mean < 2:
        parser.error("--candidates-mean must be >= 2")

    rows: list[Row] = []
    data, secs = timed(lambda: make_data(args.impressions, args.candidates_mean, args.seed))
    n_imp, n_cand = args.impressions, int(data["offsets"][-1])
    rss_data = peak_rss_mb()
    rows.append(Row("generate data (not part of the metric cost)", n_imp, n_cand, secs, rss_data))

    metrics, secs = timed(lambda: impression_metrics(data["scores"], data["labels"], data["offsets"]))
    rows.append(Row("ours: impression_metrics (auc, mrr, ndcg@5, ndcg@10)", n_imp, n_cand, secs, peak_rss_mb()))
    div, secs = timed(lambda: diversity_metrics(data["scores"], data["offsets"], data["items"],
                                                data["categories"], data["popularity"], args.k))
    rows.append(Row(f"ours: diversity_metrics (k={args.k})", n_imp, n_cand, secs, peak_rss_mb()))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "prediction.txt")
        ids = np.arange(1, n_imp + 1)
        _, secs = timed(lambda: write_prediction_file(path, ids, data["scores"], data["offsets"]))
        size_mb = os.path.getsize(path) / 2**20
    rows.append(Row("ours: write_prediction_file", n_imp, n_cand, secs, peak_rss_mb(), f"{size_mb:.0f} MB file"))
    ours_peak = peak_rss_mb()
    summary = summarize(metrics)

    n_sub = min(args.baseline_impressions, n_imp)
    sub = subsample(data, n_sub)
    n_sub_cand = int(sub["offsets"][-1])
    scale = n_imp / n_sub
    extra = f"{n_sub:,} impr. measured, x{scale:g} extrapolated"
    sub_metrics, secs = timed(lambda: impression_metrics(sub["scores"], sub["labels"], sub["offsets"], ks=(args.k,)))
    rows.append(Row("ours: impression_metrics on the subsample", n_sub, n_sub_cand, secs, None, "measured"))
    tm_secs, tm_values = torch_baselines(sub, args.k)
    for name, cls in [(f"ndcg@{args.k}", f"RetrievalNormalizedDCG(top_k={args.k})"), ("auc", "RetrievalAUROC")]:
        rows.append(Row(f"torchmetrics {cls} (extrapolated)", n_imp, n_cand, tm_secs[name] * scale, None, extra))
    ref_values, secs = timed(lambda: mind_reference_loop(sub, args.k))
    rows.append(Row(f"MIND reference loop: roc_auc_score + ndcg@{args.k} (extrapolated)",
                    n_imp, n_cand, secs * scale, None, extra))

    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {sys.modules['torch'].__version__}, cores {os.cpu_count()}")
    print(f"peak RSS: {rss_data:.0f} MB after data generation, {ours_peak:.0f} MB after our metrics "
          f"(+{ours_peak - rss_data:.0f} MB), {peak_rss_mb():.0f} MB at exit (torch imported)\n")
    print("| step | impressions | candidates | wall time (s) | impressions/s | peak RSS (MB) | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        print(f"| {r.step} | {r.impressions:,} | {r.candidates:,} | {r.seconds:.2f} | "
              f"{r.impressions / r.seconds:,.0f} | {rss} | {r.note} |")

    ours_sub = summarize(sub_metrics)
    print("\nagreement on the subsample (means):")
    for name in (f"ndcg@{args.k}", "auc"):
        print(f"  {name}: ours {ours_sub[name]:.6f}, torchmetrics {tm_values[name]:.6f}, "
              f"MIND loop {ref_values[name]:.6f}")
    print("\nfull-run summary: " + ", ".join(f"{key}={value:.4f}" for key, value in summary.items()))
    print("diversity means: " + ", ".join(
        f"{key}={np.mean(value) if isinstance(value, np.ndarray) else value:.4f}" for key, value in div.items()))


if __name__ == "__main__":
    main()
