"""``newsrec bench <stage> --workers 1,2,...``: one stage at several scales → CSV, PNG plot and Markdown.

Each scale is a fresh run of the stage's CLI verb in its own work dir with the target's worker overrides (Ray
Train workers, Ray task CPUs, Ray Data LLM actors); throughput is read from what the stage itself wrote, memory is
the process tree's peak RSS, GPU utilisation is sampled from nvidia-smi when there are GPUs. Scaling efficiency
is throughput(N) / (N × throughput(1)) relative to the smallest scale.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from newsrec_dist.charts import chart
from newsrec_dist.cluster.stages import cli_words
from newsrec_dist.config import ConfigError, load_config
from newsrec_dist.measure import Measurement, append_csv, machine_line, measured

COLUMNS = ("stage", "workers", "throughput", "unit", "wall_s", "peak_rss_mib", "gpu_util_percent",
           "gpu_mem_peak_mib", "speedup", "efficiency")


def _train_throughput(cfg: DictConfig, _: Measurement) -> float:
    summary = json.loads((Path(cfg.train.output_dir) / cfg.model.name / "summary.json").read_text())
    return summary["epochs"][-1]["samples_per_second"]  # all workers' samples over the training loop's time


def _node2vec_throughput(cfg: DictConfig, run: Measurement) -> float:
    """Walks of every graph over the stage's wall time: graphs train in parallel, one Ray task each."""
    summaries = json.loads((Path(cfg.node2vec.output_dir) / "summary.json").read_text())
    walks = sum(s["nodes_with_edges"] * cfg.node2vec.walks_per_node * s["epochs"] for s in summaries.values())
    return walks / run.wall_s


def _generate_throughput(cfg: DictConfig, _: Measurement) -> float:
    costs = [json.loads(path.read_text()) for path in Path(cfg.generate.output_dir).glob("*/cost.json")]
    return sum(c["completion_tokens"] for c in costs) / max(sum(c["seconds"] for c in costs), 1e-9)


def _pipeline_throughput(cfg: DictConfig, run: Measurement) -> float:
    """Training runs finished per hour of the pipeline's wall time (an experiment's arms × seeds as trials)."""
    trained = list(Path(cfg.train.output_dir).glob("*/summary.json"))
    return len(trained) * 3600.0 / run.wall_s


@dataclass(frozen=True)
class BenchTarget:
    unit: str
    workers: Callable[[int], list[str]]  # the overrides that run the stage at N workers
    throughput: Callable[[DictConfig, Measurement], float]
    arguments: tuple[str, ...] = ()  # fixed stage arguments (e.g. generation tasks)


TARGETS: dict[str, BenchTarget] = {
    # the machine's cores shared among the workers: oversubscribed torch threads would hide the scaling
    "train": BenchTarget("samples/s", lambda n: ["train.ray.enabled=true", f"train.ray.workers={n}",
                                                 f"train.threads={max(1, (os.cpu_count() or 1) // n)}"],
                         _train_throughput),
    "node2vec": BenchTarget("walks/s", lambda n: [f"node2vec.ray.num_cpus={n}"], _node2vec_throughput),
    # a private LLM cache per scale: answers cached by an earlier scale would count as instant
    "generate": BenchTarget("tokens/s", lambda n: [f"generate.actors={n}", f"generate.ray.num_cpus={n}",
                                                   "generate.cache_dir=${paths.work_dir}/llm-cache"],
                            _generate_throughput, ("summarize",)),
    # an experiment at N trials in parallel, the cores shared among them
    "pipeline": BenchTarget("runs/h", lambda n: [f"train.trials.parallel={n}", "train.trials.cpus=1",
                                                 f"train.threads={max(1, (os.cpu_count() or 1) // n)}"],
                            _pipeline_throughput),
}


def bench_target(stage: str) -> BenchTarget:
    if stage not in TARGETS:
        raise ConfigError(f"no benchmark for stage {stage!r}: one of {', '.join(TARGETS)}")
    return TARGETS[stage]


def run_scale(stage: str, workers: int, overrides: list[str], work_dir: Path) -> dict:
    """One fresh run of ``stage`` at ``workers`` workers; returns its CSV row (without speedup)."""
    target = bench_target(stage)
    settings = [*target.workers(workers), *overrides, f"paths.work_dir={work_dir}"]  # the user's settings win
    cfg = load_config(settings)  # bad settings fail here, before the run
    shutil.rmtree(work_dir, ignore_errors=True)  # a stage finding its earlier output would skip and time nothing
    run = measured(cli_words(stage, [*target.arguments, *settings]))
    return {"stage": stage, "workers": workers, "throughput": round(target.throughput(cfg, run), 2),
            "unit": target.unit, "wall_s": round(run.wall_s, 1), "peak_rss_mib": round(run.peak_rss_mib),
            "gpu_util_percent": None if run.gpu_util_percent is None else round(run.gpu_util_percent, 1),
            "gpu_mem_peak_mib": None if run.gpu_mem_peak_mib is None else round(run.gpu_mem_peak_mib)}


def with_scaling(rows: list[dict]) -> list[dict]:
    base = rows[0]
    for row in rows:
        row["speedup"] = round(row["throughput"] / base["throughput"], 3)
        row["efficiency"] = round(row["speedup"] / (row["workers"] / base["workers"]), 3)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    workers = [row["workers"] for row in rows]
    with chart(path, width=5.0) as (axis,):
        axis.plot(workers, [row["throughput"] for row in rows], "o-", label="measured")
        axis.plot(workers, [rows[0]["throughput"] * n / workers[0] for n in workers], "--", color="grey",
                  label="linear")
        axis.set(xlabel="workers", ylabel=rows[0]["unit"], title=f"{rows[0]['stage']}: throughput by workers",
                 xticks=workers)
        axis.legend()


def markdown(rows: list[dict], command: str, png: Path) -> str:
    lines = [f"# `{rows[0]['stage']}` scaling", "", f"Command: `{command}`  ", machine_line(), "",
             "| " + " | ".join(COLUMNS[1:]) + " |", "|" + "---:|" * (len(COLUMNS) - 1),
             *["| " + " | ".join("—" if row[c] is None else str(row[c]) for c in COLUMNS[1:]) + " |" for row in rows],
             "", f"![throughput by workers]({png.name})", ""]
    return "\n".join(lines)


def bench(stage: str, workers: list[int], overrides: list[str], out: Path, work_root: Path,
          progress: Callable[[str], None] = print) -> list[dict]:
    """Run every scale, then write ``out``.csv (appended), ``out``.png and ``out``.md."""
    if not workers or any(n < 1 for n in workers):
        raise ConfigError(f"--workers: {workers} must be positive counts, e.g. 1,2,4")
    rows = []
    for count in workers:
        rows.append(run_scale(stage, count, overrides, work_root / f"workers-{count}"))
        progress(json.dumps(rows[-1]))
    rows = with_scaling(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    append_csv(out.with_suffix(".csv"), rows)
    plot(rows, out.with_suffix(".png"))
    command = shlex.join(["newsrec", "bench", stage, "--workers", ",".join(map(str, workers)), "--out", str(out),
                          *overrides])
    out.with_suffix(".md").write_text(markdown(rows, command, out.with_suffix(".png")))
    return rows

