"""Cluster entry for encoder fine-tuning, one process per GPU:

    deepspeed --num_gpus 8 jobs/finetune_encoder.py encoder=glm4_9b data.prepared_dir=...
    torchrun --nproc_per_node 8 jobs/finetune_encoder.py encoder=glm4_9b ...
    srun python jobs/finetune_encoder.py encoder=glm4_9b ...      (newsrec submit --cluster slurm finetune)

Every rank composes the same config and calls the same core as ``newsrec encoder finetune``;
``encoder/distributed.py`` reads the launcher's (or Slurm's) rank variables. The ``deepspeed``
launcher's ``--local_rank`` argument is dropped: LOCAL_RANK is read from the environment.
"""

import sys

from newsrec_dist.cli import app

if __name__ == "__main__":
    overrides = [arg for arg in sys.argv[1:] if not arg.startswith("--local_rank")]
    app(["encoder", "finetune", "--quiet", *overrides])
