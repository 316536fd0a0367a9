"""Stage ``generate``: run the configured tasks, each into ``<generate.output_dir>/<task>/``.

Each task's artifact holds ``results.parquet`` (every input row: ok, failed with the parse error, or
skipped with the reason), its dataset-contract outputs (see ``tasks.py``), ``cost.json`` and a
manifest keyed by the prepared data, the model, the template identity, sampling and task knobs. An
unchanged task is skipped; a killed one resumes from its parts and the completion cache.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from newsrec_dist.cluster.ray_session import ray_session
from newsrec_dist.config import GenerateConfig, GenerateTasksConfig
from newsrec_dist.data.prepare import read_behaviors, read_news_table
from newsrec_dist.generate import tasks
from newsrec_dist.generate.backends import model_id
from newsrec_dist.generate.engine import PARTS_DIR, RESULTS_FILE, TaskRows, generate_rows
from newsrec_dist.generate.prompts import PromptTemplate, load_template
from newsrec_dist.io import Manifest, ResumableDir, artifact_fingerprint, is_up_to_date, read_manifest, sha256_file
from newsrec_dist.progress import ProgressFactory, no_progress

TASKS = ("keywords", "summarize", "item_profile", "profile", "news", "chain")
# A task's dataset outputs from its results table and its (partial) artifact directory: file name → table.
Outputs = Callable[[pa.Table, Path], dict[str, pa.Table]]
COST_FILE = "cost.json"
# The task knobs each task's rows and outputs read: only these are part of its fingerprint, so a GENRE knob (say
# cold_history_max) does not re-run LECOP's keywords and every graph, Node2Vec and training downstream of them
_NEWS_KNOBS = ("max_news", "news_first", "text_max_chars")
_USER_KNOBS = ("max_users", "history_titles", "text_max_chars")
_GENERATOR_KNOBS = (*_USER_KNOBS, "cold_history_max", "news_per_user")
TASK_KNOBS = {"keywords": (*_NEWS_KNOBS, "max_keywords", "keywords_fallback"), "summarize": _NEWS_KNOBS,
              "item_profile": _NEWS_KNOBS, "profile": _USER_KNOBS, "chain_profile": (*_USER_KNOBS, "cold_history_max"),
              "news": _GENERATOR_KNOBS, "chain": _GENERATOR_KNOBS}


def task_knobs(knobs: GenerateTasksConfig, task: str) -> dict[str, Any]:
    """The knobs that shape ``task``'s rows and outputs (its part of the fingerprint)."""
    return {knob: getattr(knobs, knob) for knob in TASK_KNOBS[task]}


