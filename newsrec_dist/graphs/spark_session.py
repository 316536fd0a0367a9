"""A SparkSession from config: ``local[*]`` here, whatever ``spark-submit`` says on a cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from newsrec_dist.config import SparkConfig


def _builder(cfg: SparkConfig) -> SparkSession.Builder:
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    for key, value in cfg.conf.items():
        if value is not None:  # null in config removes a default (e.g. the loopback binding on clusters)
            builder = builder.config(key, str(value))
    return builder


@contextmanager
def spark_session(cfg: SparkConfig) -> Iterator[SparkSession]:
    """Start a session, or join the active one (which is then left running for its owner).

    A local master binds to loopback unless configured otherwise.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    if cfg.master and cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = _builder(cfg).getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    try:
        yield session
    finally:
        session.stop()
        if cfg.release_jvm and cfg.master and cfg.master.startswith("local"):
            _shutdown_gateway()


def _shutdown_gateway() -> None:
    """Stop the py4j gateway and its JVM: ``SparkSession.stop`` leaves the JVM (and its heap) alive.

    PySpark's gateway JVM exits when its stdin closes; the next session launches a fresh one.
    """
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    process = getattr(gateway, "proc", None)
    if process is not None:
        process.stdin.close()
        process.wait(timeout=60)
    SparkContext._gateway = None
    SparkContext._jvm = None
