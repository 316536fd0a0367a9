"""Shared fixtures: one tiny generated dataset, prepared, with keywords and graphs (real Spark, local[2])."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import THREADS, private_ray_dir

# Before torch loads, here and in every command a test starts (they inherit the environment).
os.environ["OMP_NUM_THREADS"] = str(THREADS)
# Every Ray the tests start, in-process or as clusters, uses token auth with one token (Ray fixes a process's auth
# mode at its first connection, so one process cannot mix modes).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
from planted import LSTUR_RESUME, make_planted, train  # noqa: E402

from newsrec_dist.config import GraphsConfig, SparkConfig, SynthConfig  # noqa: E402
from newsrec_dist.data.prepare import prepare  # noqa: E402
from newsrec_dist.data.synth import generate  # noqa: E402
from newsrec_dist.graphs.build import build_graphs, build_keywords  # noqa: E402

SLOW_TIMEOUT_S = 900


# Modules whose module-scoped services (a Slurm, a two-node Ray, a llama.cpp server, a Spark session) must start
# once: under pytest-xdist (`--dist loadgroup`) each of them runs all its tests on one worker.
ONE_WORKER_MODULES = ("test_submit", "test_generate", "test_graphs")
# The longest tests (docs/testing.md's table) start first, then the one-worker modules, the other slow tests and
# the fast ones: the longest first, so that two workers end together instead of one finishing a long test alone.
LONGEST = ("test_plm_nr_learns", "test_quickstart_pipeline_end_to_end_and_rerun_skips",
           "test_finetune_improves_heldout_title_to_abstract_retrieval",
           "test_killed_pipeline_resumes_and_from_reruns_the_later_stages")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests' per-test limit (pyproject's ``timeout`` is every other test's); one worker per module that
    starts its own services; the longest tests first."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
        if _module(item) in ONE_WORKER_MODULES:
            item.add_marker(pytest.mark.xdist_group(_module(item)))
    items.sort(key=_start_order)


def _module(item: pytest.Item) -> str:
    return item.module.__name__ if item.module is not None else ""


def _start_order(item: pytest.Item) -> int:
    name = item.originalname if isinstance(item, pytest.Function) else item.name
    if name in LONGEST:
        return LONGEST.index(name)
    if _module(item) in ONE_WORKER_MODULES:
        return len(LONGEST)
    return len(LONGEST) + (1 if item.get_closest_marker("slow") else 2)


@pytest.fixture
def ray_dir() -> Iterator[str]:
    """A private Ray temp dir for one test; Ray processes left in it are killed afterwards, the dir removed."""
    with private_ray_dir() as path:
        yield path


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
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared micro generated dataset (500 news): for stages whose cost grows with the catalogue."""
    root = tmp_path_factory.mktemp("micro")
    generate(SynthConfig(scale="micro"), root / "raw", show_progress=False)
    prepare(root / "raw", root / "prepared", ["train", "dev"], show_progress=False)
    return root / "prepared"


@pytest.fixture(scope="session")
def tiny_graphs(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, local_spark: SparkConfig) -> Path:
    """Graphs artifact (windows 2 and 3, unpruned) of the tiny dataset."""
    prepared, keywords = tiny
    out = tmp_path_factory.mktemp("tiny-graphs") / "graphs"
    build_graphs(GraphsConfig(windows=[2, 3], spark=local_spark), prepared, keywords, out)
    return out


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared planted-interest data (tests/planted.py): what the learnability and resume tests train on."""
    return make_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def lstur_straight(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted LSTUR run of LSTUR_RESUME: what a killed or requeued run must end up equal to."""
    out = tmp_path_factory.mktemp("lstur-straight") / "train"
    train(planted, out, *LSTUR_RESUME)
    return out / "lstur"
