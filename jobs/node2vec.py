"""Cluster entry for the Node2Vec stage: ``python jobs/node2vec.py node2vec=cluster key=value ...``.

Run it where Ray is reachable (the head node, or a Slurm allocation that started Ray): every graph in
``node2vec.graphs`` becomes one Ray task with ``node2vec.task_gpus`` GPUs. Same core as
``newsrec node2vec train``.
"""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    app(["node2vec", "train", *sys.argv[1:]])
