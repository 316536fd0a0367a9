"""Cluster entry for news embedding: ``python jobs/embed_news.py encoder=glm4_9b encoder.embed.ray.address=auto``.

Run where Ray is reachable; each actor of the Ray Data pool takes ``encoder.embed.actor_gpus`` GPUs.
"""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    app(["encoder", "embed", *sys.argv[1:]])
