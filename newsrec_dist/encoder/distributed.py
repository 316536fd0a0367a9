"""Process-group setup for DeepSpeed: launcher env (deepspeed/torchrun), Slurm (srun), or a single process.

The ``deepspeed`` launcher and ``torchrun`` export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; ``srun`` exports
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the batch script sets MASTER_ADDR/MASTER_PORT
(``clusters/slurm/job.sbatch.j2``, rendered by ``newsrec submit --cluster slurm finetune``). A plain ``newsrec encoder finetune`` is a world of one.
The accelerator is chosen before DeepSpeed is imported: CUDA when visible, else CPU with gloo.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

SLURM_TO_TORCH = {"SLURM_PROCID": "RANK", "SLURM_NTASKS": "WORLD_SIZE", "SLURM_LOCALID": "LOCAL_RANK"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distributed_env(device: torch.device) -> dict[str, str]:
    """Environment for ``torch.distributed``/DeepSpeed, filled in where no launcher set it."""
    env: dict[str, str] = {}
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:
        env.update({torch_key: os.environ[slurm_key] for slurm_key, torch_key in SLURM_TO_TORCH.items()})
    if "RANK" not in os.environ and not env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    if device.type == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    env["TORCH_EXTENSIONS_DIR"] = str(_extensions_dir())
    return env


def _extensions_dir() -> Path:
    """Where DeepSpeed's JIT-compiled ops live: built once per machine and virtual environment."""
    return Path(os.environ.get("NEWSREC_CACHE", str(Path.home() / ".cache" / "newsrec"))) / "torch_extensions"


def build_cpu_ops() -> None:
    """Compile DeepSpeed's CPU communication op now (``make bootstrap``), not in the first CPU fine-tuning run.

    DeepSpeed builds it when its CPU backend starts (~1 min on 2 cores, C++); a later build is a no-op.
    """
    os.environ.update(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=str(_extensions_dir()))
    from deepspeed.comm.torch import build_shm_op

    if build_shm_op() is None:
        raise RuntimeError("DeepSpeed reports its CPU communication op incompatible with this machine")


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """(rank, world size) with the process group up (gloo on CPU, NCCL on GPUs).

    A world of one started here is torn down on exit together with the environment it set, so a later
    stage of the same process, or a launcher it starts, does not inherit a stale rank or master port.
    """
    added = {key: value for key, value in distributed_env(device).items() if key not in os.environ}
    os.environ.update(added)
    import deepspeed

    started_here = not torch.distributed.is_initialized()
    if started_here:
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl", auto_mpi_discovery=False)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        yield torch.distributed.get_rank(), torch.distributed.get_world_size()
    finally:
        if started_here and "RANK" in added:
            torch.distributed.destroy_process_group()
            for key in added:
                os.environ.pop(key, None)
