"""Cluster entry for the data stages: ``python jobs/prepare_data.py {synth,prepare,download} key=value ...``.

A thin adapter over the ``newsrec data`` verbs so batch systems can call a script path; the core
lives in ``newsrec_dist.data``.
"""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    app(["data", *sys.argv[1:]])