class GenerationRun:
    """One ``generate`` invocation: shared inputs read once, tasks run in the order given (the chain runs
    its own profiler step first)."""

    def __init__(self, cfg: GenerateConfig, prepared_dir: Path, splits: list[str],
                 progress: ProgressFactory = no_progress) -> None:
        self.cfg, self.prepared_dir, self.splits, self.progress = cfg, Path(prepared_dir), splits, progress
        self.news = read_news_table(prepared_dir)
        self.out = Path(cfg.output_dir)
        self._scope = ExitStack()
        self._ray_started = False

    @cached_property
    def histories(self) -> dict[str, list[str]]:
        return tasks.user_histories(self.prepared_dir, self.splits)

    @cached_property
    def asked_first(self) -> frozenset[str]:
        """News shown in the impressions of ``task.news_first``'s splits: asked before the others."""
        return frozenset(key for split in self.cfg.task.news_first
                         for shown in read_behaviors(self.prepared_dir, split)["impressions"].to_pylist()
                         for key in shown or [])

    @cached_property
    def titles(self) -> dict[str, str]:
        return dict(zip(self.news["news_id"].to_pylist(), self.news["title"].to_pylist()))

    def run(self, names: list[str]) -> dict[str, dict[str, Any]]:
        unknown = [name for name in names if name not in TASKS]
        if unknown:
            raise ValueError(f"unknown generate task(s) {unknown}; known tasks: {list(TASKS)}")
        with ExitStack() as self._scope:
            return {name: getattr(self, f"_{name}")() for name in names}

    def _start_ray(self) -> None:
        """One Ray for all tasks, started by the first task with rows to ask (an up-to-date run starts none)."""
        if not self._ray_started:
            self._scope.enter_context(ray_session(self.cfg.ray))
            self._ray_started = True

    def _keywords(self) -> dict[str, Any]:
        rows = tasks.keywords_rows(self.news, self._template("keywords"), self.cfg.task, self.asked_first)
        return self._task(rows, lambda results, _: tasks.keywords_outputs(results, self.news, self.cfg.task))

    def _summarize(self) -> dict[str, Any]:
        rows = tasks.summarize_rows(self.news, self._template("summarize"), self.cfg.task, self.asked_first)
        return self._task(rows, lambda results, _: tasks.summarize_outputs(results, self.news))

    def _item_profile(self) -> dict[str, Any]:
        rows = tasks.item_profile_rows(self.news, self._template("item_profile"), self.cfg.task, self.asked_first)
        return self._task(rows, lambda results, _: tasks.item_profile_outputs(results, self.news, self.cfg.task))

    def _profile(self) -> dict[str, Any]:
        rows = tasks.profile_rows(self.histories, self.titles, self._template("profile"), self.cfg.task)
        return self._task(rows, lambda results, _: tasks.profile_outputs(results, self.cfg.task))

    def _news(self) -> dict[str, Any]:
        return self._generate_news("news", "news", None)

    def _chain(self) -> dict[str, Any]:
        """Profiler on the cold users, then the generator with each profile (GENRE's chain)."""
        cold, _ = tasks.cold_users(self.histories, self.cfg.task)
        profiler = tasks.profile_rows({u: self.histories[u] for u in cold}, self.titles, self._template("profile"),
                                      self.cfg.task, name="chain_profile")
        profile_cost = self._task(profiler, lambda results, _: tasks.profile_outputs(results, self.cfg.task))
        profiles = pq.read_table(self.out / "chain_profile" / "profiles.parquet").to_pylist()
        chain_cost = self._generate_news("chain", "news_chain", {row["user_id"]: row for row in profiles},
                                         {"profiles": artifact_fingerprint(self.out / "chain_profile")})
        return chain_cost | {"profiler": profile_cost}

    def _generate_news(self, name: str, template_name: str, profiles: dict[str, dict] | None,
                       upstream: dict[str, str] | None = None) -> dict[str, Any]:
        categories = sorted(set(self.news["category"].to_pylist()))
        template = tasks.news_template(self._template(template_name), categories, self.cfg.task.news_per_user)
        rows = tasks.news_rows(self.histories, self.titles, template, categories, self.cfg.task, name, profiles)

        def outputs(results: pa.Table, work: Path) -> dict[str, pa.Table]:
            synthetic = tasks.synthetic_news(results, self.news)
            self._write_prepared(name, synthetic, work / "prepared")
            for count in range(1, self.cfg.task.news_per_user):  # GENRE's figure: fewer generated news per user
                self._write_prepared(name, tasks.first_per_user(synthetic, count), work / f"prepared-{count}")
            return {"synthetic_news.parquet": synthetic}

        return self._task(rows, outputs, upstream)

    def _write_prepared(self, name: str, synthetic: pa.Table, directory: Path) -> None:
        """A prepared dataset of its own (GENRE NG: data.prepared_dir=...): trainers key their runs by it."""
        counts = tasks.write_augmented_dataset(synthetic, self.prepared_dir, self.splits, directory)
        Manifest(stage=f"generate-{name}-prepared", rows=counts, config={"splits": self.splits},
                 inputs={"prepared": artifact_fingerprint(self.prepared_dir),
                         "news": sha256_file(directory / "news.parquet")}).write(directory)

    def _template(self, name: str) -> PromptTemplate:
        return load_template(name, self.cfg.prompts_dir)

    def _task(self, rows: TaskRows, outputs: Outputs, upstream: dict[str, str] | None = None) -> dict[str, Any]:
        final = self.out / rows.name
        inputs = {"prepared": artifact_fingerprint(self.prepared_dir), **(upstream or {})}
        config = {"model": model_id(self.cfg.backend), "template": rows.template.identity,
                  "sampling": asdict(self.cfg.sampling), "max_retries": self.cfg.max_retries,
                  "task": task_knobs(self.cfg.task, rows.name), "splits": self.splits}
        if is_up_to_date(final, f"generate-{rows.name}", inputs, config):
            return dict(read_manifest(final)["extra"])
        work = ResumableDir(final, Manifest(stage=f"generate-{rows.name}", inputs=inputs, config=config).fingerprint())
        results, cost = generate_rows(rows, self.cfg, work.path, self.progress, self._start_ray)
        for file_name, table in outputs(results, work.path).items():
            pq.write_table(table, work.path / file_name)
        pq.write_table(results, work.path / RESULTS_FILE)
        (work.path / COST_FILE).write_text(json.dumps(cost, indent=2))
        Manifest(stage=f"generate-{rows.name}", inputs=inputs, config=config,
                 rows={key: cost[key] for key in ("rows", "ok", "failed", "skipped")}, extra=cost).write(work.path)
        shutil.rmtree(work.path / PARTS_DIR)  # also a killed run's half-written part, never data
        work.publish()
        return cost


def run_generation(cfg: GenerateConfig, prepared_dir: Path, splits: list[str],
                   progress: ProgressFactory = no_progress) -> dict[str, dict[str, Any]]:
    return GenerationRun(cfg, prepared_dir, splits, progress).run(list(cfg.tasks))
