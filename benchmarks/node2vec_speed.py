"""Node2Vec speed: our stage (`train_graph`) against PyG's example training loop, same graph and settings.

Usage (a graphs artifact from `newsrec graphs build` or benchmarks/graphs_scale.py):
    python benchmarks/node2vec_speed.py --graphs /tmp/bg-ms/graphs --graph news/w=2 --label mind-small

Every variant runs in its own process (peak RSS per variant) with the same torch threads, embedding
size, walk length, context size, walks per node, batch size and unweighted walks, for ``--epochs``
epochs. Reported: seconds per epoch, random walks per second (start nodes x walks_per_node / s),
peak RSS, and link AUC on 10% held-out edges (training graph = the other 90%).

* ``pyg-example``: PyG's examples/node2vec.py loop — ``model.loader`` over all nodes, SparseAdam,
  ``loss.item()`` per batch, PyG's N(0, 1) initial embeddings.
* ``ours``: ``newsrec_dist.embed.node2vec.train_graph`` (start nodes = nodes with edges, per-epoch
  checkpoint, small initial embeddings); ``ours-workers1`` adds one DataLoader worker for the walks.
* ``walks-only``: torch-cluster's random walk alone over all start nodes (the sampler's ceiling).
Appends rows to <out>.csv and a section to <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from newsrec_dist.measure import append_csv, append_section

VARIANTS = ("walks-only", "pyg-example", "ours", "ours-workers1")


def settings(args: argparse.Namespace):
    from newsrec_dist.config import Node2VecConfig

    return Node2VecConfig(embedding_dim=args.dim, walk_length=20, context_size=10, walks_per_node=10,
                          batch_size=128, epochs=args.epochs, edge_weights="none", lr=0.01)


def holdout_copy(graphs: Path, graph: str, workdir: Path):
    """The graphs artifact with 10% of ``graph``'s edges held out (as in tests/test_node2vec.py)."""
    import pyarrow.parquet as pq

    from newsrec_dist.embed.link_eval import split_edges

    copy = workdir / "graphs"
    if not copy.exists():
        shutil.copytree(graphs, copy)
        train, _ = split_edges(pq.read_table(graphs / graph, columns=["src", "dst", "weight"]), 0.1, seed=3)
        shutil.rmtree(copy / graph)
        (copy / graph).mkdir(parents=True)
        pq.write_table(train, copy / graph / "part-0.parquet")
    full = pq.read_table(graphs / graph, columns=["src", "dst", "weight"])
    return copy, full, split_edges(full, 0.1, seed=3)[1]


def run_variant(args: argparse.Namespace, variant: str) -> dict:
    import numpy as np
    import torch

    from newsrec_dist.embed.link_eval import link_auc
    from newsrec_dist.embed.node2vec import build_model, train_graph, walk_edge_index
    from newsrec_dist.embed.vectors import read_vectors
    from newsrec_dist.graphs.artifact import edge_table, node_keys

    torch.set_num_threads(args.threads)
    cfg = settings(args)
    graphs, full, held_out = holdout_copy(args.graphs, args.graph, args.workdir)
    num_nodes = len(node_keys(graphs, args.graph))
    edge_index = walk_edge_index(edge_table(graphs, args.graph), cfg)
    if variant == "walks-only":
        model = build_model(edge_index, num_nodes, cfg)
        start = time.perf_counter()
        for batch in torch.arange(num_nodes).split(cfg.batch_size):
            model.pos_sample(batch)
        seconds = time.perf_counter() - start
        return {"epoch_s": seconds, "walks_per_s": num_nodes * cfg.walks_per_node / seconds, "start_nodes": num_nodes}
    if variant == "pyg-example":
        torch.manual_seed(cfg.seed)
        model = build_model(edge_index, num_nodes, replace(cfg, init_std=None))
        loader = model.loader(batch_size=cfg.batch_size, shuffle=True, num_workers=0)
        optimizer = torch.optim.SparseAdam(list(model.parameters()), lr=cfg.lr)
        start = time.perf_counter()
        for _ in range(cfg.epochs):
            model.train()
            total_loss = 0.0
            for pos_rw, neg_rw in loader:
                optimizer.zero_grad()
                loss = model.loss(pos_rw, neg_rw)
                loss.backward()
                optimizer.step()
                total_loss += loss.item()
        seconds = (time.perf_counter() - start) / cfg.epochs
        vectors = model.embedding.weight.detach().numpy()
        starts = num_nodes
    else:
        out = args.workdir / variant
        shutil.rmtree(out, ignore_errors=True)
        ours = replace(cfg, loader_workers=1 if variant == "ours-workers1" else 0)
        start = time.perf_counter()
        summary = train_graph(graphs, args.graph, out, ours)
        seconds = (time.perf_counter() - start) / cfg.epochs
        vectors = read_vectors(out / args.graph)[1]
        starts = summary["nodes_with_edges"]
    return {"epoch_s": seconds, "walks_per_s": starts * cfg.walks_per_node / seconds, "start_nodes": starts,
            "link_auc": link_auc(np.asarray(vectors), held_out, full, seed=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", type=Path, required=True)
    parser.add_argument("--graph", default="news/w=2")
    parser.add_argument("--label", default="")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/node2vec_speed"))
    args = parser.parse_args()
    if args.variant:  # child process of one variant
        result = run_variant(args, args.variant)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="n2v-bench-"))
    results = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--graphs", str(args.graphs), "--graph", args.graph, "--epochs",
                   str(args.epochs), "--dim", str(args.dim), "--threads", str(args.threads), "--workdir",
                   str(workdir), "--variant", variant]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(variant, results[variant], flush=True)
    write_results(args, results)


def write_results(args: argparse.Namespace, results: dict) -> None:
    rows = [{"label": args.label, "graph": args.graph, "variant": variant, "epoch_s": round(r["epoch_s"], 2),
             "walks_per_s": round(r["walks_per_s"]), "start_nodes": r["start_nodes"],
             "link_auc": round(r["link_auc"], 4) if "link_auc" in r else "",
             "peak_rss_mib": round(r["peak_rss_mib"])} for variant, r in results.items()]
    append_csv(args.out.with_suffix(".csv"), rows)
    title = f"`{args.label}` graph `{args.graph}`, {args.epochs} epoch(s), dim {args.dim}, {args.threads} threads"
    append_section(args.out.with_suffix(".md"), title,
                   f"python benchmarks/node2vec_speed.py --graphs {args.graphs} --graph {args.graph} "
                   f"--label {args.label} --epochs {args.epochs} --dim {args.dim} --threads {args.threads}",
                   ["| variant | s / epoch | walks / s | start nodes | link AUC | peak RSS (MiB) |",
                    "|---|---:|---:|---:|---:|---:|",
                    *[f"| {r['variant']} | {r['epoch_s']} | {r['walks_per_s']:,} | {r['start_nodes']:,} | "
                      f"{r['link_auc']} | {r['peak_rss_mib']} |" for r in rows]])


if __name__ == "__main__":
    main()
