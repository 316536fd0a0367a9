"""Stage ``node2vec``: every configured graph (or window variant) trains as its own Ray task.

Here the tasks share a local Ray with ``task_cpus`` each; on a GPU cluster ``task_gpus: 1`` gives
every graph its own GPU (``conf/node2vec/cluster.yaml``). Graphs whose embeddings are current are
skipped before Ray starts, so a finished stage re-runs in well under a second.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray.util.queue import Queue

from newsrec_dist.cluster.ray_session import ray_session
from newsrec_dist.config import Node2VecConfig
from newsrec_dist.embed.node2vec import finished_summary, train_graph
from newsrec_dist.graphs.artifact import available_graphs
from newsrec_dist.io import atomic_write_text
from newsrec_dist.progress import gather_with_progress, queued_progress

SUMMARY_FILE = "summary.json"


def _train_task(graphs_dir: str, graph: str, out_dir: str, cfg: Node2VecConfig, queue: Queue) -> dict[str, Any]:
    import torch

    torch.set_num_threads(max(1, math.floor(cfg.task_cpus)))
    return train_graph(Path(graphs_dir), graph, Path(out_dir), cfg, partial(queued_progress, queue))


def embed_graphs(cfg: Node2VecConfig, show_progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train (or reuse) the embedding of every graph in ``cfg.graphs``; returns their summaries."""
    graphs_dir, out_dir = Path(cfg.graphs_dir), Path(cfg.output_dir)
    missing = [graph for graph in cfg.graphs if graph not in available_graphs(graphs_dir)]
    if missing:
        raise ValueError(f"node2vec.graphs {missing} are not in {graphs_dir} "
                         f"(it holds {available_graphs(graphs_dir)}; graphs.windows adds windows)")
    summaries = {graph: finished_summary(graphs_dir, graph, out_dir, cfg) for graph in cfg.graphs}
    pending = [graph for graph, summary in summaries.items() if summary is None]
    if pending:
        with ray_session(cfg.ray):
            task = ray.remote(_train_task).options(num_cpus=cfg.task_cpus, num_gpus=cfg.task_gpus)
            queue = Queue()
            refs = [task.remote(str(graphs_dir), graph, str(out_dir), cfg, queue) for graph in pending]
            summaries.update(zip(pending, gather_with_progress(refs, queue, enabled=show_progress)))
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summaries, indent=2))
    return summaries
