"""Cluster entry for the main job: ``python jobs/run_pipeline.py experiment=<name> key=value ...``."""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    app(["run", *sys.argv[1:]])
