"""Cluster entry for recommender training: ``python jobs/train.py model=nrms train=ddp ...`` under srun/torchrun
(Lightning reads the launcher's ranks), or ``train=ray`` to run Ray Train workers (``ray job submit -- python
jobs/train.py model=lecop train=ray train.ray.ray.address=auto train.ray.use_gpu=true``). Same core as
``newsrec train``; every argument is a config override.
"""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]])
