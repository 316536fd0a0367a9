"""Shared fixtures: one tiny generated dataset, prepared, with keywords and graphs (real Spark, local[2])."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsrec_dist.config import GraphsConfig, SparkConfig, SynthConfig
from newsrec_dist.data.prepare import prepare
from newsrec_dist.data.synth import generate
from newsrec_dist.graphs.build import build_graphs, build_keywords



@pytest.fixture(scope="session")
def local_spark() -> SparkConfig:
    """Spark settings sized for tests: two local cores, few shuffle partitions, 1 GiB driver, JVM kept between tests."""
    return SparkConfig(master="local[2]", release_jvm=False, conf={**SparkConfig().conf, "spark.sql.shuffle.partitions": "4",
                                                "spark.driver.memory": "1g"})


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(prepared dir, keywords.parquet) of the tiny generated dataset."""
    root = tmp_path_factory.mktemp("tiny")
    generate(SynthConfig(scale="tiny"), root / "raw", show_progress=False)
    prepare(root / "raw", root / "prepared", ["train", "dev"], show_progress=False)
    keywords = build_keywords(root / "prepared", root / "keywords", top_k=4)
    return root / "prepared", keywords


@pytest.fixture(scope="session")
def tiny_graphs(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, local_spark: SparkConfig) -> Path:
    """Graphs artifact (windows 2 and 3, unpruned) of the tiny dataset."""
    prepared, keywords = tiny
    out = tmp_path_factory.mktemp("tiny-graphs") / "graphs"
    build_graphs(GraphsConfig(windows=[2, 3], spark=local_spark), prepared, keywords, out)
    return out
