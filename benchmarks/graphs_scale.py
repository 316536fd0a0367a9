"""Benchmark the graph stage: numpy oracle vs the Spark job, and the full `newsrec graphs build`.

Usage (prepared data from `newsrec data synth/prepare --scale ...`):
    python benchmarks/graphs_scale.py --prepared /tmp/bench-mind-small/prepared --label mind-small \
        --workdir /tmp/bench-graphs-ms [--windows 1,2,3,4,5] [--driver-memory 4g] [--parts compute,stage]

Parts, each in its own process so peak memory is per part (RSS summed over the process tree, JVM
included, sampled every 0.2 s):
  * ``compute``: the three graphs for every window, unpruned, computed but not written — the numpy
    oracle in one process, the Spark job (noop sink, ``local[*]``) in another; Spark's JVM start-up is
    timed apart from its jobs.
  * ``stage``: `newsrec graphs build` end to end (Spark, Parquet output, node tables, scipy stats).
Appends rows to <out>.csv and a section to <out>.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from newsrec_dist.measure import append_csv, append_section, measured

NEWSREC = [sys.executable, "-m", "newsrec_dist.cli"]


def compute_numpy(prepared: Path, keywords: Path, windows: list[int]) -> dict:
    import pyarrow.parquet as pq

    from newsrec_dist.graphs import reference
    from newsrec_dist.graphs.sequences import click_sequences, keyword_index

    start = time.perf_counter()
    news = pq.read_table(prepared / "news.parquet", columns=["news_id"])
    sequences = click_sequences(prepared, news["news_id"].combine_chunks())
    index = keyword_index(pq.read_table(keywords), sequences.news_keys)
    edges = {"clicks_in_sequences": int(len(sequences.items)),
             "intra_keyword": len(reference.intra_item_keyword_graph(sequences, index))}
    for window in windows:
        edges[f"news/w={window}"] = len(reference.news_graph(sequences, window))
        edges[f"item_keyword/w={window}"] = len(reference.item_item_keyword_graph(sequences, index, window))
    return {"jobs_s": time.perf_counter() - start, "edges": edges}


def compute_spark(prepared: Path, keywords: Path, windows: list[int], driver_memory: str) -> dict:
    from pyspark.sql import functions as F

    from newsrec_dist.config import SparkConfig
    from newsrec_dist.graphs import spark_job
    from newsrec_dist.graphs.spark_session import spark_session

    start = time.perf_counter()
    cfg = SparkConfig(conf={**SparkConfig().conf, "spark.driver.memory": driver_memory})
    with spark_session(cfg) as spark:
        spark.range(1).collect()  # JVM and session fully up
        started = time.perf_counter()
        behaviors = spark.read.parquet(str(prepared / "behaviors")).where(F.col("split") == "train")
        sequences = spark_job.click_sequences(behaviors).cache()
        kw = spark_job.distinct_keywords(spark.read.parquet(str(keywords))).cache()
        spark_job.intra_item_keyword_graph(sequences, kw).write.format("noop").mode("overwrite").save()
        for window in windows:
            news_edges = spark_job.news_graph(sequences, window).cache()
            news_edges.write.format("noop").mode("overwrite").save()
            spark_job.item_item_keyword_graph(news_edges, kw).write.format("noop").mode("overwrite").save()
            news_edges.unpersist()
        finished = time.perf_counter()
    return {"startup_s": started - start, "jobs_s": finished - started}


def run_part(args: argparse.Namespace, engine: str) -> dict:
    command = [sys.executable, __file__, "--engine", engine, "--prepared", str(args.prepared), "--workdir",
               str(args.workdir), "--windows", args.windows, "--driver-memory", args.driver_memory]
    run = measured(command)
    wall, rss, stdout = run.wall_s, run.peak_rss_mib, run.stdout
    return {**json.loads(stdout.strip().splitlines()[-1]), "wall_s": wall, "peak_rss_mib": rss}


def run_stage(args: argparse.Namespace) -> dict:
    overrides = [f"data.prepared_dir={args.prepared}", f"graphs.keywords_path={args.workdir / 'keywords'}",
                 f"graphs.output_dir={args.workdir / 'graphs'}", f"graphs.windows=[{args.windows}]",
                 f"graphs.spark.conf={{spark.driver.memory:{args.driver_memory}}}"]
    run = measured([*NEWSREC, "graphs", "build", *overrides])
    wall, rss = run.wall_s, run.peak_rss_mib
    manifest = json.loads((args.workdir / "graphs" / "manifest.json").read_text())
    return {"wall_s": wall, "peak_rss_mib": rss, "edges": manifest["rows"]}


def keywords_file(args: argparse.Namespace) -> Path:
    from newsrec_dist.graphs.build import build_keywords

    return build_keywords(args.prepared, args.workdir / "keywords", top_k=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--windows", default="1,2,3,4,5")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--parts", default="compute,stage")
    parser.add_argument("--engine", choices=["numpy", "spark"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/graphs_scale"))
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",")]
    if args.engine:  # child process of one part
        keywords = args.workdir / "keywords" / "keywords.parquet"
        result = (compute_numpy(args.prepared, keywords, windows) if args.engine == "numpy"
                  else compute_spark(args.prepared, keywords, windows, args.driver_memory))
        print(json.dumps(result))
        return
    keywords_file(args)
    results = {}
    if "compute" in args.parts:
        results["numpy"] = run_part(args, "numpy")
        results["spark"] = run_part(args, "spark")
    if "stage" in args.parts:
        results["stage"] = run_stage(args)
    print(json.dumps(results, indent=2))
    write_results(args, results)


def write_results(args: argparse.Namespace, results: dict) -> None:
    rows = [{"label": args.label, "part": part, "windows": args.windows, "wall_s": round(r["wall_s"], 1),
             "jobs_s": round(r.get("jobs_s", r["wall_s"]), 1), "startup_s": round(r.get("startup_s", 0.0), 1),
             "peak_rss_mib": round(r["peak_rss_mib"])} for part, r in results.items()]
    append_csv(args.out.with_suffix(".csv"), rows)
    edges = results.get("numpy", results.get("stage", {})).get("edges", {})
    append_section(args.out.with_suffix(".md"), f"`{args.label}` (windows {args.windows})",
                   f"python benchmarks/graphs_scale.py --prepared {args.prepared} --label {args.label} "
                   f"--workdir {args.workdir} --windows {args.windows} --driver-memory {args.driver_memory} "
                   f"--parts {args.parts}",
                   ["| part | wall (s) | jobs (s) | JVM start (s) | peak RSS, process tree (MiB) |",
                   "|---|---:|---:|---:|---:|",
                   *[f"| {r['part']} | {r['wall_s']} | {r['jobs_s']} | {r['startup_s']} | {r['peak_rss_mib']} |" for r in rows],
                   "",
                   "Edges (unpruned): " + ", ".join(f"{name} {count:,}" for name, count in edges.items()) + "."])


if __name__ == "__main__":
    main()
