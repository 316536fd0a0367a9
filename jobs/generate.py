"""Cluster entry for LLM generation (a Ray job): ``python jobs/generate.py summarize profile generate=openai
generate.ray.address=auto ...``, or through the Ray Jobs API (``ray job submit -- python jobs/generate.py ...``).

Each actor of the Ray Data pool takes ``generate.actor_gpus`` GPUs (transformers backend) or sends
``generate.backend.max_concurrency`` requests at a time to an OpenAI-compatible server such as vLLM.
Same core as ``newsrec generate``; arguments with ``=`` are config overrides, the others task names.
"""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    tasks = [arg for arg in sys.argv[1:] if "=" not in arg]
    overrides = [part for arg in sys.argv[1:] if "=" in arg for part in ("--set", arg)]
    app(["generate", *tasks, *overrides])
