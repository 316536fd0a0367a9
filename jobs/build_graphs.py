"""Cluster entry for the graph stage: ``spark-submit jobs/build_graphs.py graphs=cluster key=value ...``.

Under spark-submit the session joins the submitted master (``graphs.spark.master: null`` in
``conf/graphs/cluster.yaml``); locally it runs ``local[*]``. Same core as ``newsrec graphs build``.
"""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    app(["graphs", "build", *sys.argv[1:]])
