"""A Ray runtime from config: a private local Ray here, the running cluster by address elsewhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import ray

from newsrec_dist.config import RayConfig
from newsrec_dist.quiet import is_quiet


def _init_kwargs(cfg: RayConfig) -> dict:
    # workers' own log lines (core_worker notes, library warnings) reach the console with `newsrec --verbose` only;
    # their errors still come back as exceptions and progress through the stages' queues
    kwargs: dict = {"include_dashboard": cfg.include_dashboard, "dashboard_host": cfg.dashboard_host,
                    "log_to_driver": not is_quiet(), "configure_logging": False}
    if cfg.address == "local":
        kwargs.update(address="local", num_cpus=cfg.num_cpus)
        if cfg.temp_dir:
            kwargs["_temp_dir"] = str(cfg.temp_dir)
    else:
        kwargs["address"] = cfg.address
    return kwargs


_shared = False  # inside `one_ray_per_run`: a Ray that a stage starts stays up for the later stages


@contextmanager
def one_ray_per_run() -> Iterator[None]:
    """Within the block, the first stage that needs Ray starts (or joins) it with its own settings, and every later
    stage uses that one: a pipeline pays Ray's start-up once, not once per stage. A run whose
    stages are all up to date starts none. Ray stops when the block ends."""
    global _shared
    _shared = True
    try:
        yield
    finally:
        _shared = False
        if ray.is_initialized():
            ray.shutdown()


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Join Ray for the duration of the block; starts (and stops) a local one unless it is already up.

    Every Ray here runs with token auth unless the environment says otherwise (:mod:`newsrec_dist.ray_auth`).
    """
    if ray.is_initialized():
        yield
        return
    ray.init(**_init_kwargs(cfg))
    # Ray Data logs every operator's state at INFO on the driver; the stages draw their own progress.
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        if not _shared:
            ray.shutdown()


def blocked_dataset(table: pa.Table, rows_per_block: int) -> ray.data.Dataset:
    """A Ray Dataset of ``table`` in blocks of ``rows_per_block`` rows.

    A block is one task of an actor pool: a single block would go to one actor, and its outputs would
    come back only when all of it is done. Blocks of one batch spread the rows over the pool and let
    results stream back (and be saved for resume) batch by batch.
    """
    import ray.data

    step = max(1, rows_per_block)
    return ray.data.from_arrow([table.slice(start, step) for start in range(0, table.num_rows, step)])
